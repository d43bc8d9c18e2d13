"""Bytes each client downloads and uploads per round, from the round's types.

The learning process's `next` is compiled to TFF's `MapReduceForm`, whose
parts name exactly what crosses the network: `prepare` yields what is
broadcast to every client; `work` yields what each client sends to a plain
aggregation and what it sends to secure sums, whose bit widths the form also
gives. Sizes therefore follow from the types and bit widths, never from
measuring a run.
"""

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tffpipe import compat
from tffpipe.aggregation.protocols import base as protocols_base


@dataclasses.dataclass(frozen=True)
class ClientTraffic:
    """Bytes one client receives and sends in one round."""

    download_bytes: int
    upload_bytes: int
    secure_upload_bytes: int

    def describe(self) -> str:
        secure = (
            f" ({human_bytes(self.secure_upload_bytes)} of it through secure sums)" if self.secure_upload_bytes else ""
        )
        return (
            f"each client downloads {human_bytes(self.download_bytes)} and uploads "
            f"{human_bytes(self.upload_bytes)} per round{secure}"
        )


def human_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024**2:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024**2:.2f} MiB"


def _tensor_types(type_spec) -> list[tff.TensorType]:
    """The tensor types in a (nested) struct type, in order."""
    if isinstance(type_spec, tff.TensorType):
        return [type_spec]
    if isinstance(type_spec, tff.StructType):
        return [t for element in type_spec for t in _tensor_types(element)]
    return []


def _bytes(tensor_type: tff.TensorType, bits: int | None = None) -> int:
    elements = int(np.prod(tensor_type.shape)) if tensor_type.shape else 1
    if bits is None:
        bits = np.dtype(tensor_type.dtype).itemsize * 8
    return math.ceil(elements * bits / 8)


def _flat_numbers(value) -> list[int]:
    return [int(np.asarray(v).max()) for v in tf.nest.flatten(value)]


def client_traffic(
    process: tff.learning.templates.LearningProcess,
    secure_upload: Callable[[Sequence[int], Sequence[int]], int] | None = None,
) -> ClientTraffic:
    """Derives a round's traffic per client from `process.next`'s MapReduceForm.

    Args:
      process: the learning process.
      secure_upload: (elements, bit widths) of the secure values -> bytes a
        client uploads for them under the run's secure protocol (default:
        the values at their bit widths, as masked vectors are).

    Raises:
      ValueError: the computation cannot be compiled to a MapReduceForm.
    """
    with compat.quiet_tensorflow_errors():
        form = tff.backends.mapreduce.get_map_reduce_form_for_computation(process.next)
    download = sum(_bytes(t) for t in _tensor_types(form.prepare.type_signature.result))
    work = form.work.type_signature.result
    plain = sum(_bytes(t) for t in _tensor_types(work[0]))
    elements, widths = [], []
    for index, widths_fn in (
        (1, lambda: _flat_numbers(form.secure_sum_bitwidth())),
        (2, lambda: [max(1, math.ceil(math.log2(m + 1))) for m in _flat_numbers(form.secure_sum_max_input())]),
        (3, lambda: [max(1, math.ceil(math.log2(m))) for m in _flat_numbers(form.secure_modular_sum_modulus())]),
    ):
        tensors = _tensor_types(work[index])
        if tensors:
            bits = widths_fn()
            elements += [int(np.prod(t.shape)) if t.shape else 1 for t in tensors]
            # One parameter may stand for every value of its kind, as the in-process engine reads it.
            widths += bits * len(tensors) if len(bits) == 1 else bits
    secure = (secure_upload or protocols_base.plain_upload_bytes)(elements, widths) if elements else 0
    return ClientTraffic(download, plain + secure, secure)
