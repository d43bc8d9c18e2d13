"""Training throughput: Keras `fit`, TFF's C++ runtime and the in-process runtime.

For each model, the same 5,000 examples (50 clients x 100) are trained for
one epoch with the same batch size: (a) centrally with Keras `model.fit`,
(b) as one FedAvg round of 50 clients on `--runtime=cpp`, (c) as the same
round on `--runtime=inprocess` (once per `--parallel_clients` value). Every
figure is the fastest of `--repeats` timings after a warm-up, in examples per
second, all measured in this one run; the repeats are interleaved (a, b, c,
a, b, c, ...). The fastest, not the median: on the shared virtual machine
where these figures were taken, some timings of the very same work stall by
about 5 s (Keras fit of the EMNIST model: 960 then 489 examples/s), which a
median of a few repeats does not remove.

  uv run python benchmarks/runtime_throughput.py
  uv run python benchmarks/runtime_throughput.py --models=emnist --parallel_clients=1,2,4
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import sys
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf
from tffpipe.compat import emnist_models

from tffpipe.program import assembly
from tffpipe import compat
from tffpipe import config
from tffpipe.runtimes import devices
from tffpipe.runtimes import inprocess_process as inprocess
from tffpipe.runtimes import registry as runtime_registry
from tffpipe.runtimes import memory
from tffpipe.runtimes import processes
from tffpipe import tasks as tasks_lib
from tffpipe_tasks import digits

flags.DEFINE_list("models", ["digits", "emnist"], "Models to measure: digits, emnist.")
flags.DEFINE_integer("clients", 50, "Clients per round.")
flags.DEFINE_integer("examples_per_client", 100, "Examples per client.")
flags.DEFINE_integer("batch_size", 20, "Batch size, for every runtime.")
flags.DEFINE_integer("repeats", 5, "Timed repetitions after the warm-up; the fastest is reported.")
flags.DEFINE_list("parallel_clients", ["1", "2", "4"], "--parallel_clients values to measure inprocess with.")
FLAGS = flags.FLAGS

_LEARNING_RATE = 0.02


def _arrays(model: str, n: int, rng: np.random.Generator):
    if model == "digits":
        x, y = digits.load_arrays()
        pick = rng.integers(0, len(x), n)
        return x[pick], y[pick], digits.build_cnn, True
    if model == "emnist":
        x = rng.random((n, 28, 28, 1), dtype=np.float32)
        y = rng.integers(0, 62, n).astype(np.int32)
        return x, y, lambda: emnist_models.create_conv_dropout_model(only_digits=False), False
    raise app.UsageError(f"unknown model {model!r}; use digits or emnist")


def _task(model: str):
    """A task with `clients` training clients of exactly `examples_per_client` examples."""
    num_clients = FLAGS.clients + 1  # one held out, as from_arrays needs
    x, y, model_fn, logits = _arrays(model, num_clients * FLAGS.examples_per_client, np.random.default_rng(0))
    task = tasks_lib.from_arrays(
        f"{model}-benchmark",
        x,
        y,
        model_fn,
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=logits),
        metrics=["accuracy"],
        num_clients=num_clients,
        partition="iid",
        eval_fraction=1 / num_clients,
        seed=0,
    )
    return task, x, y


def _interleaved_fastest(fns: dict, repeats: int) -> dict:
    """Fastest seconds of each function, timed in turns after one warm-up each."""
    for fn in fns.values():
        fn()  # warm-up: tracing, worker start
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def _keras_fit(task, x, y):
    model = task.model_builder()
    model.compile(
        optimizer=tf.keras.optimizers.SGD(_LEARNING_RATE),
        loss=task.loss_builder(),
        metrics=task.metrics_builder(),
    )
    n = FLAGS.clients * FLAGS.examples_per_client
    data = tf.data.Dataset.from_tensor_slices((x[:n], y[:n])).batch(FLAGS.batch_size).prefetch(2)
    return lambda: model.fit(data, epochs=1, verbose=0)


def _round_fn(process, task, runtime_name):
    cfg = config.from_values(
        dict(
            runtime=runtime_name,
            client_epochs=1,
            client_batch_size=FLAGS.batch_size,
            client_shuffle_buffer=0,
            client_optimizer="sgd",
            client_learning_rate=_LEARNING_RATE,
            zeroing=False,
        )
    )
    loop_implementation = runtime_registry.get(runtime_name).loop_implementation()
    with compat.quiet_tensorflow_errors():
        learning, _ = assembly.build_learning_process(task, cfg, task.train_data.client_ids, loop_implementation)
    runner = learning if process is None else process(learning)
    state = runner.initialize()
    spec = tasks_lib.ClientSpec(num_epochs=1, batch_size=FLAGS.batch_size)
    ids = list(task.train_data.client_ids)[: FLAGS.clients]

    def one_round():
        datasets = [task.client_dataset(cid, spec, seed=i) for i, cid in enumerate(ids)]
        runner.next(state, datasets)

    return one_round, runner


def main(argv):
    del argv
    processes.install_worker_reaper()
    memory.limit_arenas_in_this_process()
    examples = FLAGS.clients * FLAGS.examples_per_client
    print(
        f"{FLAGS.clients} clients x {FLAGS.examples_per_client} examples, batch "
        f"{FLAGS.batch_size}, 1 local epoch, FedAvg; fastest of {FLAGS.repeats} after a "
        f"warm-up; {os.cpu_count()} CPU(s), {devices.describe()}",
        flush=True,
    )
    rows = []
    for model in FLAGS.models:
        task, x, y = _task(model)
        fns = {}
        fns["cpp"], _ = _round_fn(None, task, "cpp")
        runners = []
        for k in FLAGS.parallel_clients:
            settings = config.from_values(dict(runtime="inprocess", parallel_clients=int(k))).runtime.inprocess
            fns[k], runner = _round_fn(
                lambda p, s=settings: inprocess.InProcessProcess(p, devices.client_slots(s), prefetch=False),
                task,
                "inprocess",
            )
            runners.append(runner)
        # Last: building TFF processes makes Keras models in graph mode, which
        # invalidates Keras models made before them.
        fns = {"fit": _keras_fit(task, x, y), **fns}
        rates = {name: examples / seconds for name, seconds in _interleaved_fastest(fns, FLAGS.repeats).items()}
        for runner in runners:
            runner.close()
        a, b = rates["fit"], rates["cpp"]
        print(f"  {model}: keras fit {a:,.0f}, cpp {b:,.0f} examples/s", file=sys.stderr, flush=True)
        for k in FLAGS.parallel_clients:
            print(f"  {model}: inprocess x{k} {rates[k]:,.0f} examples/s", file=sys.stderr, flush=True)
            rows.append((model, int(k), a, b, rates[k]))
    print(
        f"{'model':8s} {'slots':>5s} {'(a) fit':>9s} {'(b) cpp':>9s} {'(c) inproc':>10s} "
        f"{'b/a':>6s} {'c/a':>6s} {'c/b':>6s}   (examples/s)"
    )
    for model, k, a, b, c in rows:
        print(f"{model:8s} {k:5d} {a:9,.0f} {b:9,.0f} {c:10,.0f} {b / a:6.2f} {c / a:6.2f} {c / b:6.2f}")
    processes.exit_now(0)


if __name__ == "__main__":
    app.run(main)
