"""One TensorBoard HParams configuration for a folder of runs: the columns of its HParams table, in order.

Each run records its own settings as an HParams session (task, algorithm,
rounds, then what differs from the defaults). Without a configuration,
TensorBoard's HParams table lists them in no useful order, next to every
scalar of every run as a metric column (82 for a default run). So each run
adds the settings it records, and its evaluation metrics, to one
configuration beside it (`ROOT_DIR/events.out.tfevents.*.hparams`, from
`ROOT_DIR/.tffpipe_hparams.json`): the task, algorithm and rounds first,
then the other settings as runs bring them (TensorBoard shows the first five
until more are ticked), and only `eval/*` metrics.
Launchers that share a root folder (a sweep's trials) update it under a file
lock. Written with TensorBoard's protocol buffers and record writer
(TensorBoard's `EventFileWriter` would load TensorFlow for its file access),
so a sweep process never loads TensorFlow.
"""

import contextlib
import fcntl
import glob
import json
import os
import socket
import time
from collections.abc import Iterator, Sequence

from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.summary.writer import record_writer

FIRST = ("task", "algorithm", "rounds")
STATE = ".tffpipe_hparams.json"
_LOCK = ".tffpipe_hparams.lock"
_SUFFIX = ".hparams"


def add(folder: str, hparams: Sequence[str] = (), metrics: Sequence[str] = ()) -> None:
    """Adds settings (by flag name) and metric tags to the configuration of the runs in `folder`.

    Rewrites the configuration only when it grows; a folder that cannot be
    written is left alone (the runs' own records do not depend on it).
    """
    try:
        os.makedirs(folder, exist_ok=True)
        with _locked(folder):
            known = read(folder)
            merged = {
                "hparams": _ordered(known["hparams"], hparams, FIRST),
                "metrics": _ordered(known["metrics"], metrics, ("eval/accuracy", "eval/loss")),
            }
            if merged == known and glob.glob(os.path.join(folder, f"events.out.tfevents.*{_SUFFIX}")):
                return
            _write_events(folder, merged["hparams"], merged["metrics"])
            temporary = os.path.join(folder, STATE + ".tmp")
            with open(temporary, "w", encoding="utf-8") as f:
                json.dump(merged, f)
            os.replace(temporary, os.path.join(folder, STATE))
    except OSError:
        return


def read(folder: str) -> dict[str, list[str]]:
    """The settings and metrics the configuration in `folder` lists (empty lists when there is none)."""
    try:
        with open(os.path.join(folder, STATE), encoding="utf-8") as f:
            found = json.load(f)
        return {"hparams": list(found["hparams"]), "metrics": list(found["metrics"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {"hparams": [], "metrics": []}


def _ordered(known: list[str], new: Sequence[str], first: Sequence[str]) -> list[str]:
    names = list(dict.fromkeys([*known, *new]))
    return [n for n in first if n in names] + [n for n in names if n not in first]


@contextlib.contextmanager
def _locked(folder: str) -> Iterator[None]:
    with open(os.path.join(folder, _LOCK), "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_events(folder: str, hparams: Sequence[str], metrics: Sequence[str]) -> None:
    experiment = api_pb2.Experiment(
        time_created_secs=time.time(),
        hparam_infos=[api_pb2.HParamInfo(name=name) for name in hparams],
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag), display_name=tag) for tag in metrics],
    )
    content = plugin_data_pb2.HParamsPluginData(experiment=experiment, version=metadata.PLUGIN_DATA_VERSION)
    summary = summary_pb2.Summary(
        value=[
            summary_pb2.Summary.Value(
                tag=metadata.EXPERIMENT_TAG,
                metadata=metadata.create_summary_metadata(content),
                tensor=metadata.NULL_TENSOR,
            )
        ]
    )
    earlier = glob.glob(os.path.join(folder, f"events.out.tfevents.*{_SUFFIX}"))
    path = os.path.join(folder, f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}{_SUFFIX}")
    temporary = os.path.join(folder, ".tffpipe_hparams_events.tmp")  # not a name TensorBoard reads
    with open(temporary, "wb") as f:
        records = record_writer.RecordWriter(f)
        records.write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
        records.write(event_pb2.Event(wall_time=time.time(), step=0, summary=summary).SerializeToString())
    os.replace(temporary, path)
    for old in earlier:  # TensorBoard takes whichever configuration it meets first: keep one
        if old != path:
            with contextlib.suppress(OSError):
                os.remove(old)
