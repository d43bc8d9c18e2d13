"""The cost of per-client evaluation and of personalization evaluation.

Times, for `digits` (and the runtimes given), one held-out evaluation as
before per-client figures existed (all evaluation clients in one federated
call), one as every run now does it (that call, then one call per client),
and one personalization evaluation (per client: split, measure, fine-tune
one epoch, measure again). Median of `--repeats` after a warm-up call.

  uv run python benchmarks/client_eval.py --eval_clients=10 --repeats=5
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import statistics
import time

from absl import app
from absl import flags

from tffpipe import compat
from tffpipe import config
from tffpipe import tasks
from tffpipe.learning import builder
from tffpipe.program import evaluation
from tffpipe.program import personalization
from tffpipe.runtimes import processes

flags.DEFINE_integer("eval_clients", 10, "Held-out digits clients evaluated.")
flags.DEFINE_integer("repeats", 5, "Timed calls of each kind (after one warm-up call).")
flags.DEFINE_list("runtimes", ["inprocess", "cpp"], "Runtimes to time.")
FLAGS = flags.FLAGS


def _median_seconds(call, repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _measure(runtime: str, task, weights) -> tuple[float, float, float]:
    """Median seconds of evaluation before, with per-client figures, and of personalization."""
    cfg = config.from_values({"runtime": runtime, "eval_clients": 0, "personalize_every": 1})
    evaluator = evaluation.Evaluator(task, cfg, lambda line: None)
    personalizer = personalization.Personalizer(task, cfg, evaluator, lambda line: None)

    def federated_only():
        datasets = [task.eval_dataset(cid, cfg.schedule.eval_batch_size) for cid in evaluator.client_ids]
        evaluator.evaluate(weights, datasets)

    before = _median_seconds(federated_only, FLAGS.repeats)
    now = _median_seconds(lambda: evaluator(weights), FLAGS.repeats)
    personalized = _median_seconds(lambda: personalizer(weights), FLAGS.repeats)
    return before, now, personalized


def main(argv):
    del argv
    processes.install_worker_reaper()
    compat.quiet_library_logs()
    options = {"eval_clients": FLAGS.eval_clients, "num_clients": 5 * FLAGS.eval_clients}
    task = tasks.create_task("digits", options, seed=0)
    weights = builder.initial_model_weights(task, seed=0)
    print(f"digits, {FLAGS.eval_clients} evaluation clients, median of {FLAGS.repeats} calls\n")
    print("| runtime | evaluation as before | with per-client figures | ratio | personalization (1 epoch) |")
    print("|---|---|---|---|---|")
    for runtime in FLAGS.runtimes:
        before, now, personalized = _measure(runtime, task, weights)
        print(f"| {runtime} | {before:.3f} s | {now:.3f} s | {now / before:.1f}x | {personalized:.3f} s |", flush=True)
    processes.exit_now(0)


if __name__ == "__main__":
    app.run(main)
