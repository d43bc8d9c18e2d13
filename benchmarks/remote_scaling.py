"""Rounds per second of `--runtime=remote` with 1 and with 2 local TFF workers, over mutual TLS and plaintext.

Starts three worker services on this machine (`python -m tffpipe.worker`
with certificates from `python -m tffpipe.certs`, loopback ports: one for the
1-worker timings, two for the 2-worker ones), builds a
FedAvg process for `digits` with `--clients` clients a round (default 200,
about 7 examples each), and times rounds on one worker and split across
two, through the same `tffpipe.runtimes.remote_context.FailoverContext` the launcher uses.
It does so twice: with the workers sharing the machine's cores, and with
each worker pinned to a core of its own (as if each were a one-core
machine; one TFF worker trains several clients at once and keeps every core
busy, so on a shared machine a second worker has little to add). TFF's
own C++ runtime (`--runtime=cpp`, one local worker, no split) is timed
alongside as the reference. Every figure is the fastest of `--repeats`
timings of `--rounds` rounds, after a warm-up round; the repeats are
interleaved (1, 2, cpp, 1, 2, cpp, ...). Last, the pinned pair is timed
again through three plaintext workers (`--insecure_workers`): the cost of
TLS.

  uv run python benchmarks/remote_scaling.py
  uv run python benchmarks/remote_scaling.py --clients=100 --rounds=3
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import contextlib
import sys
import time

from absl import app
from absl import flags
from tffpipe.compat import context_stack_impl

from tffpipe.program import assembly
from tffpipe import compat
from tffpipe import config
from tffpipe.runtimes import processes
from tffpipe.runtimes import remote_context as remote
from tffpipe.program import sampling
from tffpipe.tasks import ClientSpec
from tffpipe_tasks import digits
import local_workers

flags.DEFINE_integer("clients", 200, "Clients per round.")
flags.DEFINE_integer("rounds", 2, "Rounds per timing.")
flags.DEFINE_integer("repeats", 3, "Timed repetitions after the warm-up; the fastest is reported.")
FLAGS = flags.FLAGS

_SPEC = ClientSpec(num_epochs=1, batch_size=20)


def _round_data(task, round_num):
    ids = sampling.sample_clients(list(task.train_data.client_ids), FLAGS.clients, seed=0, round_num=round_num)
    return [task.client_dataset(cid, _SPEC, seed=sampling.client_seed(0, round_num, i)) for i, cid in enumerate(ids)]


def _rounds_per_sec(process, state, data) -> float:
    start = time.perf_counter()
    for round_data in data:
        state = process.next(state, round_data).state
    return len(data) / (time.perf_counter() - start)


def _installed(context):
    """Installs a TFF context for the body; None keeps TFF's default one."""
    if context is None:
        return contextlib.nullcontext()
    return context_stack_impl.context_stack.install(context)


def main(argv):
    del argv
    processes.install_worker_reaper()
    compat.quiet_library_logs()
    task = digits.create_task(num_clients=FLAGS.clients + 50, eval_clients=10, seed=0)
    cfg = config.from_values(dict(clients_per_round=FLAGS.clients, runtime="cpp"))
    with compat.quiet_tensorflow_errors():
        process, _ = assembly.build_learning_process(task, cfg, task.train_data.client_ids)
    data = [_round_data(task, r) for r in range(1, FLAGS.rounds + 1)]
    examples = sum(sum(1 for _ in ds.unbatch()) for ds in data[0])
    print(
        f"digits, {FLAGS.clients} clients a round ({examples:,} examples in round 1), "
        f"{FLAGS.rounds} rounds a timing, fastest of {FLAGS.repeats}, {os.cpu_count()} cores",
        flush=True,
    )

    # Three workers: one for the 1-worker timings, two for the 2-worker
    # ones. A TFF worker that also holds another context's executors ran the
    # same round about 1.5 times slower (6.7 vs 4.6 s), so no worker is
    # shared between the configurations compared.
    tls_dir, credentials = local_workers.certificates()
    all_cores = sorted(os.sched_getaffinity(0))
    shared = pinned = plaintext = None
    for transport in ("tls", "plaintext"):
        started = [local_workers.start(tls_dir if transport == "tls" else None) for _ in range(3)]
        services, addresses = [p for p, _ in started], [a for _, a in started]
        one, two = addresses[:1], addresses[1:]
        creds = credentials if transport == "tls" else None
        try:
            if transport == "tls":
                shared = _measure(
                    process,
                    data,
                    {
                        "1 worker": remote.FailoverContext(one, 30, print, creds),
                        "2 workers": remote.FailoverContext(two, 30, print, creds),
                        "cpp": None,  # TFF's default local context: the reference
                    },
                    "shared cores",
                )
            if len(all_cores) >= 2:
                # One core per worker, as if each were a one-core machine.
                local_workers.pin(services[0], {all_cores[0]})
                local_workers.pin(services[1], {all_cores[0]})
                local_workers.pin(services[2], {all_cores[1]})
                best = _measure(
                    process,
                    data,
                    {
                        "1 worker": remote.FailoverContext(one, 30, print, creds),
                        "2 workers": remote.FailoverContext(two, 30, print, creds),
                    },
                    f"one core per worker, {transport}",
                )
                if transport == "tls":
                    pinned = best
                else:
                    plaintext = best
        finally:
            for service in services:
                local_workers.stop(service)

    print(f"{'workers':50s} {'rounds/s':>9s} {'s/round':>8s}")
    for label, best in (
        ("sharing the machine's cores, TLS", shared),
        ("one core each, TLS", pinned),
        ("one core each, plaintext", plaintext),
    ):
        if best is None:
            continue
        for name in ("1 worker", "2 workers"):
            print(f"{name + ', ' + label:50s} {best[name]:9.3f} {1 / best[name]:8.2f}")
        print(f"  2 workers / 1 worker: {best['2 workers'] / best['1 worker']:.2f}")
    if pinned and plaintext:
        print(
            f"  TLS / plaintext time per round, 2 workers one core each: "
            f"{plaintext['2 workers'] / pinned['2 workers']:.2f}"
        )
    print(f"{'cpp runtime (reference)':50s} {shared['cpp']:9.3f} {1 / shared['cpp']:8.2f}")


def _measure(process, data, contexts, label) -> dict[str, float]:
    """The fastest rounds per second of each context over interleaved repeats."""
    states, best = {}, {name: 0.0 for name in contexts}
    for repeat in range(FLAGS.repeats + 1):
        for name, context in contexts.items():
            with _installed(context):
                if name not in states:  # warm-up: compile, first round
                    states[name] = process.initialize()
                    process.next(states[name], data[0])
                    continue
                rate = _rounds_per_sec(process, states[name], data)
            best[name] = max(best[name], rate)
            print(f"  {label}, repeat {repeat}: {name} {rate:.3f} rounds/s", file=sys.stderr, flush=True)
    return best


if __name__ == "__main__":
    app.run(main)
