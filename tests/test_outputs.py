import csv
import glob
import os

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tffpipe.program import outputs

from conftest import scalar_steps




def test_metrics_log_writes_csv_rows_and_flushed_scalars(tmp_path):
    paths = outputs.RunPaths(str(tmp_path))
    log = outputs.MetricsLog(paths)
    for r in (1, 2, 3):
        metrics = {"train/loss": 1.0 / r, "round_time_sec": 0.5}
        if r == 2:
            metrics["eval/accuracy"] = 0.75
        log.release(metrics, r)
    # Flushed without closing: a SIGKILL now would lose nothing.
    steps = scalar_steps(paths.logdir)
    assert sorted(steps["train/loss"]) == [1, 2, 3]
    assert steps["eval/accuracy"] == [2]
    with open(paths.metrics_csv) as f:
        rows = list(csv.DictReader(f))
    assert [row["round"] for row in rows] == ["1", "2", "3"]
    assert float(rows[1]["eval/accuracy"]) == 0.75
    assert rows[0]["eval/accuracy"] == ""
    log.close()


def test_truncation_drops_rounds_after_the_checkpoint(tmp_path):
    paths = outputs.RunPaths(str(tmp_path))
    log = outputs.MetricsLog(paths)
    for r in range(1, 6):
        log.release({"train/loss": float(r)}, r)
    log.close()
    assert outputs.truncate_csv(paths.metrics_csv, 3) == 2
    assert outputs.truncate_event_files(paths.logdir, 3) == 2
    with open(paths.metrics_csv) as f:
        assert [row["round"] for row in csv.DictReader(f)] == ["1", "2", "3"]
    assert sorted(scalar_steps(paths.logdir)["train/loss"]) == [1, 2, 3]
    # Nothing left to drop: a no-op.
    assert outputs.truncate_csv(paths.metrics_csv, 3) == 0
    assert outputs.truncate_event_files(paths.logdir, 3) == 0


def test_truncation_survives_a_partial_last_record(tmp_path):
    paths = outputs.RunPaths(str(tmp_path))
    log = outputs.MetricsLog(paths)
    for r in range(1, 4):
        log.release({"train/loss": float(r)}, r)
    log.close()
    (path,) = glob.glob(os.path.join(paths.logdir, "events.out.tfevents.*"))
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 5)
    outputs.truncate_event_files(paths.logdir, 10)
    assert sorted(scalar_steps(paths.logdir)["train/loss"]) == [1, 2]


def test_hparams_summary_is_written(tmp_path):
    logdir = str(tmp_path / "exp" / "logdir")
    settings = outputs.flatten_settings({"schedule": {"rounds": 5}, "task": {"name": "digits", "options": {}}})
    assert settings == {"schedule.rounds": 5, "task.name": "digits", "task.options": {}}
    outputs.write_hparams(logdir, settings)
    plugins = set()
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                plugins.add(value.metadata.plugin_data.plugin_name)
    assert "hparams" in plugins


def test_tensorboard_command_line_imports():
    # `uv run tensorboard --logdir ...` (README) starts from this module; it
    # failed once for lack of pkg_resources.
    from tensorboard import main  # pylint: disable=g-import-not-at-top

    assert callable(main.run_main)


def test_export_is_a_loadable_keras_savedmodel(tmp_path):
    model = tf.keras.Sequential([tf.keras.layers.InputLayer((3,)), tf.keras.layers.Dense(2)])
    weights = tff.learning.models.ModelWeights(
        trainable=[np.ones((3, 2), np.float32), np.full(2, 0.5, np.float32)], non_trainable=[]
    )
    path = str(tmp_path / "export")
    outputs.export_keras_model(model, weights, path)
    outputs.export_keras_model(model, weights, path)  # Replacing works too.
    loaded = tf.keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(np.ones((1, 3)), verbose=0), [[3.5, 3.5]])
    assert sorted(os.listdir(tmp_path)) == ["export"]
