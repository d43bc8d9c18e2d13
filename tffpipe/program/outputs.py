"""A run's output folder: metrics CSV, TensorBoard logs, config and export.

Layout under `root_dir/experiment_name/`:
  config.json           every setting of the run
  checkpoints/          program state (see `checkpoints.py`)
  logdir/               TensorBoard scalars and the HParams summary
  results/metrics.csv   one row per finished round
  results/clients.csv   one row per evaluation round and evaluation client
  export/               the final global model as a Keras SavedModel
"""

import glob
import os
import shutil
import socket
import time
from typing import Any
from collections.abc import Mapping

import tensorflow as tf
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.hparams import api as hparams_api
from tensorboard.plugins.scalar import summary_v2 as scalar_summary

from tffpipe.program import appended_csv
from tffpipe.program import files
from tffpipe.program import hparams_config

ROUND_KEY = "round"


class RunPaths:
    """The paths of one run's outputs."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.config = os.path.join(run_dir, "config.json")
        self.checkpoints = os.path.join(run_dir, "checkpoints")
        self.logdir = os.path.join(run_dir, "logdir")
        self.metrics_csv = os.path.join(run_dir, "results", "metrics.csv")
        self.clients_csv = os.path.join(run_dir, "results", "clients.csv")
        self.export = os.path.join(run_dir, "export")
        self.keys = os.path.join(run_dir, "keys")  # a secure protocol's (CKKS), owner-only


class MetricsLog:
    """Releases one flat dict of scalar metrics per round to CSV and TensorBoard.

    The CSV is appended a row per round (`appended_csv.py`; TFF's
    `CSVFileReleaseManager` rewrote the whole file every round). TensorBoard
    scalars are written here rather than by `tff.program.TensorBoardReleaseManager`, which never flushes its
    writer: a killed run would lose the queued events of rounds that its last
    checkpoint already covers. Every release is flushed before the round's
    checkpoint is saved.
    """

    def __init__(self, paths: RunPaths):
        self._csv = appended_csv.AppendedCsv(paths.metrics_csv, ROUND_KEY)
        self._writer = tf.summary.create_file_writer(paths.logdir)
        self._sim_clock = SimClockEvents(paths.logdir)
        self._root = os.path.dirname(os.path.normpath(paths.run_dir))
        self._eval_metrics: set[str] = set()

    def release(
        self,
        metrics: Mapping[str, float],
        round_num: int,
        histograms: Mapping[str, Any] | None = None,
    ) -> None:
        """Records a round's scalars, and `histograms` (name -> values) in TensorBoard only."""
        self._csv.release(metrics, round_num)
        with self._writer.as_default(step=round_num):
            # One event of every scalar, as `tf.summary.scalar` writes each
            # (TensorBoard's scalar protos): one TensorFlow op instead of one
            # per metric, a few milliseconds of a round.
            tf.summary.experimental.write_raw_pb(scalars_proto(metrics), step=round_num)
            for name, values in (histograms or {}).items():
                tf.summary.histogram(name, values)
        self._writer.flush()
        if SIM_ELAPSED in metrics:
            self._sim_clock.write(round_num, metrics[SIM_ELAPSED], metrics)
        evaluated = {n for n in metrics if n.startswith("eval/") and not n.startswith("eval/num_")}
        if evaluated - self._eval_metrics:  # the HParams table's metric columns: evaluation only
            self._eval_metrics |= evaluated
            hparams_config.add(self._root, metrics=sorted(evaluated))

    def close(self) -> None:
        self._writer.close()
        self._sim_clock.close()


# TensorBoard lists chart groups alphabetically. These three go under one
# `stats/` group there, so that the evaluation charts come first;
# metrics.csv keeps their names.
_STATS_GROUPS = ("aggregator/", "clients/", "comm/")
STATS_PREFIX = "stats/"


def scalars_proto(metrics: Mapping[str, float]) -> bytes:
    """A serialized `Summary` of each metric as the scalar `tf.summary.scalar` writes under its TensorBoard tag."""
    summary = summary_pb2.Summary()
    for name, value in metrics.items():
        summary.value.extend(scalar_summary.scalar_pb(tensorboard_tag(name), value).value)
    return summary.SerializeToString()


def tensorboard_tag(name: str) -> str:
    """A metric's TensorBoard tag: `comm/upload_bytes_per_client` -> `stats/comm/upload_bytes_per_client`."""
    return STATS_PREFIX + name if name.startswith(_STATS_GROUPS) else name


def metric_name(tag: str) -> str:
    """The metrics.csv name of a TensorBoard tag (the inverse of `tensorboard_tag`)."""
    return tag.removeprefix(STATS_PREFIX) if tag.startswith(tuple(STATS_PREFIX + g for g in _STATS_GROUPS)) else tag


SIM_ELAPSED = "sim/elapsed_sec"
# The tags of the simulated-time copies, in the run's own TensorBoard run.
SIM_CLOCK_PREFIX = "sim_clock/"


class SimClockEvents:
    """The round's train and eval scalars again, as `sim_clock/<name>`, stamped with the simulated time.

    TensorBoard's x-axis can be the step, or the events' wall time ("Relative",
    "Wall"). TF2 summary writers stamp the real time, so these events are
    written as `Event` records with `wall_time` = `sim/elapsed_sec`, to a file
    of their own in the run's folder: one TensorBoard run per experiment, in
    which the Relative axis of the `sim_clock/` charts is simulated time
    (TensorBoard measures it from each chart's first point).
    """

    def __init__(self, directory: str):
        self._directory = directory
        self._writer: Any = None  # a tf.io.TFRecordWriter once the first round is written

    def write(self, round_num: int, elapsed_sec: float, metrics: Mapping[str, float]) -> None:
        if self._writer is None:
            os.makedirs(self._directory, exist_ok=True)
            path = os.path.join(
                self._directory, f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.sim_clock"
            )
            self._writer = tf.io.TFRecordWriter(path)
            self._writer.write(tf.compat.v1.Event(wall_time=0.0, file_version="brain.Event:2").SerializeToString())
        values = [
            tf.compat.v1.Summary.Value(tag=SIM_CLOCK_PREFIX + name, simple_value=float(value))
            for name, value in metrics.items()
            if name.startswith(("train/", "eval/"))
        ]
        event = tf.compat.v1.Event(wall_time=elapsed_sec, step=round_num, summary=tf.compat.v1.Summary(value=values))
        self._writer.write(event.SerializeToString())
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def record_hparams(paths: RunPaths, settings: Mapping[str, Any]) -> None:
    """The run's HParams session, and its settings' names in the configuration of the folder of runs."""
    write_hparams(paths.logdir, settings)
    hparams_config.add(os.path.dirname(os.path.normpath(paths.run_dir)), hparams=list(settings))


def write_hparams(logdir: str, settings: Mapping[str, Any]) -> None:
    """Writes the run's settings as a TensorBoard HParams session summary."""
    values = {}
    for key, value in settings.items():
        values[key] = value if isinstance(value, (bool, int, float, str)) else str(value)
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        hparams_api.hparams(values, trial_id=os.path.basename(os.path.dirname(logdir)))
    writer.close()


def remove_leftover_temporaries(paths: RunPaths) -> list[str]:
    """Removes what writes killed mid-way left behind; returns the removed names.

    `files.replace_dir_atomic` (the export) leaves `.tmp_export*` folders,
    atomic file writes `.tmp_*` files, TFF's CSV writer (runs before
    `appended_csv.py`) `metrics.csv_temp*`.
    Called while holding the run lock, so no live writer owns them.
    """
    found = glob.glob(os.path.join(paths.run_dir, ".tmp_*"))
    found += glob.glob(os.path.join(paths.run_dir, ".write_test_*"))
    results = os.path.dirname(paths.metrics_csv)
    found += glob.glob(os.path.join(results, ".tmp_*"))
    found += glob.glob(paths.metrics_csv + "_temp*")
    for path in found:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)
    return sorted(os.path.relpath(p, paths.run_dir) for p in found)


def export_keras_model(model: tf.keras.Model, path: str) -> None:
    """Saves `model` as a Keras SavedModel, atomically.

    The result loads with `tf.keras.models.load_model(path)` alone.
    """
    files.replace_dir_atomic(path, lambda tmp: save_keras_model(model, tmp))


def save_keras_model(model: tf.keras.Model, path: str) -> None:
    """Saves `model` as a Keras SavedModel at `path` (not atomic: inside an atomic write)."""
    # Tracing every layer's call functions takes 10 s or more for an LSTM or a
    # ResNet and is only needed to load layers Keras does not know: skip it
    # when every layer is a Keras built-in (loading then rebuilds from configs).
    only_builtin_layers = all(
        type(layer).__module__.startswith("keras.")
        for layer in model.submodules
        if isinstance(layer, tf.keras.layers.Layer)
    )
    model.save(path, save_format="tf", save_traces=not only_builtin_layers)
