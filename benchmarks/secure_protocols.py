"""Secure-sum protocols side by side: plain sums, pairwise masking and CKKS encryption.

Each workload is trained three times through `python -m tffpipe.train`, as a
user would, on the in-process runtime with the same seed and settings:
  plain    no secure aggregation (TFF's adaptive clipping and plain mean);
  masking  `--secure_aggregation` (pairwise masks, the default protocol);
  ckks     `--secure_aggregation --secure_protocol=ckks` (128-bit preset).
Workloads: `digits` (the quick start's task: 40 clients, 10 a round, about
85,000 parameters) and the EMNIST CNN of `tasks/emnist.py` (`cnn_dropout`,
1.2 million parameters) on synthetic EMNIST-shaped data (random pixels and
labels, so its accuracy is chance: it is there for the cost, written once to
`--data_root`). For each run the script prints the median wall seconds per
round (`round_time_sec` of the rounds between the first and the last, which
carry start-up and the evaluation), the bytes each client uploads per round
(`comm/upload_bytes_per_client`), and the held-out accuracy after the last
round. Masking and CKKS sum the same integers exactly, so their accuracies
match; plain differs only by the secure sum's quantisation.

  uv run python benchmarks/secure_protocols.py
  uv run python benchmarks/secure_protocols.py --workloads=digits --digits_rounds=5
"""

import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

flags.DEFINE_list("workloads", ["digits", "emnist"], "Which of digits and emnist to measure.")
flags.DEFINE_integer("digits_rounds", 10, "Rounds of each digits run.")
flags.DEFINE_integer("emnist_rounds", 4, "Rounds of each EMNIST run.")
flags.DEFINE_integer("emnist_clients", 100, "Synthetic EMNIST clients (20 examples each); 10 train a round.")
flags.DEFINE_string(
    "data_root",
    os.path.join(tempfile.gettempdir(), "tffpipe_secure_protocols"),
    "Where the synthetic EMNIST data is written once and reused.",
)
FLAGS = flags.FLAGS

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTOCOLS = {
    "plain": [],
    "masking": ["--secure_aggregation"],
    "ckks": ["--secure_aggregation", "--secure_protocol=ckks"],
}


def _emnist_data() -> str:
    from tffpipe_tasks import emnist

    folder = os.path.join(FLAGS.data_root, f"emnist_{FLAGS.emnist_clients}x20")
    done = os.path.join(folder, "complete")
    if not os.path.exists(done):
        os.makedirs(folder, exist_ok=True)
        emnist.write_synthetic_data(folder, num_clients=FLAGS.emnist_clients, examples_per_client=20)
        open(done, "w").close()
    return folder


def _workload_args(name: str) -> list[str]:
    if name == "digits":
        return ["--task=digits", f"--rounds={FLAGS.digits_rounds}"]
    return [
        "--task=emnist",
        "--emnist_model=cnn_dropout",
        f"--data_dir={_emnist_data()}",
        f"--rounds={FLAGS.emnist_rounds}",
        "--clients_per_round=10",
        "--eval_clients=20",
    ]


def _run(workload: str, protocol: str, root: str) -> dict[str, float]:
    args = [
        sys.executable,
        "-m",
        "tffpipe.train",
        *_workload_args(workload),
        *PROTOCOLS[protocol],
        "--runtime=inprocess",
        "--eval_every=0",
        "--seed=0",
        f"--root_dir={root}",
        f"--experiment_name={workload}_{protocol}",
    ]
    started = time.monotonic()
    proc = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise SystemExit(f"{workload} {protocol} failed: {proc.stderr.strip().splitlines()[-1]}")
    with open(os.path.join(root, f"{workload}_{protocol}", "results", "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    middle = rows[1:-1] or rows
    return {
        "sec_per_round": statistics.median(float(r["round_time_sec"]) for r in middle),
        "upload_bytes": float(rows[-1]["comm/upload_bytes_per_client"]),
        "accuracy": float(rows[-1]["eval/accuracy"]),
        "rounds": len(rows),
        "wall": time.monotonic() - started,
    }


def main(argv):
    del argv
    root = tempfile.mkdtemp(prefix="tffpipe_secure_protocols_runs_")
    results = {}
    for workload in FLAGS.workloads:
        for protocol in PROTOCOLS:
            results[workload, protocol] = r = _run(workload, protocol, root)
            print(
                f"measured {workload} {protocol}: {r['sec_per_round']:.3f} s/round, "
                f"{r['upload_bytes'] / 1e6:.2f} MB uploaded per client, accuracy {r['accuracy']:.4f} after "
                f"{r['rounds']} rounds ({r['wall']:.0f} s in all)",
                flush=True,
            )
    print()
    print(
        f"{'workload':<8} {'protocol':<8} {'s/round':>8} {'upload/client':>14} {'x plain':>8} "
        f"{'accuracy':>9} {'rounds':>6}"
    )
    for (workload, protocol), r in results.items():
        plain = results[workload, "plain"]["upload_bytes"]
        print(
            f"{workload:<8} {protocol:<8} {r['sec_per_round']:>8.3f} {r['upload_bytes'] / 1e6:>11.2f} MB "
            f"{r['upload_bytes'] / plain:>8.1f} {r['accuracy']:>9.4f} {r['rounds']:>6}"
        )


if __name__ == "__main__":
    app.run(main)
