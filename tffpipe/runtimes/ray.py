"""`--runtime=ray`: the in-process engine in Ray actors, on every node of a Ray cluster.

The launcher runs the server half of each round (prepare, merge, report,
update, as on the in-process runtime: `inprocess_process.InProcessProcess`);
the client half runs in Ray actors (`ray_actors.py`), each on its own CPUs or
GPUs, building its clients' datasets from the task factory where it runs.
Without `--ray_address` a private, token-authenticated Ray starts on this
machine and stops with the launcher (`ray_cluster.py`).
"""

import contextlib
import dataclasses
import itertools
import os

from tffpipe import components
from tffpipe import settings
from tffpipe.runtimes import base

_APPLIES = ("runtime", ("ray",))
# --ray_address also makes --runtime=auto choose this runtime.
_APPLIES_WITH_AUTO = ("runtime", ("auto", "ray"))
_keys = itertools.count()


def _address_check(value: str) -> str | None:
    if value in ("", "auto") or (":" in value and value.rsplit(":", 1)[1].isdigit()):
        return None
    return "must be empty (a private Ray on this machine), 'auto', or HOST:PORT of a Ray cluster's head"


@dataclasses.dataclass(frozen=True)
class Settings:
    ray_address: str = settings.setting(
        "",
        "The Ray cluster to join: HOST:PORT of its head, or 'auto' (the one `ray start` started "
        "here); empty starts a private Ray on this machine that stops with the run.",
        flag="ray_address",
        group="runtime",
        check=_address_check,
        applies=_APPLIES_WITH_AUTO,
        resume=settings.NOT_APPLICABLE,
    )
    ray_actors: int = settings.setting(
        0,
        "Ray actors training clients; 0 puts one on every node (one per GPU where there are GPUs).",
        flag="ray_actors",
        group="runtime",
        check=settings.at_least(0),
        applies=_APPLIES,
        resume=settings.NOT_APPLICABLE,
    )
    ray_cpus_per_actor: int = settings.setting(
        0,
        "CPUs each actor reserves (and sizes TensorFlow's threads to); 0: the cluster's CPUs "
        "shared evenly among the actors.",
        flag="ray_cpus_per_actor",
        group="runtime",
        check=settings.at_least(0),
        applies=_APPLIES,
        resume=settings.NOT_APPLICABLE,
    )
    ray_gpus_per_actor: float = settings.setting(
        0.0,
        "GPUs each actor reserves (fractions share a GPU); 0 with --ray_actors=0 on a cluster with "
        "GPUs gives each actor one.",
        flag="ray_gpus_per_actor",
        group="runtime",
        check=settings.at_least(0),
        applies=_APPLIES,
        resume=settings.NOT_APPLICABLE,
    )
    ray_allow_unauthenticated: bool = settings.setting(
        False,
        "Join a Ray cluster that does not require token authentication (anyone who reaches it "
        "can run code on its nodes); warns at every start.",
        flag="ray_allow_unauthenticated",
        group="runtime",
        applies=_APPLIES,
        resume=settings.NOT_APPLICABLE,
    )


def _uses_ray(ctx: base.Context) -> bool:
    return RUNTIME.chosen(ctx)


def _asynchronous(algorithm: str) -> bool:
    from tffpipe.learning import registry as algorithm_registry

    return algorithm_registry.get(algorithm).asynchronous


class RayRuntime(base.Runtime):
    key = "ray"
    Settings = Settings
    summary = "the in-process engine in Ray actors on every node of a Ray cluster"
    executes_secure_sums = True

    def __init__(self):
        self._cluster = None
        self._pool = None
        self._pool_key = None

    rules = (
        components.refuses(
            lambda ctx, run: _uses_ray(ctx) and _asynchronous(run.algorithm),
            "--runtime=ray cannot run --algorithm={run.algorithm}: its program trains one client at a time as "
            "each arrives, in the launcher; use --runtime=inprocess",
        ),
    )

    def chosen(self, ctx) -> bool:
        """Whether this run uses Ray: --runtime=ray, or --runtime=auto with --ray_address."""
        return ctx.selected == self.key or (ctx.selected == "auto" and bool(self.settings(ctx).ray_address))

    def loop_implementation(self):
        import tensorflow_federated as tff

        # As on the in-process runtime (its docstring has the figures).
        return tff.learning.LoopImplementation.DATASET_ITERATOR

    def preflight(self, ctx, print_fn):
        """Starts or joins the cluster before data loads (`RayUnavailable` in one line)."""
        self.connect(ctx, print_fn)

    def connect(self, ctx, print_fn):
        from tffpipe.runtimes import ray_cluster

        s = self.settings(ctx)
        if self._cluster is not None and self._cluster.address_setting == s.ray_address:
            return self._cluster
        self.disconnect()
        if s.ray_address:
            cluster = ray_cluster.join(s.ray_address, s.ray_allow_unauthenticated, print_fn)
        else:
            wanted = s.ray_actors * max(s.ray_cpus_per_actor, 1)
            cluster = ray_cluster.start_private(max(os.cpu_count() or 1, wanted), 0, print_fn)
        cluster.address_setting = s.ray_address
        self._cluster = cluster
        return cluster

    def disconnect(self) -> None:
        """Stops the actors, and leaves the cluster (stopping it when private)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    @contextlib.contextmanager
    def running(self, process, ctx, print_fn):
        from tffpipe.runtimes import ray_placement

        from tffpipe.runtimes import ray_cluster

        print_fn(ray_cluster.describe_transport(self.connect(ctx, print_fn)))
        s = self.settings(ctx)
        engine = ctx.settings["inprocess"]
        key = (s, engine.parallel_clients, engine.clients_per_call, engine.prefetch_clients)
        if self._pool is not None and (self._pool_key != key or not self._pool.alive()):
            self._pool.close()
            self._pool = None
        if self._pool is None:
            self._pool = ray_placement.start_actors(s, engine, print_fn)
            self._pool_key = key
        else:
            self._pool.print_fn = print_fn
            # Another run in this process (a notebook, a sweep): the actors
            # have TensorFlow loaded already.
            print_fn(f"ray: the {len(self._pool.alive())} actor(s) of the previous run in this process train this one")
        try:
            runner = self.wrap(process, ctx, print_fn)
            try:
                yield runner
            finally:
                runner.close()
        finally:
            self._pool.forget_processes()

    def wrap(self, process, ctx, print_fn, what="learning process"):
        """`process` with its client half on the run's actors."""
        from tffpipe.runtimes import ray_key_holder

        protocol = ctx.protocol(ray_key_holder.start)
        return on_actors(process, self._pool, what, print_fn, protocol)

    def evaluation(self, process, ctx, print_fn):
        return self.wrap(process, ctx, None, "evaluation process")

    def checked_by_default(self, ctx):
        # A private Ray takes seconds to start: checked when asked for, or given a cluster.
        return bool(self.settings(ctx).ray_address)

    def doctor_checks(self, ctx, gpus_seen):
        from tffpipe.runtimes import ray_placement

        yield from ray_placement.doctor_checks(self.settings(ctx))


def on_actors(process, pool, what: str = "learning process", print_fn=None, protocol=None):
    """`process` run by the in-process engine with its client half on `pool`'s actors.

    Args:
      process: the TFF process.
      pool: a `ray_actors.ActorPool`.
      what: how messages name the process.
      print_fn: where the lines about the process and its first round's
        traffic go (None: nowhere).
      protocol: makes the secure-sum protocol (default: pairwise masking).
    """
    from tffpipe.runtimes import client_half
    from tffpipe.runtimes import inprocess_process
    from tffpipe.runtimes import ray_actors

    def clients(mrf):
        def local():
            return client_half.ClientHalf.of(mrf, ["/CPU:0"], what, prefetch=False, clients_per_call=0)

        return ray_actors.RayClients(pool, mrf, f"{what} {next(_keys)}", what, local, print_fn)

    runner = inprocess_process.InProcessProcess(process, [], what, clients=clients, protocol=protocol)
    if print_fn is not None:
        print_fn(
            f"runtime ray: {what} on {len(pool.alive())} actor(s), up to {runner.clients_per_call} clients "
            "per TensorFlow call; clients' data built on the actors"
            + (f"; secure sums use {runner.protocol.summary} across actors" if runner.uses_secure_sum else "")
        )
        if runner.uses_secure_sum and what == "learning process":
            print_fn(runner.protocol.note("ray"))
    return runner


RUNTIME = RayRuntime()
