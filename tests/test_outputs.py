import csv
import glob
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tffpipe.program import outputs
from tffpipe.program import records

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


def test_simulated_time_copies_are_tags_of_the_same_run_and_stay_out_of_rebuilt_rows(tmp_path):
    paths = outputs.RunPaths(str(tmp_path))
    log = outputs.MetricsLog(paths)
    elapsed = {1: 12.5, 2: 30.0, 3: 61.25}
    for r, sim in elapsed.items():
        log.release({"train/loss": 1.0 / r, "eval/accuracy": 0.1 * r, "sim/elapsed_sec": sim, "round_time_sec": 0.5}, r)
    log.close()
    assert sorted(os.listdir(paths.logdir)) == sorted(  # one TensorBoard run: no sim_clock folder
        os.path.basename(p) for p in glob.glob(os.path.join(paths.logdir, "events.out.tfevents.*"))
    )
    stamped = {}
    for path in glob.glob(os.path.join(paths.logdir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag.startswith("sim_clock/"):
                    stamped.setdefault(value.tag, []).append((event.step, event.wall_time, value.simple_value))
    assert sorted(stamped) == ["sim_clock/eval/accuracy", "sim_clock/train/loss"]
    assert sorted(stamped["sim_clock/eval/accuracy"]) == [(r, elapsed[r], pytest.approx(0.1 * r)) for r in (1, 2, 3)]
    # metrics.csv rebuilt from TensorBoard holds the run's own columns only.
    os.remove(paths.metrics_csv)
    records.reconcile(paths, 2)
    with open(paths.metrics_csv) as f:
        reader = csv.DictReader(f)
        assert not any(name.startswith("sim_clock/") for name in reader.fieldnames)
        assert [float(row["sim/elapsed_sec"]) for row in reader] == [12.5, 30.0]
    assert sorted(scalar_steps(paths.logdir)["sim_clock/train/loss"]) == [1, 2]  # truncated with the rest


def _log_rounds(paths, rounds, **extra):
    log = outputs.MetricsLog(paths)
    for r in rounds:
        log.release({"train/loss": float(r), **extra}, r)
    log.close()


def _csv_rounds(paths):
    with open(paths.metrics_csv) as f:
        return [int(row["round"]) for row in csv.DictReader(f)]


def test_reconcile_drops_rounds_after_the_checkpoint(tmp_path):
    paths = outputs.RunPaths(str(tmp_path))
    _log_rounds(paths, range(1, 6))
    result = records.reconcile(paths, 3)
    assert result.dropped == 4  # rounds 4 and 5, in the CSV and in TensorBoard
    assert result.notes == []
    assert _csv_rounds(paths) == [1, 2, 3]
    assert sorted(scalar_steps(paths.logdir)["train/loss"]) == [1, 2, 3]
    # Nothing left to drop: a no-op.
    assert records.reconcile(paths, 3).dropped == 0


def test_reconcile_survives_a_partial_last_record(tmp_path):
    paths = outputs.RunPaths(str(tmp_path))
    _log_rounds(paths, range(1, 4))
    (path,) = glob.glob(os.path.join(paths.logdir, "events.out.tfevents.*"))
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 5)
    records.truncate_event_files(paths.logdir, 10)
    assert sorted(scalar_steps(paths.logdir)["train/loss"]) == [1, 2]


def test_a_missing_metrics_csv_is_rebuilt_from_tensorboard(tmp_path):
    paths = outputs.RunPaths(str(tmp_path))
    _log_rounds(paths, range(1, 5), **{"eval/accuracy": 0.5})
    os.remove(paths.metrics_csv)
    result = records.reconcile(paths, 3)
    assert result.notes == ["metrics.csv: rebuilt rounds 1-3 from the TensorBoard logs"]
    with open(paths.metrics_csv) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["round"]) for r in rows] == [1, 2, 3]
    assert [float(r["train/loss"]) for r in rows] == [1.0, 2.0, 3.0]
    assert float(rows[0]["eval/accuracy"]) == 0.5
    # The release manager carries on from the rebuilt file.
    _log_rounds(paths, [4])
    assert _csv_rounds(paths) == [1, 2, 3, 4]


def test_an_unreadable_metrics_csv_is_moved_aside_and_rebuilt(tmp_path):
    paths = outputs.RunPaths(str(tmp_path))
    _log_rounds(paths, range(1, 4))
    with open(paths.metrics_csv, "w") as f:
        f.write("garbage,more\n\x00\x01,2\n")
    result = records.reconcile(paths, 3)
    assert result.notes[0].startswith("metrics.csv is unreadable (no 'round' column); moved to ")
    assert result.notes[1] == "metrics.csv: rebuilt rounds 1-3 from the TensorBoard logs"
    assert _csv_rounds(paths) == [1, 2, 3]
    with open(paths.metrics_csv + records.UNREADABLE_SUFFIX) as f:
        assert f.read().startswith("garbage")


def test_missing_tensorboard_logs_are_rebuilt_from_the_csv(tmp_path):
    paths = outputs.RunPaths(str(tmp_path))
    _log_rounds(paths, range(1, 4), **{"comm/upload_bytes_per_client": 7.0})
    for path in glob.glob(os.path.join(paths.logdir, "events.out.tfevents.*")):
        os.remove(path)
    result = records.reconcile(paths, 3)
    assert result.notes == ["TensorBoard logs: rebuilt rounds 1-3 from metrics.csv"]
    steps = scalar_steps(paths.logdir)
    assert sorted(steps["train/loss"]) == [1, 2, 3]
    assert sorted(steps["stats/comm/upload_bytes_per_client"]) == [1, 2, 3]  # filed as the writer files it
    assert records.read_scalars(paths.logdir)[2] == {"train/loss": 2.0, "comm/upload_bytes_per_client": 7.0}


def test_tensorboard_files_aggregator_clients_and_comm_under_stats_so_evaluation_comes_first():
    names = [
        "aggregator/zeroed_count",
        "clients/dropped",
        "comm/upload_bytes_per_client",
        "eval/accuracy",
        "eval_clients/accuracy_mean",
        "examples_per_sec",
        "privacy/epsilon",
        "round_time_sec",
        "train/loss",
    ]
    tags = [outputs.tensorboard_tag(n) for n in names]
    groups = sorted({t.split("/")[0] for t in tags})
    assert groups[0] == "eval" and "stats" in groups
    assert [outputs.metric_name(t) for t in tags] == names
    assert outputs.metric_name("stats/other") == "stats/other"  # only the three groups move


def test_rounds_missing_from_both_records_are_named(tmp_path):
    paths = outputs.RunPaths(str(tmp_path))
    _log_rounds(paths, [1, 4])
    result = records.reconcile(paths, 4)
    assert len(result.notes) == 1
    assert result.notes[0].startswith("warning: no record of rounds 2-3 survives")


def test_a_repeated_round_is_kept_once(tmp_path):
    paths = outputs.RunPaths(str(tmp_path))
    os.makedirs(os.path.dirname(paths.metrics_csv))
    with open(paths.metrics_csv, "w") as f:
        f.write("round,train/loss\n1,0.5\n1,0.25\n2,0.1\n")
    fieldnames, rows = records.read_metrics_csv(paths.metrics_csv)
    assert fieldnames == ["round", "train/loss"]
    assert {r: row["train/loss"] for r, row in rows.items()} == {1: "0.25", 2: "0.1"}


def test_leftover_temporaries_are_removed(tmp_path):
    paths = outputs.RunPaths(str(tmp_path))
    os.makedirs(str(tmp_path / ".tmp_exportabc123" / "variables"))
    os.makedirs(os.path.dirname(paths.metrics_csv))
    open(paths.metrics_csv + "_temp1234", "w").close()
    open(str(tmp_path / "results" / ".tmp_xyzmetrics.csv"), "w").close()
    open(paths.metrics_csv, "w").close()
    assert outputs.remove_leftover_temporaries(paths) == [
        ".tmp_exportabc123",
        "results/.tmp_xyzmetrics.csv",
        "results/metrics.csv_temp1234",
    ]
    assert sorted(os.listdir(tmp_path)) == ["results"]
    assert os.listdir(tmp_path / "results") == ["metrics.csv"]


def test_hparams_summary_lists_the_task_algorithm_rounds_then_what_differs(tmp_path):
    from tensorboard.plugins.hparams import metadata

    from tffpipe import config
    from tffpipe import run_names

    cfg = config.from_values({"client_learning_rate": 0.05, "digits_alpha": 0.1, "hparams": ["server_learning_rate"]})
    shown = run_names.tensorboard_hparams(cfg)
    assert list(shown) == [
        "task",
        "algorithm",
        "rounds",
        "server_learning_rate",
        "digits_alpha",
        "client_learning_rate",
    ]
    assert shown == {
        "task": "digits",
        "algorithm": "fedavg",
        "rounds": 50,
        "server_learning_rate": 1.0,
        "digits_alpha": 0.1,
        "client_learning_rate": 0.05,
    }
    logdir = str(tmp_path / "exp" / "logdir")
    outputs.write_hparams(logdir, shown)
    recorded = {}
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == metadata.SESSION_START_INFO_TAG:
                    info = metadata.parse_session_start_info_plugin_data(value.metadata.plugin_data.content)
                    recorded = {k: getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items()}
    assert recorded == shown
    with pytest.raises(config.ConfigError, match="--hparams: 'nope' is not a setting of this run"):
        config.from_values({"hparams": ["nope"]})


def test_tensorboard_command_line_imports():
    # `uv run tensorboard --logdir ...` (README) starts from this module; it
    # failed once for lack of pkg_resources.
    from tensorboard import main

    assert callable(main.run_main)


def test_export_is_a_loadable_keras_savedmodel(tmp_path):
    model = tf.keras.Sequential([tf.keras.layers.InputLayer((3,)), tf.keras.layers.Dense(2)])
    weights = tff.learning.models.ModelWeights(
        trainable=[np.ones((3, 2), np.float32), np.full(2, 0.5, np.float32)], non_trainable=[]
    )
    path = str(tmp_path / "export")
    weights.assign_weights_to(model)
    outputs.export_keras_model(model, path)
    outputs.export_keras_model(model, path)  # Replacing works too.
    loaded = tf.keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(np.ones((1, 3)), verbose=0), [[3.5, 3.5]])
    assert sorted(os.listdir(tmp_path)) == ["export"]
