"""Who a global model serves, and what personalization gives back, as label skew grows.

For `digits` at Dirichlet alpha 0.1, 0.5 and 100 (near IID), trains FedAvg
with the launcher's defaults and reports, after the last round, the
held-out accuracy over all evaluation clients together, the 10th percentile
of the per-client accuracies, the 10th percentile on the clients' test
halves before and after fine-tuning (`--personalize_every`, 1 epoch at 0.05
on the other half), and Federated Reconstruction's held-out accuracy and
per-client 10th percentile (`--algorithm=fedrecon --local_layers=output
--reconstruction_epochs=20`: each client reconstructs the output layer on
half its examples and is measured on the other half); each a mean over the
seeds.

  uv run python benchmarks/heterogeneity.py --rounds=50 --seeds=0,1,2
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import statistics
import tempfile
import time

from absl import app
from absl import flags

# TensorFlow loaded before `app.run`: first imported inside it, Keras builds
# Sequential models wrongly (see tffpipe/train.py).
import tensorflow as tf  # noqa: F401

import tffpipe
from tffpipe import compat
from tffpipe.runtimes import processes

flags.DEFINE_integer("rounds", 50, "Rounds per run.")
flags.DEFINE_list("alphas", ["0.1", "0.5", "100"], "Dirichlet concentrations.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; figures are means over them.")
flags.DEFINE_integer("num_clients", 60, "digits clients, training and evaluation.")
flags.DEFINE_integer("eval_clients", 20, "Held-out evaluation clients.")
FLAGS = flags.FLAGS

COLUMNS = (
    "eval/accuracy",
    "eval_clients/accuracy_p10",
    "personalized/baseline_accuracy_p10",
    "personalized/accuracy_p10",
)
FEDRECON_COLUMNS = ("eval/accuracy", "eval_clients/accuracy_p10")


def _last_row(result) -> dict:
    return result.metrics.iloc[-1].to_dict()


def main(argv):
    del argv
    processes.install_worker_reaper()
    compat.quiet_library_logs()
    root = tempfile.mkdtemp(prefix="tffpipe_heterogeneity_")
    print(
        f"digits, {FLAGS.num_clients} clients ({FLAGS.eval_clients} held out), {FLAGS.rounds} rounds, "
        f"seeds {','.join(FLAGS.seeds)}\n"
    )
    print(
        "| alpha | held-out accuracy | p10 per-client accuracy | p10 on the test halves | "
        "p10 after personalization | fedrecon held-out accuracy | fedrecon p10 per-client |"
    )
    print("|---|---|---|---|---|---|---|")
    for alpha in FLAGS.alphas:
        figures = {c: [] for c in COLUMNS + tuple("fedrecon " + c for c in FEDRECON_COLUMNS)}
        start = time.monotonic()
        for seed in FLAGS.seeds:
            common = dict(
                quiet=True,
                task="digits",
                digits_alpha=float(alpha),
                digits_num_clients=FLAGS.num_clients,
                digits_eval_clients=FLAGS.eval_clients,
                rounds=FLAGS.rounds,
                eval_every=FLAGS.rounds,
                seed=int(seed),
                root_dir=root,
            )
            last = _last_row(
                tffpipe.run(personalize_every=FLAGS.rounds, experiment_name=f"alpha{alpha}_seed{seed}", **common)
            )
            for column in COLUMNS:
                figures[column].append(float(last[column]))
            last = _last_row(
                tffpipe.run(
                    algorithm="fedrecon",
                    local_layers="output",
                    reconstruction_epochs=20,
                    experiment_name=f"fedrecon_alpha{alpha}_seed{seed}",
                    **common,
                )
            )
            for column in FEDRECON_COLUMNS:
                figures["fedrecon " + column].append(float(last[column]))
        means = [statistics.mean(values) for values in figures.values()]
        print(
            f"| {alpha} | " + " | ".join(f"{m:.3f}" for m in means) + f" |  ({time.monotonic() - start:.0f} s)",
            flush=True,
        )
    processes.exit_now(0)


if __name__ == "__main__":
    app.run(main)
