"""Checkpoint save time: tffpipe's arrays format against TFF's SavedModel format, same state.

The state is the learning state of a digits run (FedAvg, its CNN and the
server optimizer's slots), as the program loop saves it. Each format writes
`--saves` versions into a fresh folder (the arrays format through
`checkpoints.CheckpointManager`, fsyncs included; the SavedModel format
through `tff.program.FileProgramStateManager`, which earlier runs used);
the script prints the median milliseconds per save of each, side by side,
and the time to read the newest version back.

  uv run python benchmarks/checkpoint_save.py
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import asyncio
import json
import statistics
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow_federated as tff

from tffpipe import compat
from tffpipe import config
from tffpipe.config import components
from tffpipe.learning import builder
from tffpipe.program import assembly
from tffpipe.program import checkpoints
from tffpipe.runtimes import processes
from tffpipe.runtimes import registry as runtime_registry
from tffpipe_tasks import digits

flags.DEFINE_integer("saves", 20, "Versions each format writes.")
FLAGS = flags.FLAGS


def _learning_state():
    task = digits.create_task(num_clients=50, eval_clients=18, alpha=100.0, seed=0)
    cfg = config.from_values({"task": "digits", "server_optimizer": "adam", "runtime": "inprocess"})
    runtime = runtime_registry.get("inprocess")
    process, _ = assembly.build_learning_process(
        task, cfg, list(task.train_data.client_ids), runtime.loop_implementation()
    )
    engine = runtime.wrap(process, components.runtime_context(cfg), lambda line: None)
    try:
        return engine.set_model_weights(engine.initialize(), builder.initial_model_weights(task, 0))
    finally:
        engine.close()


def _median_ms(timings: list[float]) -> float:
    return 1000 * statistics.median(timings)


def main(argv):
    del argv
    state = _learning_state()
    leaves = compat.structure_utils.flatten(state)
    parameters = sum(int(np.size(leaf)) for leaf in leaves)
    fingerprint = {"task": "digits"}
    root = tempfile.mkdtemp(prefix="tffpipe_checkpoint_save_")

    arrays = checkpoints.CheckpointManager(os.path.join(root, "arrays"), keep=3, fingerprint=fingerprint)
    os.makedirs(os.path.join(root, "arrays"), exist_ok=True)
    array_saves = []
    for n in range(1, FLAGS.saves + 1):
        started = time.perf_counter()
        arrays.save(checkpoints.ProgramState(n, state))
        array_saves.append(time.perf_counter() - started)
    started = time.perf_counter()
    arrays.restore(state)
    array_read = time.perf_counter() - started

    saved_model = tff.program.FileProgramStateManager(
        os.path.join(root, "saved_model"), prefix="program_state_", keep_total=3
    )
    value = {"round_num": 0, "fingerprint": json.dumps(fingerprint), "learning_state": state}
    model_saves = []
    for n in range(1, FLAGS.saves + 1):
        started = time.perf_counter()
        asyncio.run(saved_model.save({**value, "round_num": n}, n))
        model_saves.append(time.perf_counter() - started)
    started = time.perf_counter()
    asyncio.run(saved_model.load(FLAGS.saves, {**value, "round_num": 0}))
    model_read = time.perf_counter() - started

    print(f"digits learning state: {len(leaves)} arrays, {parameters:,} values; median of {FLAGS.saves} saves")
    print(f"{'format':<24} {'save ms':>8} {'read ms':>8}")
    print(f"{'arrays (tffpipe)':<24} {_median_ms(array_saves):>8.1f} {1000 * array_read:>8.1f}")
    print(f"{'SavedModel (TFF)':<24} {_median_ms(model_saves):>8.1f} {1000 * model_read:>8.1f}")
    processes.exit_now(0)


if __name__ == "__main__":
    app.run(main)
