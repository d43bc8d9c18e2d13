"""Vertical training against centralized training and the active party alone.

For each built-in vertical task and seed, on the same aligned training and
held-out rows (the run's private set intersection and split):
  (a) vertical: `tffpipe.train`'s run (secure-sum combine, the defaults);
  (b) central: the same architecture (every party's bottom model, the same
      combine, the top model) trained as one Keras model on all features,
      with the same optimizer, learning rate, batch size and epochs;
  (c) active alone: the active party's bottom and top models on its own
      features only.
It prints the held-out metric of each (mean over seeds) and the time per
epoch of (a) relative to (b).

  uv run python benchmarks/vertical.py
  uv run python benchmarks/vertical.py --tasks=vertical_diabetes --learning_rate=0.02
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from tffpipe import api
from tffpipe import compat
from tffpipe import config
from tffpipe.runtimes import processes
from tffpipe.vertical import psi

flags.DEFINE_list("tasks", ["vertical_diabetes", "vertical_breast_cancer"], "Vertical tasks.")
flags.DEFINE_integer("seeds", 3, "Seeds (0, 1, ...); the table gives their mean.")
flags.DEFINE_integer("rounds", 50, "Epochs.")
flags.DEFINE_float("learning_rate", 0.1, "--client_learning_rate of every model (the launcher's default).")
flags.DEFINE_string("root_dir", os.path.join(tempfile.gettempdir(), "tffpipe_vertical"), "Where runs write.")
FLAGS = flags.FLAGS

# The held-out metric each task is judged by, and whether lower is better.
METRIC = {"vertical_diabetes": ("eval/loss", "MSE"), "vertical_breast_cancer": ("eval/accuracy", "accuracy")}


def _rows(task, alignment):
    """Each party's features on the aligned training and held-out rows, and the labels."""

    def pick(ids, party_ids, values):
        row = {sample_id: i for i, sample_id in enumerate(party_ids)}
        return values[[row[i] for i in ids]]

    x = {
        split: {p.name: pick(ids, p.ids, p.features) for p in task.parties}
        for split, ids in (("train", alignment.train_ids), ("test", alignment.test_ids))
    }
    y = {
        split: pick(ids, task.active.ids, task.labels)
        for split, ids in (("train", alignment.train_ids), ("test", alignment.test_ids))
    }
    return x, y


def _keras_model(task, names, combine):
    inputs = {p.name: tf.keras.Input(shape=p.features.shape[1:], name=p.name) for p in task.parties if p.name in names}
    embeddings = [p.bottom_model_fn()(inputs[p.name]) for p in task.parties if p.name in names]
    if len(embeddings) == 1:
        combined, width = embeddings[0], int(embeddings[0].shape[-1])
    elif combine == "sum":
        combined, width = tf.keras.layers.Add()(embeddings), int(embeddings[0].shape[-1])
    else:
        combined = tf.keras.layers.Concatenate()(embeddings)
        width = int(combined.shape[-1])
    return tf.keras.Model(inputs, task.top_model_fn(width)(combined))


def _central(task, cfg, x, y, names, metric_key):
    """Trains with Keras on the columns of `names`; returns (held-out metric, seconds per epoch)."""
    tf.keras.utils.set_random_seed(cfg.schedule.seed)
    model = _keras_model(task, names, task.combine)
    model.compile(
        optimizer=tf.keras.optimizers.SGD(cfg.client_optimizer.learning_rate),
        loss=task.loss_builder(),
        metrics=task.metrics_builder(),
    )
    train = {n: x["train"][n] for n in names}
    start = time.perf_counter()
    model.fit(train, y["train"], batch_size=cfg.client.batch_size, epochs=cfg.schedule.rounds, verbose=0)
    seconds = (time.perf_counter() - start) / cfg.schedule.rounds
    results = model.evaluate({n: x["test"][n] for n in names}, y["test"], verbose=0, return_dict=True)
    results["loss"] = results.pop("loss")
    return results[metric_key.split("/", 1)[1]], seconds


def main(argv):
    del argv
    compat.quiet_library_logs()
    rows = []
    started = time.monotonic()
    for name in FLAGS.tasks:
        metric_key, label = METRIC[name]
        cells = {"vertical": [], "central": [], "alone": [], "ratio": []}
        for seed in range(FLAGS.seeds):
            cfg = config.from_values(
                dict(
                    task=name,
                    seed=seed,
                    rounds=FLAGS.rounds,
                    root_dir=FLAGS.root_dir,
                    experiment_name=f"{name}-{seed}-{FLAGS.learning_rate:g}",
                    eval_every=0,
                    client_learning_rate=FLAGS.learning_rate,
                )
            )
            result, task = api.train(cfg, lambda line: None)
            seconds = _epoch_seconds(cfg)
            alignment = psi.align(
                {p.name: p.ids for p in task.parties}, task.active.name, test_fraction=task.test_fraction, seed=seed
            )
            x, y = _rows(task, alignment)
            everyone = [p.name for p in task.parties]
            central, central_seconds = _central(task, cfg, x, y, everyone, metric_key)
            alone, _ = _central(task, cfg, x, y, [task.active.name], metric_key)
            cells["vertical"].append(result.final_eval[metric_key])
            cells["central"].append(central)
            cells["alone"].append(alone)
            cells["ratio"].append(seconds / central_seconds)
            print(
                f"{name} seed {seed}: vertical {result.final_eval[metric_key]:.4f}, central {central:.4f}, "
                f"{task.active.name} alone {alone:.4f}; {seconds:.3f} s/epoch vs {central_seconds:.3f}",
                file=sys.stderr,
                flush=True,
            )
        rows.append((name, label, *(statistics.mean(cells[k]) for k in ("vertical", "central", "alone", "ratio"))))
    print(
        f"\nheld-out metric after {FLAGS.rounds} epochs at learning rate {FLAGS.learning_rate:g}, mean of "
        f"{FLAGS.seeds} seed(s); "
        "time per epoch of vertical training relative to central"
    )
    print("| task | metric | (a) vertical | (b) central | (c) active party alone | (a)/(b) time per epoch |")
    print("|---|---|---|---|---|---|")
    for name, label, vertical, central, alone, ratio in rows:
        print(f"| {name} | {label} | {vertical:.3f} | {central:.3f} | {alone:.3f} | {ratio:.1f}x |")
    print(f"\n({time.monotonic() - started:.0f} s in all)")
    processes.exit_now(0)


def _epoch_seconds(cfg) -> float:
    """The run's mean round_time_sec from its metrics.csv."""
    import csv

    with open(os.path.join(cfg.output.run_dir, "results", "metrics.csv")) as f:
        return float(np.mean([float(r["round_time_sec"]) for r in csv.DictReader(f)]))


if __name__ == "__main__":
    app.run(main)
