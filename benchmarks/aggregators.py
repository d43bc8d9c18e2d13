"""Round time of each aggregation stack relative to the plain mean.

Every stack trains the same digits CNN from the same initial weights on the
same sampled clients; rounds are timed after one warm-up round, and the median
is reported. Stacks with secure sums run in TFF's test runtime (as
`tffpipe.train` does), so the plain mean is also timed there for reference.

  uv run python benchmarks/aggregators.py --rounds=5 --clients_per_round=10
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import contextlib
import statistics
import sys
import time

from absl import app
from absl import flags

from tffpipe.learning import builder
from tffpipe.program import assembly
from tffpipe import compat
from tffpipe import config
from tffpipe.runtimes import processes
from tffpipe.runtimes import contexts as runtime
from tffpipe.program import sampling
from tffpipe import tasks

flags.DEFINE_integer("rounds", 5, "Timed rounds per stack (after one warm-up round).")
flags.DEFINE_integer("clients_per_round", 10, "Clients per round.")
FLAGS = flags.FLAGS

_DP = dict(dp_noise_multiplier=0.5, dp_clip_norm=1.0)
_UNIFORM = dict(zeroing=False, client_weighting="uniform")
# Each stack as the launcher's flags would set it.
STACKS = {
    "mean (no zeroing)": dict(zeroing=False),
    "zeroing -> mean (default)": dict(),
    "quantization 8 bits": dict(compression="uniform_quantization"),
    "DP fixed": dict(dp="fixed", **_DP),
    "DP adaptive": dict(dp="adaptive", dp_noise_multiplier=0.5),
    "DP tree (DP-FTRL)": dict(dp="tree", **_DP),
    "secure sum": dict(secure_aggregation=True),
    "DP fixed + secure sum": dict(secure_aggregation=True, dp="fixed", **_DP),
    "DP distributed (secure)": dict(dp="distributed", **_DP),
    # Robust rules treat clients alike: compare them with the uniform mean.
    "mean, uniform weighting": dict(_UNIFORM),
    "robust median": dict(_UNIFORM, robust="median"),
    "robust trimmed mean": dict(_UNIFORM, robust="trimmed_mean"),
    "robust krum (f=2)": dict(_UNIFORM, robust="krum", robust_num_byzantine=2),
    "robust multi_krum (f=2)": dict(_UNIFORM, robust="multi_krum", robust_num_byzantine=2),
    "robust bulyan (f=1)": dict(_UNIFORM, robust="bulyan", robust_num_byzantine=1),
    "robust geometric median": dict(_UNIFORM, robust="geometric_median"),
    "norm bound 1.0 -> mean": dict(_UNIFORM, robust_norm_bound=1.0),
}


def _time_rounds(process, state, datasets, rounds):
    state = process.next(state, datasets).state  # warm-up: compiles and starts workers
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        state = process.next(state, datasets).state
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _measure(task, datasets, aggregation, rounds, force_test_runtime=False):
    cfg = config.from_values(
        dict(
            aggregation,
            client_epochs=1,
            rounds=rounds + 1,
            clients_per_round=FLAGS.clients_per_round,
            runtime="cpp",
        )
    )
    with compat.quiet_tensorflow_errors():
        process, _ = assembly.build_learning_process(task, cfg, task.train_data.client_ids)
    secure = runtime.uses_secure_sum(process.next)
    test_runtime = secure or force_test_runtime
    with runtime.test_runtime() if test_runtime else contextlib.nullcontext():
        state = process.set_model_weights(process.initialize(), builder.initial_model_weights(task, 0))
        seconds = _time_rounds(process, state, datasets, rounds)
    return seconds, "test" if test_runtime else "default"


def main(argv):
    del argv
    processes.install_worker_reaper()
    task = tasks.create_task("digits", {}, seed=0)
    ids = sampling.sample_clients(list(task.train_data.client_ids), FLAGS.clients_per_round, seed=0, round_num=1)
    spec = tasks.ClientSpec(num_epochs=1, batch_size=20)
    datasets = [task.client_dataset(cid, spec, seed=i) for i, cid in enumerate(ids)]
    print(
        f"digits CNN, {FLAGS.clients_per_round} clients x 1 local epoch, median of "
        f"{FLAGS.rounds} rounds after a warm-up round",
        flush=True,
    )
    results = {}
    for name, aggregation in STACKS.items():
        results[name] = _measure(task, datasets, aggregation, FLAGS.rounds)
        print(f"  measured {name}: {results[name][0]:.3f} s/round", file=sys.stderr, flush=True)
    results["mean (no zeroing), test runtime"] = _measure(
        task, datasets, STACKS["mean (no zeroing)"], FLAGS.rounds, force_test_runtime=True
    )
    base = results["mean (no zeroing)"][0]
    print(f"{'stack':34s} {'runtime':8s} {'s/round':>8s} {'x plain mean':>13s}")
    for name, (seconds, runtime_name) in results.items():
        print(f"{name:34s} {runtime_name:8s} {seconds:8.3f} {seconds / base:13.2f}")
    processes.exit_now(0)


if __name__ == "__main__":
    app.run(main)
