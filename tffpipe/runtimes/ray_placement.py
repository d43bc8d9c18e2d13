"""How many Ray actors a run gets, with which resources, and what the doctor says of the cluster."""

import time
from typing import Any
from collections.abc import Callable, Iterator

from tffpipe import errors

_READY_TIMEOUT_SEC = 600


class NotEnoughResources(errors.UserError, RuntimeError):
    """The cluster cannot hold the actors asked for."""


def plan(s: Any, nodes: list[dict[str, Any]]) -> tuple[int, int, float]:
    """(actors, CPUs per actor, GPUs per actor) for settings `s` on the alive `nodes`.

    Raises:
      NotEnoughResources: the actors asked for need more than the cluster has.
    """
    total_cpus = int(sum(n["Resources"].get("CPU", 0) for n in nodes))
    total_gpus = sum(n["Resources"].get("GPU", 0) for n in nodes)
    gpus = s.ray_gpus_per_actor
    if s.ray_actors:
        actors = s.ray_actors
    elif total_gpus and not gpus:
        actors, gpus = int(total_gpus), 1.0
    else:
        actors = max(1, len(nodes))
    cpus = s.ray_cpus_per_actor or max(1, total_cpus // actors)
    if actors * cpus > total_cpus:
        raise NotEnoughResources(
            f"--runtime=ray: {actors} actor(s) of {cpus} CPU(s) need {actors * cpus} CPUs; the cluster has "
            f"{total_cpus} (lower --ray_actors or --ray_cpus_per_actor)"
        )
    if actors * gpus > total_gpus + 1e-9:
        raise NotEnoughResources(
            f"--runtime=ray: {actors} actor(s) of {gpus:g} GPU(s) need {actors * gpus:g} GPUs; the cluster has "
            f"{total_gpus:g}"
        )
    return actors, cpus, gpus


def start_actors(s: Any, inprocess: Any, print_fn: Callable[[str], None]) -> Any:
    """The run's actors, started and ready (their TensorFlow imported).

    Args:
      s: the ray runtime's settings.
      inprocess: the in-process runtime's settings (slots per CPU device,
        clients per call, prefetching), which apply inside every actor.
      print_fn: where the line about the actors goes.
    """
    import ray

    from tffpipe.runtimes import ray_actors

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    actors, cpus, gpus = plan(s, nodes)
    started = time.monotonic()
    remote_class: Any = ray.remote(ray_actors.ClientActor).options(
        # Ray restarts a lost actor wherever the cluster has room; a round
        # never waits for that (the lost actor's clients run on the others).
        num_cpus=cpus,
        num_gpus=gpus,
        scheduling_strategy="SPREAD",
        max_restarts=-1,
        max_task_retries=0,
    )
    handles = [
        remote_class.remote(cpus, inprocess.parallel_clients, inprocess.clients_per_call, inprocess.prefetch_clients)
        for _ in range(actors)
    ]
    pool = ray_actors.ActorPool(handles, print_fn)
    refs = [h.info.remote() for h in handles]
    ready, waiting = ray.wait(refs, num_returns=len(refs), timeout=_READY_TIMEOUT_SEC)
    if waiting:
        pool.close()
        raise NotEnoughResources(
            f"--runtime=ray: {len(waiting)} of {actors} actor(s) did not start within {_READY_TIMEOUT_SEC} s "
            "(the cluster may lack the CPUs or GPUs they reserve)"
        )
    try:
        infos = ray.get(ready)
    except ray.exceptions.RayError as e:
        pool.close()
        raise NotEnoughResources(f"--runtime=ray: an actor failed to start: {errors.first_line(e)}") from e
    pool.infos = infos
    on_nodes = len({i["node"] for i in infos})
    print_fn(
        f"ray: {actors} actor(s) on {on_nodes} of {len(nodes)} node(s), {cpus} CPU(s)"
        + (f" and {gpus:g} GPU(s)" if gpus else "")
        + f" each, ready in {time.monotonic() - started:.1f} s"
    )
    return pool


def doctor_checks(s: Any) -> Iterator[tuple[str, str, str]]:
    """Ray installed; with --ray_address, the cluster reachable, its authentication, nodes and resources."""
    try:
        import ray
    except ImportError:
        yield ("FAIL", "runtime ray", "Ray is not installed (`uv sync`)")
        return
    if not s.ray_address:
        yield (
            "ok",
            "runtime ray",
            f"Ray {ray.__version__}; without --ray_address a private, token-authenticated "
            "Ray starts on this machine for each run",
        )
        return
    from tffpipe.runtimes import ray_cluster

    try:
        authenticated = ray_cluster.requires_token(s.ray_address)
    except ray_cluster.RayUnavailable as e:
        yield ("FAIL", f"ray cluster {s.ray_address}", str(e).split(": ", 1)[-1])
        return
    if authenticated:
        yield ("ok", f"ray cluster {s.ray_address}", "requires token authentication")
    else:
        yield (
            "FAIL" if not s.ray_allow_unauthenticated else "warn",
            f"ray cluster {s.ray_address}",
            "accepts callers without a token (RAY_AUTH_MODE=token is off)",
        )
        if not s.ray_allow_unauthenticated:
            return
    try:
        cluster = ray_cluster.join(s.ray_address, s.ray_allow_unauthenticated, lambda line: None)
    except ray_cluster.RayUnavailable as e:
        yield ("FAIL", f"ray cluster {s.ray_address}", str(e).split(": ", 1)[-1])
        return
    try:
        for node in ray.nodes():
            if not node.get("Alive"):
                continue
            r = node["Resources"]
            yield (
                "ok",
                f"ray node {node['NodeManagerAddress']}",
                f"{r.get('CPU', 0):g} CPU(s), {r.get('GPU', 0):g} GPU(s)",
            )
    finally:
        cluster.close()
