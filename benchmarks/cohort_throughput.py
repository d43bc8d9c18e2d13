"""Large cohorts: the in-process engine (stacked or grouped clients), grouped TFF work, one client per call and Keras.

For each workload, a round's clients are trained four ways, every figure a
wall time per round:
  (a) the in-process engine at its defaults: clients trained on stacked
      copies of the model where that applies (`--stacked_training=auto`:
      FedAvg, plain SGD, a stackable model, 24 clients or more), else TFF's
      client work grouped; the column after it says which;
  (a2) TFF's client work grouped (`--stacked_training=off`,
      `--clients_per_call` at its default), datasets built as the program
      loop builds them;
  (b) one client per TensorFlow call (`--clients_per_call=1`);
  (c) Keras `model.fit` of the same model over the same examples, one epoch,
      at the clients' batch size, and at the batch the clients really run
      (a client with 7 examples and batch size 20 runs one batch of 7).
Workloads: `digits` (250 clients of about 7 examples; for 1,000 a round,
1,250 clients of about 7 from digits' images repeated) at 10, 50, 200 and
1,000 clients a round, and the
EMNIST CNN of `tasks/emnist.py` (`cnn_dropout`, 1.2 million parameters) on
synthetic EMNIST-shaped data (28x28 images, 62 classes, 20 examples a client)
at 50 and 200 clients a round. FedAvg, one local epoch, batch 20, no zeroing.
Each figure is the median of `--rounds` timed rounds after a warm-up round;
(a), (a2) and (b) alternate round by round.

Then the peer configuration (the shape of Flower's and TFF's tutorials:
digits, 32 training clients of about 36 examples, 10 a round, batch 16, no
evaluation): the whole program (`loop.run`, checkpoints and records
included) for `--peer_rounds` rounds and for a quarter of them, and the
difference divided by the difference in rounds: wall seconds per round with
start-up taken out, each run a fresh `python -m tffpipe.train`; the pair is repeated `--peer_repeats` times (one pair
varied from 0.031 to 0.073 s a round on this shared machine) and each
figure and the median are printed.

  uv run python benchmarks/cohort_throughput.py
  uv run python benchmarks/cohort_throughput.py --workloads=digits:200 --rounds=3 --peer_rounds=0
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import statistics
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from tffpipe.config import components
from tffpipe import config
from tffpipe.learning import builder
from tffpipe.program import assembly
from tffpipe.program import client_sources
from tffpipe.program import loop
from tffpipe.program import sampling
from tffpipe.runtimes import processes
from tffpipe.runtimes import registry as runtime_registry
from tffpipe.tasks import from_arrays
from tffpipe_tasks import digits
from tffpipe_tasks import emnist

flags.DEFINE_list(
    "workloads",
    ["digits:10", "digits:50", "digits:200", "digits:1000", "emnist:50", "emnist:200"],
    "MODEL:CLIENTS_PER_ROUND pairs to measure.",
)
flags.DEFINE_integer("rounds", 5, "Timed rounds per engine (after a warm-up round); the median is reported.")
flags.DEFINE_integer("batch_size", 20, "The clients' batch size.")
flags.DEFINE_integer("peer_rounds", 80, "Rounds of the peer configuration's long run (0: skip it).")
flags.DEFINE_integer(
    "peer_repeats", 3, "Times the peer configuration's pair of runs is repeated; the median is reported."
)
FLAGS = flags.FLAGS


def _task(model: str, cohort: int):
    if model == "digits" and cohort <= 200:
        return digits.create_task(num_clients=250, eval_clients=50, alpha=100.0, seed=0)
    if model == "digits":
        # digits' 1,797 images, repeated to keep about 7 examples a client.
        x, y = digits.load_arrays()
        num_clients = cohort + cohort // 4
        repeats = -(-7 * num_clients // len(x))
        return from_arrays(
            "digits_repeated",
            np.tile(x, (repeats, 1, 1, 1)),
            np.tile(y, repeats),
            digits.build_cnn,
            loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            num_clients=num_clients,
            partition="iid",
            eval_fraction=0.2,
            seed=0,
        )
    rng = np.random.default_rng(0)
    num_clients = cohort + cohort // 4
    x = rng.random((num_clients * 20, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 62, num_clients * 20)
    return from_arrays(
        "emnist_shaped",
        x,
        y,
        lambda: emnist._MODELS["cnn_dropout"](only_digits=False),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
        num_clients=num_clients,
        partition="iid",
        eval_fraction=0.2,
        seed=0,
    )


# The engines measured: (label, --clients_per_call, --stacked_training).
ENGINES = (("stacked", 0, "auto"), ("grouped", 0, "off"), ("per-client", 1, "off"))


def _config(task, cohort: int, per_call: int, stacked: str) -> config.RunConfig:
    return config.from_values(
        {
            "task": "digits",
            "clients_per_round": cohort,
            "client_epochs": 1,
            "client_batch_size": FLAGS.batch_size,
            "zeroing": False,
            "runtime": "inprocess",
            "clients_per_call": per_call,
            "stacked_training": stacked,
            "digits_num_clients": 1000000,  # unused: the task object is built here
        }
    )


def _engine(task, cohort: int, per_call: int, stacked: str):
    cfg = _config(task, cohort, per_call, stacked)
    runtime = runtime_registry.get("inprocess")
    process, _ = assembly.build_learning_process(
        task, cfg, list(task.train_data.client_ids), runtime.loop_implementation()
    )
    return runtime.wrap(process, components.runtime_context(cfg), lambda line: None), loop.client_spec(cfg)


def _round(engine, spec, task, state, cohort: int, round_num: int):
    """One round as the program loop runs it: sample, build datasets (as the engine reads them), train."""
    started = time.perf_counter()
    ids = sampling.sample_clients(list(task.train_data.client_ids), cohort, seed=0, round_num=round_num)
    source = client_sources.TrainSource(client_sources.TaskRecipe(task.name, (), 0, None), spec)
    keys = [(cid, sampling.client_seed(0, round_num, i)) for i, cid in enumerate(ids)]
    state = engine.next(state, client_sources.ClientDatasets(source, keys, task)).state
    return state, time.perf_counter() - started, ids


def _keras(task, ids, batch_size: int) -> float:
    pairs = [_client_arrays(task, cid) for cid in ids]
    x, y = np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])
    model = task.model_builder()
    model.compile(tf.keras.optimizers.SGD(0.02), task.loss_builder())
    model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)  # warm-up (traces)
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def _client_arrays(task, cid) -> tuple[np.ndarray, np.ndarray]:
    """A client's examples as (x, y) arrays, as its training dataset yields them."""
    spec = loop.ClientSpec(num_epochs=1, batch_size=10**6, shuffle_buffer_size=1)
    x, y = next(iter(task.client_dataset(cid, spec, seed=0)))
    return np.asarray(x), np.asarray(y)


def _peer_wall_per_round(rounds: int, repeats: int) -> tuple[list[float], int, float]:
    """(wall seconds per round of each repeat, rounds of the short run, examples per client) of the peer configuration."""
    task = digits.create_task(num_clients=50, eval_clients=18, alpha=100.0, seed=0)
    short = max(1, rounds // 4)
    per_round = [_peer_difference(short, rounds) for _ in range(repeats)]
    examples = sum(len(_client_arrays(task, cid)[1]) for cid in task.train_data.client_ids)
    return per_round, short, examples / len(task.train_data.client_ids)


def _peer_difference(short: int, rounds: int) -> float:
    """(wall of a run of `rounds` - wall of a run of `short`) / (rounds - short), each run a fresh process.

    Fresh processes, as users run it: runs repeated in one process slow
    down one after another (0.068, 0.122 and 0.146 s a round for three
    pairs in a row here).
    """
    import subprocess
    import sys
    import tempfile

    walls = {}
    for count in (short, rounds):
        command = [
            sys.executable,
            "-m",
            "tffpipe.train",
            "--task=digits",
            "--digits_num_clients=50",
            "--digits_eval_clients=18",
            "--digits_alpha=100",
            "--clients_per_round=10",
            "--client_epochs=1",
            "--client_batch_size=16",
            f"--rounds={count}",
            "--eval_every=0",
            "--runtime=inprocess",
            f"--root_dir={tempfile.mkdtemp(prefix='tffpipe_peer_')}",
        ]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        walls[count] = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"the peer run failed: {done.stderr.strip().splitlines()[-1:]}")
    return (walls[rounds] - walls[short]) / (rounds - short)


def main(argv):
    del argv
    rows = []
    for item in FLAGS.workloads:
        model, cohort = item.split(":")
        cohort = int(cohort)
        task = _task(model, cohort)
        initial = builder.initial_model_weights(task, 0)
        engines = {label: _engine(task, cohort, per_call, stacked) for label, per_call, stacked in ENGINES}
        states = {k: e.set_model_weights(e.initialize(), initial) for k, (e, _) in engines.items()}
        times: dict[str, list[float]] = {label: [] for label in engines}
        ids = []
        for round_num in range(0, FLAGS.rounds + 1):
            for k, (engine, spec) in engines.items():
                states[k], seconds, ids = _round(engine, spec, task, states[k], cohort, round_num + 1)
                if round_num:
                    times[k].append(seconds)
        stacked_per_call = engines["stacked"][0].stacked
        how = f"stacked, {stacked_per_call.clients_per_call}/call" if stacked_per_call else "not stacked"
        per_call = engines["grouped"][0].clients_per_call
        for engine, _ in engines.values():
            engine.close()
        sizes = [len(_client_arrays(task, cid)[1]) for cid in ids]
        examples = sum(sizes)
        clients_batches = sum(-(-n // FLAGS.batch_size) for n in sizes)
        effective = max(1, round(examples / clients_batches))
        keras_batch = _keras(task, ids, FLAGS.batch_size)
        keras_effective = _keras(task, ids, effective)
        medians = {label: statistics.median(t) for label, t in times.items()}
        rows.append((model, cohort, examples, how, per_call, medians, keras_batch, effective, keras_effective))
        print(
            f"measured {item}: "
            + ", ".join(f"{label} {m:.3f} s" for label, m in medians.items())
            + f", keras {keras_batch:.3f} s (batch {FLAGS.batch_size}), {keras_effective:.3f} s (batch {effective})",
            flush=True,
        )
    print()
    print(
        f"{'workload':<10} {'clients':>7} {'examples':>8} {'(a) engine':>10} {'how':<20} {'(a2) grouped':>12} "
        f"{'(b) 1/call':>10} {'(c) keras':>9} {'(c) eff. batch':>14} {'(a)/(c)':>7} {'(b)/(a)':>7}"
    )
    for model, cohort, examples, how, per_call, medians, keras_batch, effective, keras_effective in rows:
        engine, grouped, single = medians["stacked"], medians["grouped"], medians["per-client"]
        print(
            f"{model:<10} {cohort:>7} {examples:>8} {engine:>9.3f}s {how:<20} {grouped:>8.3f}s K={per_call:<2}"
            f"{single:>9.3f}s {keras_batch:>8.3f}s {keras_effective:>8.3f}s @{effective:<4} "
            f"{engine / keras_effective:>7.2f} {single / engine:>7.2f}"
        )
    if FLAGS.peer_rounds:
        per_round, short, per_client = _peer_wall_per_round(FLAGS.peer_rounds, FLAGS.peer_repeats)
        each = ", ".join(f"{p:.3f}" for p in per_round)
        print(
            f"\npeer configuration (digits, 32 clients of ~{per_client:.0f} examples, 10 a round, batch 16, "
            f"whole program, (run of {FLAGS.peer_rounds} - run of {short}) / rounds): "
            f"median {statistics.median(per_round):.3f} s of wall time per round ({each})"
        )
    processes.exit_now(0)


if __name__ == "__main__":
    app.run(main)
