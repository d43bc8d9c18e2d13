"""Releasing a round's records as a run grows: metrics.csv appended against rewritten each round.

A `MetricsLog` (what every run writes: the metrics.csv row, one TensorBoard
event of the round's scalars) releases `--metrics` scalars for `--rounds`
rounds, twice: with the CSV appended (`appended_csv.AppendedCsv`) and with
it rewritten whole each round (`tff.program.CSVFileReleaseManager` in write
mode, as tffpipe released it before). Prints
the median milliseconds per release in bands of rounds, side by side, and
the total seconds.

  uv run python benchmarks/records_release.py
  uv run python benchmarks/records_release.py --rounds=500
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import asyncio
import statistics
import tempfile
import time

from absl import app
from absl import flags
import tensorflow_federated as tff

from tffpipe.program import outputs

flags.DEFINE_integer("rounds", 1500, "Rounds released by each writer.")
flags.DEFINE_integer("metrics", 27, "Scalars per round (a digits run with the clock records 27).")
flags.DEFINE_integer("band", 250, "Rounds per line of the table.")
FLAGS = flags.FLAGS


class _TffCsv:
    """TFF's CSV release manager in write mode, as `MetricsLog` used it."""

    def __init__(self, path: str):
        self._manager = tff.program.CSVFileReleaseManager(
            path, save_mode=tff.program.CSVSaveMode.WRITE, key_fieldname=outputs.ROUND_KEY
        )

    def release(self, values, key: int) -> None:
        asyncio.run(self._manager.release(dict(values), key))


def _release_times(rewrite: bool) -> list[float]:
    paths = outputs.RunPaths(tempfile.mkdtemp(prefix="tffpipe_records_"))
    log = outputs.MetricsLog(paths)
    if rewrite:
        log._csv = _TffCsv(paths.metrics_csv)
    metrics = {f"train/metric_{i}": float(i) / 7 for i in range(FLAGS.metrics)}
    times = []
    for round_num in range(1, FLAGS.rounds + 1):
        started = time.perf_counter()
        log.release(metrics, round_num)
        times.append(time.perf_counter() - started)
    log.close()
    return times


def main(argv):
    del argv
    appended = _release_times(rewrite=False)
    rewritten = _release_times(rewrite=True)
    print(f"{FLAGS.metrics} scalars a round; median ms per release (CSV row and TensorBoard event)")
    print(f"{'rounds':>11} {'appended':>9} {'rewritten':>10}")
    for start in range(0, FLAGS.rounds, FLAGS.band):
        end = min(start + FLAGS.band, FLAGS.rounds)
        a = 1000 * statistics.median(appended[start:end])
        w = 1000 * statistics.median(rewritten[start:end])
        print(f"{start + 1:>5}-{end:<5} {a:>9.2f} {w:>10.2f}")
    print(f"{'total s':>11} {sum(appended):>9.1f} {sum(rewritten):>10.1f}")


if __name__ == "__main__":
    app.run(main)
