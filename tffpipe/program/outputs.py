"""A run's output folder: metrics CSV, TensorBoard logs, config and export.

Layout under `root_dir/experiment_name/`:
  config.json           every setting of the run
  checkpoints/          program state (see `checkpoints.py`)
  logdir/               TensorBoard scalars and the HParams summary
  results/metrics.csv   one row per finished round
  export/               the final global model as a Keras SavedModel
"""

import asyncio
import csv
import glob
import io
import os
from typing import Any, Mapping

from absl import logging
import tensorflow as tf
import tensorflow_federated as tff
from tensorboard.plugins.hparams import api as hparams_api

from tffpipe.program import files

ROUND_KEY = "round"


class RunPaths:
    """The paths of one run's outputs."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.config = os.path.join(run_dir, "config.json")
        self.checkpoints = os.path.join(run_dir, "checkpoints")
        self.logdir = os.path.join(run_dir, "logdir")
        self.metrics_csv = os.path.join(run_dir, "results", "metrics.csv")
        self.export = os.path.join(run_dir, "export")


class MetricsLog:
    """Releases one flat dict of scalar metrics per round to CSV and TensorBoard.

    The CSV goes through `tff.program.CSVFileReleaseManager` in write mode:
    each release rewrites the file through a temporary file and a rename, so
    it is never half-written. TensorBoard scalars are written here rather than
    by `tff.program.TensorBoardReleaseManager`, which never flushes its
    writer: a killed run would lose the queued events of rounds that its last
    checkpoint already covers. Every release is flushed before the round's
    checkpoint is saved.
    """

    def __init__(self, paths: RunPaths):
        self._csv = tff.program.CSVFileReleaseManager(
            paths.metrics_csv,
            save_mode=tff.program.CSVSaveMode.WRITE,
            key_fieldname=ROUND_KEY,
        )
        self._writer = tf.summary.create_file_writer(paths.logdir)

    def release(self, metrics: Mapping[str, float], round_num: int) -> None:
        asyncio.run(self._csv.release(dict(metrics), round_num))
        with self._writer.as_default(step=round_num):
            for name, value in metrics.items():
                tf.summary.scalar(name, value)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def write_hparams(logdir: str, settings: Mapping[str, Any]) -> None:
    """Writes the run's settings as a TensorBoard HParams session summary."""
    values = {}
    for key, value in settings.items():
        values[key] = value if isinstance(value, (bool, int, float, str)) else str(value)
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        hparams_api.hparams(values, trial_id=os.path.basename(os.path.dirname(logdir)))
    writer.close()


def flatten_settings(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`, for HParams."""
    flat = {}
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, Mapping) and item:
            flat.update(flatten_settings(item, name + "."))
        else:
            flat[name] = item
    return flat


def truncate_csv(path: str, last_round: int) -> int:
    """Drops rows with a round above `last_round`; returns how many it dropped."""
    if not os.path.exists(path):
        return 0
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fieldnames = list(reader.fieldnames or [ROUND_KEY])
        rows = list(reader)
    kept = [row for row in rows if int(row[ROUND_KEY]) <= last_round]
    if len(kept) == len(rows):
        return 0
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(kept)
    files.write_text_atomic(path, out.getvalue())
    return len(rows) - len(kept)


def truncate_event_files(logdir: str, last_round: int) -> int:
    """Drops TensorBoard events with a step above `last_round`.

    TFF's `TensorBoardReleaseManager` never removes events, and TensorBoard
    only purges orphaned steps when a file marks a restart, which TF2 summary
    writers do not do. So after a crash the events the killed run wrote past its
    last checkpoint are removed here, each file rewritten atomically. A record
    cut short by the kill ends that file's readable part.

    Returns:
      The number of events dropped.
    """
    dropped = 0
    for path in sorted(glob.glob(os.path.join(logdir, "**", "events.out.tfevents.*"), recursive=True)):
        kept, removed = [], 0
        try:
            for record in tf.data.TFRecordDataset(path):
                event = tf.compat.v1.Event.FromString(record.numpy())
                if event.step <= last_round:
                    kept.append(record.numpy())
                else:
                    removed += 1
        except tf.errors.DataLossError:
            removed += 1
            logging.warning("%s ends in a partial record; it was dropped", path)
        if removed:
            temp_path = path + ".tmp"
            with tf.io.TFRecordWriter(temp_path) as writer:
                for record in kept:
                    writer.write(record)
            os.replace(temp_path, path)
            dropped += removed
    return dropped


def reset_logs(paths: RunPaths) -> None:
    """Removes metrics and event files of an earlier run that left no checkpoint."""
    for path in glob.glob(os.path.join(paths.logdir, "**", "events.out.tfevents.*"), recursive=True):
        os.remove(path)
    if os.path.exists(paths.metrics_csv):
        os.remove(paths.metrics_csv)


def export_keras_model(
    model: tf.keras.Model, model_weights: tff.learning.models.ModelWeights, path: str
) -> None:
    """Saves `model` with `model_weights` as a Keras SavedModel, atomically.

    The result loads with `tf.keras.models.load_model(path)` alone.
    """
    model_weights.assign_weights_to(model)
    # Tracing every layer's call functions takes 10 s or more for an LSTM or a
    # ResNet and is only needed to load layers Keras does not know: skip it
    # when every layer is a Keras built-in (loading then rebuilds from configs).
    only_builtin_layers = all(
        type(layer).__module__.startswith("keras.")
        for layer in model.submodules
        if isinstance(layer, tf.keras.layers.Layer)
    )
    files.replace_dir_atomic(
        path,
        lambda tmp: model.save(tmp, save_format="tf", save_traces=not only_builtin_layers),
    )
