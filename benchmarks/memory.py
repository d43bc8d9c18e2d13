"""Memory of a training run stays flat across rounds and does not grow with the population.

Writes a synthetic EMNIST-shaped dataset (28x28 images, 62 classes, the real
`emnist_all.sqlite` format) once with 3,400 clients and once with 340 (kept
in `--data_root` and reused by later runs), then runs `python -m
tffpipe.train --task=emnist` on each for 50 rounds of 50 clients, exactly as
a user would (the default runtime, evaluation every 10 rounds). The resident
memory of the launcher and every process it starts is sampled every 0.2 s;
the script prints each run's peak, the memory after rounds 1, 10, 11 and
the last, the growth from round 10 to the last, the range of the memory
after every round from 11 on (the first evaluation is in round 10), and
the ratio of the peaks.

  uv run python benchmarks/memory.py
  uv run python benchmarks/memory.py --rounds=20 --clients=3400,340
"""

import os
import subprocess
import sys
import tempfile
import threading
import time

from absl import app
from absl import flags
from absl import logging

from tffpipe.runtimes import processes

flags.DEFINE_integer("rounds", 50, "Training rounds per run.")
flags.DEFINE_integer("clients_per_round", 50, "Clients sampled per round.")
flags.DEFINE_list("clients", ["3400", "340"], "Total clients of each run.")
flags.DEFINE_integer("examples_per_client", 20, "Training examples per synthetic client.")
flags.DEFINE_string("model", "cnn_dropout", "--emnist_model of the runs.")
flags.DEFINE_string(
    "data_root",
    os.path.join(tempfile.gettempdir(), "tffpipe_memory"),
    "Where the synthetic datasets are written once and reused.",
)
flags.DEFINE_list("train_args", [], "Extra flags for every run, e.g. --train_args=--runtime=cpp.")
FLAGS = flags.FLAGS

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss_bytes(root: int) -> tuple[int, int]:
    """Resident memory of `root` and of all its descendants (the TFF workers)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/statm") as f:
                rss[int(entry)] = int(f.read().split()[1]) * _PAGE
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    descendants, stack = 0, list(children.get(root, []))
    while stack:
        pid = stack.pop()
        descendants += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return rss.get(root, 0), descendants


def _write_data(num_clients: int) -> str:
    from tffpipe_tasks import emnist

    folder = os.path.join(FLAGS.data_root, f"{num_clients}x{FLAGS.examples_per_client}")
    done = os.path.join(folder, "complete")
    if os.path.exists(done):
        print(f"  reusing {folder}", flush=True)
        return folder
    os.makedirs(folder, exist_ok=True)
    start = time.monotonic()
    emnist.write_synthetic_data(folder, num_clients=num_clients, examples_per_client=FLAGS.examples_per_client)
    open(done, "w").close()
    print(f"  wrote {num_clients} synthetic EMNIST clients in {time.monotonic() - start:.0f} s", flush=True)
    return folder


def _measure(num_clients: int) -> dict[str, float]:
    data_dir = _write_data(num_clients)
    args = [
        sys.executable,
        "-m",
        "tffpipe.train",
        "--task=emnist",
        f"--emnist_model={FLAGS.model}",
        f"--data_dir={data_dir}",
        f"--rounds={FLAGS.rounds}",
        f"--clients_per_round={FLAGS.clients_per_round}",
        "--client_epochs=1",
        "--eval_every=10",
        f"--root_dir={tempfile.mkdtemp(prefix='tffpipe_memory_runs_')}",
        *FLAGS.train_args,
    ]
    launcher = subprocess.Popen(
        args,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    samples: list[int] = []
    done = threading.Event()

    def sample():
        while not done.is_set():
            samples.append(sum(_rss_bytes(launcher.pid)))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    at_round: dict[int, int] = {}
    tail = []
    start = time.monotonic()
    for line in launcher.stdout:
        tail = (tail + [line.rstrip()])[-20:]
        if line.startswith("round "):
            round_num = int(line.split()[1].split("/")[0])
            at_round[round_num] = _rss_bytes(launcher.pid)
            if round_num % 10 == 0:
                own, workers = (b / 2**20 for b in at_round[round_num])
                print(
                    f"  {line.strip()[:60]}  launcher {own:.0f} MiB, its processes {workers:.0f} MiB",
                    flush=True,
                )
    code = launcher.wait()
    done.set()
    sampler.join()
    if code != 0:
        raise SystemExit(f"the run with {num_clients} clients failed:\n" + "\n".join(tail))

    def total(r):
        return sum(at_round.get(r, (0, 0))) / 2**20

    return {
        "peak": max(samples) / 2**20,
        "first": total(min(at_round)),
        "r10": total(10),
        "r11": total(11),
        "later": [total(r) for r in at_round if r >= 11],
        "last": total(max(at_round)),
        "launcher_last": at_round[max(at_round)][0] / 2**20,
        "worker_last": at_round[max(at_round)][1] / 2**20,
        "seconds": time.monotonic() - start,
    }


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # TFF's SQLite writer logs every file
    results = {}
    for count in (int(c) for c in FLAGS.clients):
        print(f"{count} clients, {FLAGS.rounds} rounds of {FLAGS.clients_per_round}:", flush=True)
        results[count] = _measure(count)
    print()
    last = f"round {FLAGS.rounds}"
    print("resident MiB, launcher + the processes it starts (last round split as launcher / others)")
    print(
        f"{'clients':>8} {'peak':>6} {'round 1':>8} {'round 10':>9} {'round 11':>9} {last:>9} "
        f"{'growth 10->' + str(FLAGS.rounds):>14} {'range from 11':>14} {'split':>12} {'wall s':>7}"
    )
    for count, r in results.items():
        split = f"{r['launcher_last']:.0f} / {r['worker_last']:.0f}"
        later = f"{min(r['later']):.0f}-{max(r['later']):.0f}" if r["later"] else "-"
        print(
            f"{count:>8} {r['peak']:>6.0f} {r['first']:>8.0f} {r['r10']:>9.0f} {r['r11']:>9.0f} "
            f"{r['last']:>9.0f} {r['last'] - r['r10']:>14.0f} {later:>14} {split:>12} {r['seconds']:>7.0f}"
        )
    counts = list(results)
    if len(counts) >= 2:
        a, b = results[counts[0]], results[counts[1]]
        print(f"peak ratio {counts[0]} / {counts[1]} clients: {a['peak'] / b['peak']:.3f}")
    processes.exit_now(0)


if __name__ == "__main__":
    app.run(main)
