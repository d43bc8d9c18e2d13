"""Seconds per round of `--runtime=ray` with 1 and 2 actors, against in-process and `--runtime=remote`.

The remote-scaling workload (`benchmarks/remote_scaling.py`): FedAvg on
`digits`, `--clients` clients a round (default 200, about 7 examples each),
batch 20. All in one run, each engine held to one core per unit of
parallelism, as if each were a one-core machine:

  in-process, 1 core   the launcher pinned to one core (`--runtime=inprocess`)
  ray, 1 actor         a private Ray on this machine, one actor pinned to core 0
  ray, 2 actors        two actors pinned to cores 0 and 1
  remote, 1 worker     one TFF worker service (mutual TLS, as the README starts it) pinned to core 0
  remote, 2 workers    two TFF workers pinned to cores 0 and 1

The Ray actors build their clients' datasets themselves (only ids and seeds
cross); remote workers receive every example from the launcher. Each figure
is the fastest of `--repeats` timings of `--rounds` rounds after a warm-up
round. `--skip_remote` leaves the (slow) TFF workers out.

  uv run python benchmarks/ray_scaling.py
  uv run python benchmarks/ray_scaling.py --clients=100 --repeats=2 --skip_remote
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import sys
import time

from absl import app
from absl import flags
from tffpipe.compat import context_stack_impl

from tffpipe import compat
from tffpipe import config
from tffpipe.program import assembly
from tffpipe.program import client_sources
from tffpipe.program import sampling
from tffpipe.runtimes import inprocess_process
from tffpipe.runtimes import processes
from tffpipe.runtimes import ray as ray_runtime
from tffpipe.runtimes import ray_cluster
from tffpipe.runtimes import ray_placement
from tffpipe.runtimes import remote_context as remote
from tffpipe.tasks import ClientSpec
import local_workers
import contextlib

flags.DEFINE_integer("clients", 200, "Clients per round.")
flags.DEFINE_integer("rounds", 2, "Rounds per timing.")
flags.DEFINE_integer("repeats", 3, "Timed repetitions after the warm-up; the fastest is reported.")
flags.DEFINE_bool("skip_remote", False, "Leave --runtime=remote out.")
FLAGS = flags.FLAGS

_SPEC = ClientSpec(num_epochs=1, batch_size=20)


def _pin(pid: int, cores: set[int]) -> None:
    """Pins every thread of `pid` (threads it starts later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), cores)


def _seconds_per_round(process, rounds_data) -> float:
    """The fastest mean seconds per round over the repeats, after a warm-up round."""
    state = process.initialize()
    state = process.next(state, rounds_data[0]).state
    best = float("inf")
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        for data in rounds_data:
            state = process.next(state, data).state
        best = min(best, (time.perf_counter() - start) / len(rounds_data))
    return best


def main(argv):
    del argv
    processes.install_worker_reaper()
    compat.quiet_library_logs()
    options = {"num_clients": FLAGS.clients + 50, "eval_clients": 10}
    cfg = config.from_values(
        dict(
            task="digits",
            digits_num_clients=options["num_clients"],
            digits_eval_clients=10,
            clients_per_round=FLAGS.clients,
            seed=0,
        )
    )
    recipe = client_sources.TaskRecipe.of(cfg)
    task = recipe.build()
    with compat.quiet_tensorflow_errors():
        process, _ = assembly.build_learning_process(
            task, cfg, task.train_data.client_ids, ray_runtime.RUNTIME.loop_implementation()
        )
    source = client_sources.TrainSource(recipe, _SPEC)

    def round_data(r):
        ids = sampling.sample_clients(list(task.train_data.client_ids), FLAGS.clients, seed=0, round_num=r)
        return client_sources.ClientDatasets(
            source, [(cid, sampling.client_seed(0, r, i)) for i, cid in enumerate(ids)], task
        )

    data = [round_data(r) for r in range(1, FLAGS.rounds + 1)]
    examples = sum(sum(1 for _ in ds.unbatch()) for ds in data[0])
    cores = sorted(os.sched_getaffinity(0))
    print(
        f"digits, {FLAGS.clients} clients a round ({examples:,} examples in round 1), batch 20, "
        f"{FLAGS.rounds} rounds a timing, fastest of {FLAGS.repeats}, {len(cores)} cores",
        flush=True,
    )
    if len(cores) < 2:
        sys.exit("error: needs at least 2 cores")
    results = {}

    # In-process on one core: the launcher itself pinned.
    _pin(os.getpid(), {cores[0]})
    local = inprocess_process.InProcessProcess(process, ["/CPU:0"] * 2)
    results["in-process, 1 core"] = _seconds_per_round(local, data)
    local.close()
    _pin(os.getpid(), set(cores))
    print(f"  in-process, 1 core: {results['in-process, 1 core']:.2f} s/round", file=sys.stderr, flush=True)

    cluster = ray_cluster.start_private(len(cores), 0, lambda line: print(line, file=sys.stderr))
    try:
        for actors in (1, 2):
            settings = config.from_values(dict(runtime="ray", ray_actors=actors, ray_cpus_per_actor=1))
            pool = ray_placement.start_actors(
                settings.runtime.ray, settings.runtime.inprocess, lambda line: print(line, file=sys.stderr)
            )
            for k, info in enumerate(pool.infos):
                _pin(info["pid"], {cores[k]})
            runner = ray_runtime.on_actors(process, pool)
            name = f"ray, {actors} actor{'s' if actors > 1 else ''}"
            results[name] = _seconds_per_round(runner, data)
            print(
                f"  {name}: {results[name]:.2f} s/round ({pool.bytes_last_round:,} bytes to the actors a round)",
                file=sys.stderr,
                flush=True,
            )
            runner.close()
            pool.close()
    finally:
        cluster.close()

    if not FLAGS.skip_remote:
        tls_dir, credentials = local_workers.certificates()
        plain = [list(d) for d in data]
        for count in (1, 2):
            services, addresses = [], []
            for k in range(count):
                proc, address = local_workers.start(tls_dir)
                local_workers.pin(proc, {cores[k]})
                services.append(proc)
                addresses.append(address)
            context = remote.FailoverContext(addresses, 60, lambda line: None, credentials)
            name = f"remote, {count} worker{'s' if count > 1 else ''}"
            try:
                with context_stack_impl.context_stack.install(context):
                    results[name] = _seconds_per_round(process, plain)
            finally:
                context.close()
                for service in services:
                    local_workers.stop(service)
            print(f"  {name}: {results[name]:.2f} s/round", file=sys.stderr, flush=True)

    print(f"{'engine (one core per actor / worker)':40s} {'s/round':>8s} {'rounds/s':>9s}")
    for name, seconds in results.items():
        print(f"{name:40s} {seconds:8.2f} {1 / seconds:9.3f}")
    print(
        f"ray 2 actors / ray 1 actor (speed-up): {results['ray, 1 actor'] / results['ray, 2 actors']:.2f} "
        "(target >= 1.8)"
    )
    if "remote, 2 workers" in results:
        print(
            f"ray 2 actors / remote 2 workers (speed-up): "
            f"{results['remote, 2 workers'] / results['ray, 2 actors']:.2f} (target >= 2)"
        )


if __name__ == "__main__":
    app.run(main)
