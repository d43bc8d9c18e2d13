"""Simulated time to reach a held-out accuracy, for synchronous rounds under a device population.

`digits` with a lognormal device population (speed and both bandwidths
lognormal with sigma `--sigma` around the medians below) and
`--client_dropout` 10%. For each configuration and seed the run evaluates
after every round and reports the simulated seconds (`sim/elapsed_sec`) at
the first round whose held-out accuracy reaches `--target`; the table gives
the mean over the seeds (and how many seeds reached it within `--rounds`).

  uv run python benchmarks/clock.py --seeds=0,1,2 --rounds=60

A FedBuff round is one server update of `--async_buffer_size` (5) arrivals,
half a synchronous round's 10 updates, so it gets twice the rounds.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import statistics
import tempfile
import time

from absl import app
from absl import flags
import pandas

# TensorFlow loaded before `app.run`: first imported inside it, Keras builds
# Sequential models wrongly (see tffpipe/train.py).
import tensorflow as tf  # noqa: F401

import tffpipe
from tffpipe import compat
from tffpipe.runtimes import processes

flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; figures are means over them.")
flags.DEFINE_integer("rounds", 60, "Most rounds per run.")
flags.DEFINE_float("target", 0.9, "Held-out accuracy to reach.")
flags.DEFINE_float("sigma", 1.0, "Lognormal sigma of the device population.")
flags.DEFINE_float("deadline", 4.0, "--round_deadline_sec of the deadline row.")
FLAGS = flags.FLAGS

# Medians: 50 examples/s (a phone training a small CNN), 1 MB/s down, 0.25 MB/s up.
POPULATION = "speed lognormal:50,{s}; downlink lognormal:1e6,{s}; uplink lognormal:2.5e5,{s}; dropout 0.1"


def configurations():
    return {
        "synchronous FedAvg, no deadline": {},
        f"deadline {FLAGS.deadline:g} s": {"round_deadline_sec": FLAGS.deadline},
        "over-selection 1.3": {"over_selection": 1.3},
        "8-bit compression of uploads": {"compression": "uniform_quantization", "compression_bits": 8},
        "FedBuff, 10 training at once, buffer 5": {
            "algorithm": "fedbuff",
            "async_concurrency": 10,
            "async_buffer_size": 5,
            "zeroing": False,
        },
    }


def _rows(result):
    # Rounds without a value (no evaluation that round) hold NaN in the DataFrame: left out, as in the CSV.
    return [{k: v for k, v in row.items() if pandas.notna(v)} for row in result.metrics.to_dict("records")]


def main(argv):
    del argv
    processes.install_worker_reaper()
    compat.quiet_library_logs()
    root = tempfile.mkdtemp(prefix="tffpipe_clock_")
    s = FLAGS.sigma
    population = dict(
        client_speed=f"lognormal:50,{s}",
        client_downlink=f"lognormal:1e6,{s}",
        client_uplink=f"lognormal:2.5e5,{s}",
        client_dropout=0.1,
    )
    print(f"digits, 10 clients a round, devices: {POPULATION.format(s=s)}; seeds {','.join(FLAGS.seeds)}\n")
    print(
        f"| configuration | simulated seconds to {FLAGS.target:.0%} | rounds | seeds reaching it | "
        "simulated seconds per round |"
    )
    print("|---|---|---|---|---|")
    for name, extra in configurations().items():
        reached, rounds, per_round = [], [], []
        start = time.monotonic()
        most = FLAGS.rounds * (2 if extra.get("algorithm") == "fedbuff" else 1)
        for seed in FLAGS.seeds:
            result = tffpipe.run(
                quiet=True,
                task="digits",
                rounds=most,
                eval_every=1,
                seed=int(seed),
                root_dir=root,
                experiment_name=f"{name.replace(' ', '_')}_{seed}",
                **population,
                **extra,
            )
            rows = _rows(result)
            per_round.append(rows[-1]["sim/elapsed_sec"] / len(rows))
            hit = next((r for r in rows if r.get("eval/accuracy", 0) >= FLAGS.target), None)
            if hit is not None:
                reached.append(hit["sim/elapsed_sec"])
                rounds.append(hit["round"])
        seconds = f"{statistics.mean(reached):.1f}" if reached else f"not within {most} rounds"
        mean_rounds = f"{statistics.mean(rounds):.1f}" if rounds else "-"
        print(
            f"| {name} | {seconds} | {mean_rounds} | {len(reached)} of {len(FLAGS.seeds)} | "
            f"{statistics.mean(per_round):.2f} |  ({time.monotonic() - start:.0f} s)",
            flush=True,
        )
    processes.exit_now(0)


if __name__ == "__main__":
    app.run(main)
