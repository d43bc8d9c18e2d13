"""The client half of a round on this machine: `work` and `accumulate` on concurrent slots.

Used by the in-process runtime for every client of a round, and by each Ray
actor (`ray_actors.py`) for its share of them. Each slot has a device and its
own imported copies of `work` (one per position in a group of clients
trained in one TensorFlow call, `tf_parts.GroupedClientStep`) and
`accumulate`. Client i of the clients given goes to slot i mod (number of
slots the round uses: all, or fewer when they share a device and the round
is small, `slots_for`); the caller merges the slots' accumulators in slot order, so a
round's result does not depend on thread timing.
"""

import concurrent.futures
import dataclasses
import threading
from typing import Any
from collections.abc import Sequence

import tensorflow as tf
import tensorflow_federated as tff
from tffpipe.compat import forms

from tffpipe import errors
from tffpipe.aggregation.protocols import base as protocols_base
from tffpipe.runtimes import tf_parts


class InProcessUnsupported(errors.UserError, ValueError):
    """The process cannot run on the in-process runtime."""


class ClientWorkFailed(errors.UserError, RuntimeError):
    """One client's work raised; `index` is its position in the round's list."""

    def __init__(self, index: int, error: BaseException | str):
        super().__init__(error if isinstance(error, str) else errors.first_line(error))
        self.index = index

    def __reduce__(self):  # crosses process boundaries (Ray) whole
        return (ClientWorkFailed, (self.index, str(self)))


def import_part(comp: tff.Computation, what: str) -> tf_parts.ImportedComputation:
    """`comp` imported into this process (`InProcessUnsupported` if it is not TensorFlow)."""
    try:
        return tf_parts.ImportedComputation(comp)
    except tf_parts.NotTensorFlowError as e:
        raise InProcessUnsupported(f"the {what} cannot run on --runtime=inprocess ({e}); use --runtime=cpp") from e


# Clients per TensorFlow call when not set. digits, 200 clients of ~7
# examples a round, 2 cores, seconds of `next` (median of 5 rounds): 1 client
# per call 1.10 (2 slots) and 1.63 (1 slot); 4 per call 0.75 (2 slots) and
# 1.02 (1 slot); 8 per call 0.85 and 0.83; 16 per call 0.87 (1 slot). A first
# prototype found one graph of 50 clients' training loops far slower than
# their sum (12.7 s a round), so groups stay small. See
# `benchmarks/cohort_throughput.py`.
AUTO_CLIENTS_PER_CALL = 4

# Slots on one device (`--parallel_clients` on the CPU) compete for its
# cores; a second slot pays off only when each has several groups to train.
# digits, 2 cores, wall seconds of a round of N clients, one slot against
# two (4 per call, median of 4 rounds): N=10 0.056/0.065, 20 0.084/0.103,
# 50 0.236/0.196, 100 0.469/0.364, 200 1.10/0.83; EMNIST CNN, 200:
# 3.39/2.97. So a round uses one such slot per this many groups (at least
# one slot). Slots on different devices (GPUs, logical CPUs) are all used.
GROUPS_PER_SHARED_SLOT = 4


@dataclasses.dataclass
class Slot:
    """One concurrent client: a device and its own copies of the client parts."""

    device: str
    # work, then accumulate, for a group of clients in one call.
    client_step: tf_parts.GroupedClientStep
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


class ClientHalf:
    """`work` + `accumulate` for many clients, on this machine's slots.

    Args:
      work, accumulate, zero: the MapReduceForm's client parts.
      slot_devices: one TensorFlow device name per concurrent slot.
      what: how errors name the process.
      prefetch: whether each slot reads its next clients into memory while
        the current ones train.
      clients_per_call: clients per TensorFlow call (0: `AUTO_CLIENTS_PER_CALL`).
    """

    def __init__(
        self,
        work: tff.Computation,
        accumulate: tff.Computation,
        zero: tff.Computation,
        slot_devices: Sequence[str],
        what: str,
        prefetch: bool,
        clients_per_call: int,
    ):
        if not slot_devices:
            raise ValueError("at least one client slot is needed")
        self.data_type = work.type_signature.parameter[0]
        self.num_update = tf_parts.num_leaves(work.type_signature.result[forms.WORK_UPDATE_INDEX])
        self._zero = import_part(zero, what)
        self._prefetch = prefetch
        num_client_leaves = tf_parts.num_leaves(self.data_type)
        self.slots = []
        for device in slot_devices:
            with tf.device(device):
                step = tf_parts.GroupedClientStep(
                    lambda: import_part(work, what), import_part(accumulate, what), self.num_update, num_client_leaves
                )
            self.slots.append(Slot(device, step))
        self.clients_per_call = clients_per_call or AUTO_CLIENTS_PER_CALL
        self.grouping_failed = ""
        if self.clients_per_call > 1:
            try:
                # Whether this work groups at all, on the smallest group (0.6 s
                # to build for 4 here against about half that for 2); the other
                # sizes are traced when a round first needs them.
                self.slots[0].client_step.prepare(2)
            except Exception as e:
                # Any tracing failure means the same: this work cannot share a
                # graph with other clients' work; run one client per call.
                self.grouping_failed = errors.first_line(e)
                self.clients_per_call = 1
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=len(self.slots), thread_name_prefix="tffpipe-client"
        )
        self._loader = concurrent.futures.ThreadPoolExecutor(
            max_workers=len(self.slots), thread_name_prefix="tffpipe-prefetch"
        )
        self.last_assignment: dict[str, list[int]] = {}
        self.groups_per_shared_slot = GROUPS_PER_SHARED_SLOT  # 0: every round uses every slot

    @classmethod
    def of(
        cls, mrf: forms.MapReduceForm, slot_devices: Sequence[str], what: str, prefetch: bool, clients_per_call: int
    ) -> "ClientHalf":
        """The client half of a MapReduceForm's rounds on `slot_devices`."""
        return cls(mrf.work, mrf.accumulate, mrf.zero, slot_devices, what, prefetch, clients_per_call)

    @property
    def slot_devices(self) -> list[str]:
        return [s.device for s in self.slots]

    def run_round(self, client_input, client_data, keys, moduli):
        """(the slots' accumulators, [the round's secure-sum inputs, protected and summed])."""
        accumulators, partial = self.run(client_input, client_data, keys, moduli)
        return accumulators, [partial]

    def run(
        self,
        client_input: Sequence[Any],
        client_data: Sequence[Any],
        keys: protocols_base.RoundKeys | None = None,
        moduli: Sequence[int] = (),
        indices: Sequence[int] | None = None,
    ) -> tuple[list[list[tf.Tensor]], Any]:
        """Every client's work, accumulated per slot.

        Args:
          client_input: the broadcast (flat tensors).
          client_data: per client, its value of `data_type` (datasets).
          keys: the round's secure-protocol keys (None: no secure sums);
            each client protects its secure-sum inputs in its slot's thread,
            and they are added to one running sum as they come.
          moduli: the modulus of each secure-sum input.
          indices: each client's position in the round (default: its
            position here), which names it in keys and errors.

        Returns:
          (the slots' accumulators in slot order, the protected sum of these
          clients' secure-sum inputs, or None without secure sums).

        Raises:
          ClientWorkFailed: naming the round position of the client that failed.
        """
        indices = list(range(len(client_data))) if indices is None else list(indices)
        partial = keys.partial_sum(moduli) if keys is not None else None

        def on_extra(position: int, extra: list[Any]) -> None:
            # Secure-sum values (the only extras) come with keys.
            assert keys is not None and partial is not None
            partial.add(keys.protect(indices[position], [v.numpy() for v in extra], moduli))

        try:
            accumulators = self._run(client_input, client_data, on_extra if keys is not None else None)
        except ClientWorkFailed as e:
            raise ClientWorkFailed(indices[e.index], str(e)) from e
        return accumulators, partial.value() if partial is not None else None

    def describe(self) -> str:
        """Which slot trained which clients (by position) in the last round."""
        return describe_assignment(self.last_assignment)

    @property
    def placement_rule(self) -> str:
        if not self._slots_share_a_device():
            return f"client i of a round goes to slot i mod {len(self.slots)}"
        per_slot = self.groups_per_shared_slot * self.clients_per_call
        return (
            f"client i of a round goes to slot i mod S, S = the round's clients // {per_slot}, "
            f"at least 1 and at most {len(self.slots)}, as the slots share a device"
        )

    def _slots_share_a_device(self) -> bool:
        return len(self.slots) > 1 and len({s.device for s in self.slots}) == 1 and self.groups_per_shared_slot > 0

    def slots_for(self, num_clients: int) -> int:
        """How many slots a round of `num_clients` clients uses."""
        if not self._slots_share_a_device():
            return len(self.slots)
        return max(1, min(len(self.slots), num_clients // (self.groups_per_shared_slot * self.clients_per_call)))

    def _run(self, client_input, client_data, on_extra):
        num_slots = self.slots_for(len(client_data))
        assignment = {k: list(range(k, len(client_data), num_slots)) for k in range(min(num_slots, len(client_data)))}
        size = self.clients_per_call
        keyed = self._keyed(client_data)

        def run_slot(slot: Slot, clients: list[int]):
            with slot.lock, tf.device(slot.device):
                accumulator = self._zero()
                groups = [clients[i : i + size] for i in range(0, len(clients), size)]
                if keyed is not None:
                    return self._run_keyed(slot, accumulator, groups, keyed, client_data, client_input, on_extra)
                pending = self._load(groups[0], client_data)
                for n, group in enumerate(groups):
                    group_data = pending.result()
                    if n + 1 < len(groups):
                        pending = self._load(groups[n + 1], client_data)
                    accumulator, extras = self._run_group(slot, accumulator, group, group_data, client_input)
                    if on_extra is not None:
                        for index, extra in zip(group, extras):
                            on_extra(index, extra)
                return accumulator

        futures = [self._pool.submit(run_slot, self.slots[k], ids) for k, ids in assignment.items()]
        accumulators = [f.result() for f in futures]
        self.last_assignment = {f"{self.slots[k].device} (slot {k})": ids for k, ids in assignment.items()}
        return accumulators

    def _keyed(self, client_data: Sequence[Any]):
        """(dataset function, ids, seeds) when groups can build their datasets inside their call."""
        # A failed grouping check has already set clients_per_call to 1.
        if self.clients_per_call == 1 or self._prefetch or tf_parts.num_leaves(self.data_type) != 1:
            return None
        traced_builder = getattr(client_data, "traced_builder", None)
        return traced_builder() if traced_builder is not None else None

    def _run_keyed(self, slot: Slot, accumulator, groups: list[list[int]], keyed, client_data, client_input, on_extra):
        """A slot's groups, each one call that builds its clients' datasets and trains them.

        A group that fails is run again with datasets built here, one client
        at a time, so the client that fails is named as on the other path.
        """
        build, ids, seeds = keyed
        for group in groups:
            try:
                accumulator, extras = slot.client_step.by_keys(
                    accumulator, build, [ids[i] for i in group], [seeds[i] for i in group], client_input
                )
            except (tf.errors.OpError, ValueError, TypeError):
                data = [tf_parts.flatten(client_data[i], self.data_type) for i in group]
                accumulator, extras = self._run_group(slot, accumulator, group, data, client_input)
            if on_extra is not None:
                for index, extra in zip(group, extras):
                    on_extra(index, extra)
        return accumulator

    def _run_group(self, slot: Slot, accumulator, group: list[int], group_data, client_input):
        """Trains a group of clients in one call; on failure, names the client that failed.

        Raises:
          ClientWorkFailed: naming the first client of the group whose work
            fails on its own.
        """
        try:
            return slot.client_step(accumulator, group_data, client_input)
        except (tf.errors.OpError, ValueError, TypeError) as error:
            if len(group) == 1:
                raise ClientWorkFailed(group[0], error) from error
            for index, data in zip(group, group_data):
                try:
                    accumulator, _ = slot.client_step(accumulator, [data], client_input)
                except (tf.errors.OpError, ValueError, TypeError) as alone:
                    raise ClientWorkFailed(index, alone) from alone
            raise

    def _load(self, group: list[int], client_data: Sequence[Any]) -> concurrent.futures.Future:
        """The datasets of the clients in `group`, built on a loader thread while the slot trains.

        Building a client's dataset (`client_data[i]`, a traced function call
        for a task's clients) costs about 1.5 ms; built here, the next group's
        datasets are ready when the slot's current call returns instead of
        all being built before any client trains. With `prefetch`, they are
        also read into memory: the work reads the cached elements, exactly
        those the datasets' first pass produced, so training sees the same
        data. A client whose data fails to build or read is named
        (`ClientWorkFailed`).
        """

        def build(index: int) -> list[Any]:
            try:
                leaves = tf_parts.flatten(client_data[index], self.data_type)
                return [_read_into_memory(d) for d in leaves] if self._prefetch else leaves
            except (tf.errors.OpError, ValueError, TypeError) as error:
                raise ClientWorkFailed(index, error) from error

        return self._loader.submit(lambda: [build(i) for i in group])

    def close(self) -> None:
        """Stops the client and loader threads."""
        self._pool.shutdown(wait=True)
        self._loader.shutdown(wait=True)


def merge_all(merge: tf_parts.ImportedComputation, accumulators: Sequence[Sequence[Any]]) -> list[Any]:
    """The accumulators merged in order."""
    total = accumulators[0]
    for other in accumulators[1:]:
        total = merge(*total, *other)
    return list(total)


def describe_assignment(assignment: dict[str, list[int]]) -> str:
    """ "where: clients [...]" for every slot or actor, in order."""
    return "; ".join(f"{where}: clients {ids}" for where, ids in assignment.items())


def _read_into_memory(dataset: tf.data.Dataset) -> tf.data.Dataset:
    # One pass fills the in-memory cache that later iterators of `cached`
    # (the client's work) replay. An eager loop: a tf.function taking the
    # dataset cost 17 ms a call here against 5 ms.
    with tf.device("/CPU:0"):
        cached = dataset.cache()
        for _ in cached:
            pass
    return cached


def reads_ahead(prefetch_clients: str, slot_devices: Sequence[str]) -> bool:
    """Whether slots read their next client while one trains.

    "auto" does it on GPUs only: on the CPU the loader competes with training
    for the same cores (digits, 2 cores: 5,000 against 6,170 examples/s).
    """
    if prefetch_clients == "auto":
        return any(":GPU:" in device.upper() for device in slot_devices)
    return prefetch_clients == "on"
