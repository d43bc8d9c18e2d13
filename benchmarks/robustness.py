"""Which defence holds against which attack: held-out accuracy (and backdoor success).

One row per defence (the plain mean included), one column per attack (none
included); each cell trains `digits` from scratch with `--attack_fraction`
attackers and reports the mean over seeds of the final held-out accuracy,
with the backdoor's success rate for the backdoor column. Everything runs in
this process, on the task built once per seed; each run writes its folder
under --root_dir as the launcher would.

  uv run python benchmarks/robustness.py                       # the README's table
  uv run python benchmarks/robustness.py --rounds=3 --seeds=1 --defences=none,median --attacks=none,backdoor

A rerun with the same --root_dir skips the cells it finished (each run
leaves `benchmark_final_eval.json` in its folder), so an interrupted table
carries on where it stopped.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags

from tffpipe import compat
from tffpipe import config
from tffpipe.aggregation import robust
from tffpipe.attacks import registry as attack_registry
from tffpipe.program import files
from tffpipe.program import loop
from tffpipe.runtimes import processes

from tffpipe_tasks import digits

flags.DEFINE_integer("rounds", 50, "Rounds per run.")
flags.DEFINE_integer("clients_per_round", 20, "Clients per round.")
flags.DEFINE_integer("seeds", 2, "Seeds per cell (0, 1, ...); the table gives their mean.")
flags.DEFINE_float("attack_fraction", 0.2, "Share of the training clients that attack.")
flags.DEFINE_list("defences", ["none", *robust.DEFENCES[1:], "norm_bound"], "Rows: --robust values, or norm_bound.")
flags.DEFINE_list("attacks", ["none", *attack_registry.ATTACKS], "Columns: --attack values.")
flags.DEFINE_string("root_dir", os.path.join(tempfile.gettempdir(), "tffpipe_robustness"), "Where runs write.")
FLAGS = flags.FLAGS

NORM_BOUND = 1.0  # --robust_norm_bound of the norm_bound row
NUM_BYZANTINE = 4  # f for Krum, Multi-Krum and Bulyan: 20% of 20 clients (Bulyan: 4f + 3 <= 20)


def _flags(defence: str, attack: str, seed: int) -> dict:
    values = dict(
        rounds=FLAGS.rounds,
        clients_per_round=FLAGS.clients_per_round,
        seed=seed,
        eval_every=0,
        checkpoint_every=FLAGS.rounds,
        client_weighting="uniform",
        root_dir=FLAGS.root_dir,
        experiment_name=f"{defence}-{attack}-{seed}",
        runtime="auto",
    )
    if defence == "norm_bound":
        values["robust_norm_bound"] = NORM_BOUND
    elif defence != "none":
        values["robust"] = defence
        if defence in ("krum", "multi_krum", "bulyan"):
            values["robust_num_byzantine"] = NUM_BYZANTINE
    if attack != "none":
        values.update(attack=attack, attack_fraction=FLAGS.attack_fraction)
    return values


def _finished_path(cfg) -> str:
    return os.path.join(cfg.output.run_dir, "benchmark_final_eval.json")


def _finished(cfg) -> dict | None:
    """The held-out metrics of a run this benchmark finished before (a rerun skips it)."""
    try:
        with open(_finished_path(cfg)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def main(argv):
    del argv
    processes.install_worker_reaper()
    compat.quiet_library_logs()
    cells: dict[tuple[str, str], list[dict]] = {}
    started = time.monotonic()
    for seed in range(FLAGS.seeds):
        task = digits.create_task(seed=seed)
        for defence in FLAGS.defences:
            for attack in FLAGS.attacks:
                cfg = config.from_values(_flags(defence, attack, seed))
                run_start = time.monotonic()
                final_eval = _finished(cfg)
                if final_eval is None:
                    final_eval = loop.run(cfg, task, print_fn=lambda line: None).final_eval
                    files.write_json_atomic(_finished_path(cfg), final_eval)
                cells.setdefault((defence, attack), []).append(final_eval)
                print(
                    f"seed {seed} {defence:>16} x {attack:<10} accuracy "
                    f"{final_eval['eval/accuracy']:.3f}"
                    + (
                        f", backdoor {final_eval['eval/backdoor_success']:.3f}"
                        if "eval/backdoor_success" in final_eval
                        else ""
                    )
                    + f"  ({time.monotonic() - run_start:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )

    print(
        f"\nheld-out accuracy after {FLAGS.rounds} rounds, {FLAGS.clients_per_round} clients a "
        f"round, {FLAGS.attack_fraction:.0%} attackers, mean of {FLAGS.seeds} seed(s)"
        + ("; backdoor: accuracy / backdoor success" if "backdoor" in FLAGS.attacks else "")
    )
    print("| defence | " + " | ".join(FLAGS.attacks) + " |")
    print("|---|" + "---|" * len(FLAGS.attacks))
    for defence in FLAGS.defences:
        row = []
        for attack in FLAGS.attacks:
            evals = cells[(defence, attack)]
            accuracy = statistics.mean(e["eval/accuracy"] for e in evals)
            text = f"{accuracy:.3f}"
            if attack == "backdoor":
                text += f" / {statistics.mean(e['eval/backdoor_success'] for e in evals):.3f}"
            row.append(text)
        name = "mean" if defence == "none" else defence
        print(f"| {name} | " + " | ".join(row) + " |")
    print(f"\n({time.monotonic() - started:.0f} s in all)")


if __name__ == "__main__":
    app.run(main)
