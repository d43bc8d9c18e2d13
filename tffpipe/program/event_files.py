"""Reading a TensorBoard event file past corrupt records.

An event file is a sequence of TFRecords: an 8-byte length, a masked CRC-32C
of the length, the data, a masked CRC-32C of the data. TensorFlow's readers
(`tf.data.TFRecordDataset`, `tf_record_iterator`) stop at the first record
that fails a check, so a few damaged bytes in the middle of a file would
cost every valid record after them. This module reads such a file by the
framing itself: a record whose data fails its CRC is skipped by its length,
and after a damaged length the reader moves to the next offset where a whole
record checks out. TensorFlow offers no such recovery, hence the hand-written
framing; the CRC is TensorBoard's own (`masked_crc32c`).
"""

import dataclasses
import struct

import tensorflow as tf
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

_HEADER = 12  # length (8) + length CRC (4)
_FOOTER = 4  # data CRC


@dataclasses.dataclass
class EventFile:
    """What `read` found in one file.

    Attributes:
      records: the serialized records that passed their checks, in order.
      corrupt: damaged stretches skipped between valid records.
      corrupt_bytes: their total size.
      partial_tail: the file ends in a record cut short (a kill mid-write),
        or in bytes that no valid record follows.
    """

    records: list[bytes] = dataclasses.field(default_factory=list)
    corrupt: int = 0
    corrupt_bytes: int = 0
    partial_tail: bool = False

    @property
    def whole(self) -> bool:
        return not (self.corrupt or self.partial_tail)


def read(path: str) -> EventFile:
    """Every valid record of the event file at `path`.

    TensorFlow's reader runs first (fast, C++); only a file it cannot finish
    is read again by the framing, from the first record it could not read.
    """
    found = EventFile()
    offset = 0
    try:
        for record in tf.data.TFRecordDataset(path):
            data = record.numpy()
            found.records.append(data)
            offset += _HEADER + len(data) + _FOOTER
    except tf.errors.DataLossError:
        with open(path, "rb") as f:
            f.seek(offset)
            _scan(f.read(), found)
    return found


def _scan(buffer: bytes, found: EventFile) -> None:
    """Appends the valid records of `buffer` to `found`, skipping damage."""
    position, size = 0, len(buffer)
    while position < size:
        record_end = _record_end(buffer, position)
        if record_end is not None:
            found.records.append(buffer[position + _HEADER : record_end - _FOOTER])
            position = record_end
            continue
        if _header_ok(buffer, position):
            length = _length(buffer, position)
            end = position + _HEADER + length + _FOOTER
            if end > size:  # a record cut short at the end of the file
                found.partial_tail = True
                return
            # The length checks out but the data does not: skip this record.
            found.corrupt += 1
            found.corrupt_bytes += end - position
            position = end
            continue
        resume_at = _next_valid(buffer, position + 1)
        if resume_at is None:
            found.partial_tail = True
            return
        found.corrupt += 1
        found.corrupt_bytes += resume_at - position
        position = resume_at


def _length(buffer: bytes, position: int) -> int:
    return struct.unpack_from("<Q", buffer, position)[0]


def _header_ok(buffer: bytes, position: int) -> bool:
    if position + _HEADER > len(buffer):
        return False
    (crc,) = struct.unpack_from("<I", buffer, position + 8)
    return masked_crc32c(buffer[position : position + 8]) == crc


def _record_end(buffer: bytes, position: int) -> int | None:
    """Where the record at `position` ends, if it is whole and both CRCs check out."""
    if position + _HEADER > len(buffer):
        return None
    length = _length(buffer, position)
    end = position + _HEADER + length + _FOOTER
    if end > len(buffer) or not _header_ok(buffer, position):
        return None
    data = buffer[position + _HEADER : end - _FOOTER]
    (crc,) = struct.unpack_from("<I", buffer, end - _FOOTER)
    return end if masked_crc32c(data) == crc else None


def _next_valid(buffer: bytes, start: int) -> int | None:
    """The first offset from `start` where a whole valid record begins."""
    size = len(buffer)
    for position in range(start, size - _HEADER - _FOOTER + 1):
        # Most offsets fail the cheap length test before any CRC is computed.
        if position + _HEADER + _length(buffer, position) + _FOOTER <= size and _record_end(buffer, position):
            return position
    return None
