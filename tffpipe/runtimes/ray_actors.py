"""The client half of rounds in Ray actors: each runs the in-process engine on its share of clients.

An actor (`ClientActor`) imports a process's client parts (the MapReduceForm's
`work`, `accumulate`, `zero` and `merge`, sent once as serialized TFF
computations), builds its clients' datasets itself from the task factory
(`program.client_sources`), trains them on its slots exactly as the
in-process runtime does (`client_half.ClientHalf`), merges its slots and
returns one partial accumulator, with each client's secure-sum inputs
already masked. A round sends each actor the broadcast (through Ray's object
store, once for all actors) and its clients' keys (ids and seeds).

`RayClients` is the launcher's side: client i of a round goes to chunk
i mod (number of actors); chunks are merged in chunk order, so the result
does not depend on which actor ran which chunk. A chunk whose actor dies is
run again, from the same broadcast, on another live actor.
"""

import contextlib
import os
import pickle
from typing import Any
from collections.abc import Callable

from absl import logging

from tffpipe import errors
from tffpipe.runtimes import client_half
from tffpipe.aggregation.protocols import base as protocols_base


# When every actor is lost, how long a round waits for Ray to restart one.
_RESTART_WAIT_SEC = 120.0


class NoActorLeft(errors.UserError, RuntimeError):
    """Every actor of the run has died."""


def serialize_parts(mrf: Any) -> bytes:
    """The client parts of a MapReduceForm, as bytes an actor can import."""
    from tffpipe.compat import computation_impl

    return pickle.dumps(
        {
            name: computation_impl.ConcreteComputation.get_proto(getattr(mrf, name)).SerializeToString()
            for name in ("work", "accumulate", "zero", "merge")
        }
    )


def _deserialize_parts(blob: bytes) -> dict[str, Any]:
    from tffpipe.compat import computation_impl, computation_pb2, context_stack_impl

    return {
        name: computation_impl.ConcreteComputation(
            computation_proto=computation_pb2.Computation.FromString(proto),
            context_stack=context_stack_impl.context_stack,
        )
        for name, proto in pickle.loads(blob).items()
    }


class ClientActor:
    """One Ray actor: the in-process engine for a share of each round's clients.

    Args:
      num_cpus: CPUs Ray gave it (TensorFlow's thread pools are sized to them).
      parallel_clients: slots per CPU device; one slot per GPU when Ray gave GPUs.
      clients_per_call: clients per TensorFlow call (0: automatic).
      prefetch_clients: "on", "off" or "auto".
    """

    def __init__(self, num_cpus: int, parallel_clients: int, clients_per_call: int, prefetch_clients: str):
        import ray
        import tensorflow as tf

        # Several actors may share a node: each op's threads stay within the
        # actor's CPUs.
        tf.config.threading.set_intra_op_parallelism_threads(max(1, int(num_cpus)))
        # Only the GPUs Ray reserved for this actor (Ray hides the others).
        gpus = tf.config.list_logical_devices("GPU") if ray.get_gpu_ids() else []
        self._slot_devices = [g.name for g in gpus] or ["/CPU:0"] * parallel_clients
        # Every slot's call needs an inter-op thread of its own: TensorFlow
        # sizes that pool by the CPUs it may use, and with one thread for two
        # slots their calls and their datasets' reads waited on each other
        # (100 digits clients on one core: 2.7 to 7.2 s a round against 0.7 s).
        tf.config.threading.set_inter_op_parallelism_threads(max(len(self._slot_devices), int(num_cpus), 2))
        self._clients_per_call = clients_per_call
        self._prefetch = client_half.reads_ahead(prefetch_clients, self._slot_devices)
        self._processes: dict[str, tuple[client_half.ClientHalf, Any]] = {}
        self._checked: set = set()

    def info(self) -> dict[str, Any]:
        """Where this actor runs (pid, node, devices)."""
        import ray

        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(), "slots": self._slot_devices}

    def load(self, key: str, blob: bytes, what: str) -> dict[str, Any]:
        """Imports a process's client parts under `key`; returns what it built."""
        if key not in self._processes:
            parts = _deserialize_parts(blob)
            half = client_half.ClientHalf(
                parts["work"],
                parts["accumulate"],
                parts["zero"],
                self._slot_devices,
                what,
                self._prefetch,
                self._clients_per_call,
            )
            self._processes[key] = (half, client_half.import_part(parts["merge"], what))
        half = self._processes[key][0]
        return {"clients_per_call": half.clients_per_call, "grouping_failed": half.grouping_failed}

    def drop_processes(self) -> None:
        """Forgets every process loaded (a run ended); the actor stays for the next run."""
        for half, _ in self._processes.values():
            half.close()
        self._processes.clear()

    def run(
        self,
        key: str,
        client_input: list,
        source: Any,
        keys: list,
        fingerprint: tuple,
        protection: protocols_base.RoundKeys | None,
        indices: list[int],
        moduli: list[int],
    ):
        """Trains the clients `keys` (round positions `indices`); returns (accumulator, their protected sum).

        Returns None when `key` is not loaded (a restarted actor): the
        launcher loads it and asks again.
        """
        if key not in self._processes:
            return None
        half, merge = self._processes[key]
        self._check_task(source, fingerprint)
        data = [source.build(k) for k in keys]
        accumulators, protected_sum = half.run(client_input, data, protection, moduli, indices)
        return [t.numpy() for t in client_half.merge_all(merge, accumulators)], protected_sum

    def _check_task(self, source: Any, fingerprint: tuple) -> None:
        if source.recipe in self._checked:
            return
        from tffpipe.program import client_sources

        found = client_sources.task_fingerprint(source.recipe.build())
        if found != fingerprint:
            raise ValueError(
                f"the task built on a Ray node differs from the launcher's ({found[:3]} against "
                f"{fingerprint[:3]}): give every node the same task code and --data_dir contents"
            )
        self._checked.add(source.recipe)


class ActorPool:
    """The run's actors, shared by its learning and evaluation processes.

    Args:
      actors: Ray actor handles (`ClientActor`).
      print_fn: where lines about lost actors go.
    """

    def __init__(self, actors: list[Any], print_fn: Callable[[str], None]):
        self.actors = list(actors)
        self._alive = [True] * len(actors)
        self.print_fn = print_fn  # the current run's
        self._blobs: dict[str, Any] = {}
        # Lost actors Ray is restarting: index -> a call answered once it is back.
        self._probes: dict[int, Any] = {}
        self.bytes_last_round = 0
        self.infos: list[dict[str, Any]] = []

    def alive(self, wait_sec: float = 0.0) -> list[int]:
        """The actors that answer; lost ones come back once Ray has restarted them.

        Args:
          wait_sec: when no actor is alive, how long to wait for a restart.
        """
        self._collect_restarted(0.0)
        if not any(self._alive) and self._probes and wait_sec:
            self._collect_restarted(wait_sec)
        return [i for i, ok in enumerate(self._alive) if ok]

    def _collect_restarted(self, timeout: float) -> None:
        if not self._probes:
            return
        import ray

        ready, _ = ray.wait(
            list(self._probes.values()), num_returns=1 if timeout else len(self._probes), timeout=timeout
        )
        for index, ref in list(self._probes.items()):
            if ref not in ready:
                continue
            del self._probes[index]
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError:
                continue  # gone for good
            self._alive[index] = True
            self.print_fn(f"ray: actor {index} is back (Ray restarted it); it trains clients again")

    def mark_dead(self, index: int, error: BaseException) -> None:
        """Stops giving clients to actor `index` until Ray has restarted it (where the cluster has room)."""
        if self._alive[index]:
            self._alive[index] = False
            left = sum(self._alive)
            self.print_fn(
                f"ray: actor {index} was lost ({errors.first_line(error)}); its clients run again on "
                f"{left} other actor(s)"
            )
            self._probes[index] = self.actors[index].info.remote()

    def register(self, key: str, blob: bytes, what: str) -> list[dict[str, Any]]:
        """Loads a process's client parts into every live actor."""
        import ray

        self._blobs[key] = (ray.put(blob), what)
        refs = {i: self.actors[i].load.remote(key, self._blobs[key][0], what) for i in self.alive()}
        built = []
        for i, ref in refs.items():
            try:
                built.append(ray.get(ref))
            except ray.exceptions.RayActorError as e:
                self.mark_dead(i, e)
        if not built:
            raise NoActorLeft("--runtime=ray: no Ray actor is left; rerun the same command to resume")
        return built

    def reload(self, index: int, key: str) -> None:
        import ray

        ref, what = self._blobs[key]
        ray.get(self.actors[index].load.remote(key, ref, what))

    def forget_processes(self) -> None:
        """Has every live actor drop the processes it loaded (at the end of a run)."""
        import ray

        self._blobs.clear()
        for i in self.alive():
            # A lost actor loses its processes anyway.
            with contextlib.suppress(ray.exceptions.RayError, TimeoutError):
                ray.get(self.actors[i].drop_processes.remote(), timeout=60)

    def close(self) -> None:
        import ray

        for actor in self.actors:
            with contextlib.suppress(Exception):  # already gone
                ray.kill(actor)


class RayClients:
    """The client half of a process's rounds on the pool's actors (the `clients` of `InProcessProcess`)."""

    def __init__(
        self,
        pool: ActorPool,
        mrf: Any,
        key: str,
        what: str,
        local: Callable[[], Any],
        print_fn: Callable[[str], None] | None = None,
    ):
        self._pool = pool
        self._key = key
        self._what = what
        self._fingerprint: tuple[Any, ...] | None = None
        self.print_fn = print_fn
        self._make_local = local
        self._local: Any = None  # an in-process client half, made when first needed
        built = pool.register(key, serialize_parts(mrf), what)
        self.clients_per_call = built[0]["clients_per_call"]
        self.grouping_failed = built[0]["grouping_failed"]
        self.last_assignment: dict[str, list[int]] = {}
        self.placement_rule = f"client i of a round goes to actor i mod {len(pool.actors)}"

    @property
    def slot_devices(self) -> list[str]:
        return [f"ray actor {i}" for i in self._pool.alive()]

    def describe(self) -> str:
        return client_half.describe_assignment(self.last_assignment)

    def run_round(self, client_input, client_data, protection, moduli):
        """(the chunks' accumulators in chunk order, each chunk's protected secure-sum inputs, summed)."""
        source = getattr(client_data, "source", None)
        if source is None:
            # Datasets built in the launcher (a backdoor's triggered evaluation):
            # trained here rather than shipped.
            if self._local is None:
                self._local = self._make_local()
            return self._local.run_round(client_input, client_data, protection, moduli)
        import ray

        from tffpipe.program import client_sources

        if self._fingerprint is None:
            self._fingerprint = client_sources.task_fingerprint(client_data.task)
        num_chunks = len(self._pool.actors)
        chunks = [list(range(k, len(client_data), num_chunks)) for k in range(min(num_chunks, len(client_data)))]
        broadcast = [t.numpy() for t in client_input]
        broadcast_ref = ray.put(broadcast)
        source_ref = ray.put(source)
        broadcast_bytes = sum(a.nbytes for a in broadcast)
        sent = broadcast_bytes + len(pickle.dumps(source))
        pending: dict[Any, tuple[int, int, int]] = {}  # ref -> (chunk, actor, attempt)
        results: dict[int, Any] = {}

        def submit(chunk: int, attempt: int) -> None:
            nonlocal sent
            alive = self._pool.alive(wait_sec=_RESTART_WAIT_SEC)
            if not alive:
                raise NoActorLeft(
                    "--runtime=ray: no Ray actor is left; rerun the same command to resume from the last checkpoint"
                )
            actor = alive[(chunk + attempt) % len(alive)]
            indices = chunks[chunk]
            keys = [client_data.keys[i] for i in indices]
            chunk_keys = protection.for_clients(indices) if protection is not None else None
            payload = (keys, chunk_keys, indices, moduli)
            sent += len(pickle.dumps(payload))
            ref = self._pool.actors[actor].run.remote(
                self._key, broadcast_ref, source_ref, keys, self._fingerprint, chunk_keys, indices, moduli
            )
            pending[ref] = (chunk, actor, attempt)

        for chunk in range(len(chunks)):
            submit(chunk, 0)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            chunk, actor, attempt = pending.pop(done[0])
            try:
                result = ray.get(done[0])
            except ray.exceptions.RayActorError as e:
                self._pool.mark_dead(actor, e)
                submit(chunk, attempt + 1)
                continue
            except ray.exceptions.RayTaskError as e:
                cause = getattr(e, "cause", None)
                if isinstance(cause, client_half.ClientWorkFailed):
                    raise client_half.ClientWorkFailed(cause.index, str(cause)) from None
                if isinstance(cause, errors.UserError):
                    raise type(cause)(str(cause)) from None
                raise
            if result is None:  # restarted: load the parts again
                self._pool.reload(actor, self._key)
                submit(chunk, attempt)
                continue
            results[chunk] = (result, actor)
        self._pool.bytes_last_round = sent
        self.say_traffic(sent, broadcast_bytes, len(client_data), protection)
        self.last_assignment = {f"ray actor {results[c][1]}": chunks[c] for c in sorted(results)}
        return [results[c][0][0] for c in sorted(results)], [results[c][0][1] for c in sorted(results)]

    def say_traffic(self, sent: int, broadcast: int, num_clients: int, protection: Any) -> None:
        line = (
            f"ray: {self._what} round sent {sent:,} bytes to the actors: the broadcast ({broadcast:,} bytes, "
            f"once through the object store) and {num_clients} clients' ids and seeds"
            + (f" and their {protection.what_is_sent}" if protection is not None else "")
            + "; no examples"
        )
        if self.print_fn is not None:
            self.print_fn(line)
            self.print_fn = None
        logging.info(line)

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
