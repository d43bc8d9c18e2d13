"""The in-process runtime: a learning process's round as TensorFlow functions.

`process.next` is compiled to TFF's `MapReduceForm` (TFF's own compiler), and
its TensorFlow parts run here, in the launcher's process, on TensorFlow
devices of our choosing:

  prepare(server state)                         -> client input (broadcast)
  work(client dataset, client input)            -> client update, per client
  zero / accumulate / merge / report            -> the aggregate
  secure-sum parts                              -> pairwise-masked sums
  update(server state, aggregates)              -> new state and metrics

Each part is imported once (`tf_parts.ImportedComputation`); `work` and
`accumulate` once per concurrent client slot, each slot on its device. The
object looks like a TFF `LearningProcess` to the program loop (`initialize`,
`next`, `get_model_weights`, `set_model_weights`), returns the same Python
structures as TFF's runtime, so checkpoints are interchangeable.

TFF 0.87 has no Python executor any more, which is why this is written here.
"""

import concurrent.futures
import dataclasses
import threading
from typing import Any, Callable, Sequence

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.core.backends.mapreduce import forms

from tffpipe import errors
from tffpipe.runtimes import secure_masking
from tffpipe.runtimes import tf_parts

_SECURE_KINDS = (
    # (MapReduceForm part giving the parameter, work output index, kind)
    ("secure_sum_bitwidth", forms.WORK_SECAGG_BITWIDTH_INDEX, "bitwidth"),
    ("secure_sum_max_input", forms.WORK_SECAGG_MAX_INPUT_INDEX, "max_input"),
    ("secure_modular_sum_modulus", forms.WORK_SECAGG_MODULUS_INDEX, "modular"),
)


class InProcessUnsupported(errors.UserError, ValueError):
    """The process cannot run on the in-process runtime."""


def compile_round(computation: tff.Computation, what: str):
    """`computation` as a MapReduceForm.

    Raises:
      InProcessUnsupported: with TFF's reason and the way out.
    """
    try:
        return tff.backends.mapreduce.get_map_reduce_form_for_computation(computation)
    except Exception as e:  # pylint: disable=broad-except
        # TFF's compiler raises many types (ValueError, TypeError, compiler
        # errors); all mean the same thing to the user.
        raise InProcessUnsupported(
            f"the {what} cannot run on --runtime=inprocess: TFF cannot compile its "
            f"round to a MapReduceForm ({errors.first_line(e)}); use --runtime=cpp"
        ) from e


def _import(comp: tff.Computation, what: str) -> tf_parts.ImportedComputation:
    try:
        return tf_parts.ImportedComputation(comp)
    except tf_parts.NotTensorFlowError as e:
        raise InProcessUnsupported(
            f"the {what} cannot run on --runtime=inprocess ({e}); use --runtime=cpp"
        ) from e


@dataclasses.dataclass
class _Slot:
    """One concurrent client: a device and its own copies of the client parts."""

    device: str
    # work, then accumulate, for a group of clients in one call.
    client_step: tf_parts.GroupedClientStep
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


# Clients per TensorFlow call when not set. digits, 200 clients of ~7
# examples a round, 2 cores, seconds of `next` (median of 5 rounds): 1 client
# per call 1.10 (2 slots) and 1.63 (1 slot); 4 per call 0.75 (2 slots) and
# 1.02 (1 slot); 8 per call 0.85 and 0.83; 16 per call 0.87 (1 slot). A first
# prototype found one graph of 50 clients' training loops far slower than
# their sum (12.7 s a round), so groups stay small. See
# `benchmarks/cohort_throughput.py`.
AUTO_CLIENTS_PER_CALL = 4


class ClientWorkFailed(errors.UserError, RuntimeError):
    """One client's work raised; `index` is its position in the round's list."""

    def __init__(self, index: int, error: BaseException):
        super().__init__(errors.first_line(error))
        self.index = index


class InProcessProcess:
    """A TFF learning (or evaluation) process run in this process.

    Args:
      process: a `tff.learning.templates.LearningProcess`.
      slot_devices: one TensorFlow device name per concurrent client.
      what: how errors name the process ("learning process").
      prefetch: whether each slot loads its next client's data (into memory,
        on a loader thread) while the current client trains.
      print_fn: where to say which device got which clients in the first
        round (later rounds log it at INFO level).
      clients_per_call: clients each slot trains per TensorFlow call (0:
        `AUTO_CLIENTS_PER_CALL`); 1 is the per-client path.
    """

    def __init__(
        self,
        process: tff.learning.templates.LearningProcess,
        slot_devices: Sequence[str],
        what: str = "learning process",
        prefetch: bool = True,
        print_fn: Callable[[str], None] | None = None,
        clients_per_call: int = 0,
    ):
        if not slot_devices:
            raise ValueError("at least one client slot is needed")
        self.process = process
        self._next_type = process.next.type_signature
        self._prefetch = prefetch
        self._what = what
        self._print_first_placement = print_fn
        mrf = compile_round(process.next, what)
        try:
            init = tff.backends.mapreduce.get_state_initialization_computation(process.initialize)
        except Exception as e:  # pylint: disable=broad-except
            raise InProcessUnsupported(
                f"the {what}'s initialize cannot run on --runtime=inprocess "
                f"({errors.first_line(e)}); use --runtime=cpp"
            ) from e
        self._initialize = _import(init, what)
        self._prepare = _import(mrf.prepare, what)
        self._zero = _import(mrf.zero, what)
        self._merge = _import(mrf.merge, what)
        self._report = _import(mrf.report, what)
        self._update = _import(mrf.update, what)
        self._get_weights = _import(process.get_model_weights, what)
        self._set_weights = _import(process.set_model_weights, what)
        work_result = mrf.work.type_signature.result
        self._num_update = tf_parts.num_leaves(work_result[forms.WORK_UPDATE_INDEX])
        num_client_leaves = tf_parts.num_leaves(self._next_type.parameter[1])
        self._slots = []
        for device in slot_devices:
            with tf.device(device):
                step = tf_parts.GroupedClientStep(
                    lambda: _import(mrf.work, what), _import(mrf.accumulate, what), self._num_update,
                    num_client_leaves,
                )
            self._slots.append(_Slot(device, step))
        self.clients_per_call = clients_per_call or AUTO_CLIENTS_PER_CALL
        self.grouping_failed = ""
        if self.clients_per_call > 1:
            try:
                # Whether this work groups at all, on the smallest group (0.6 s
                # to build for 4 here against about half that for 2); the other
                # sizes are traced when a round first needs them.
                self._slots[0].client_step.prepare(2)
            except Exception as e:  # pylint: disable=broad-except
                # Any tracing failure means the same: this work cannot share a
                # graph with other clients' work; run one client per call.
                self.grouping_failed = errors.first_line(e)
                self.clients_per_call = 1
        # Secure-sum parameters are constants of the computation: read once.
        self._secure: list[tuple[str, int, list[int]]] = []
        for part, index, kind in _SECURE_KINDS:
            count = tf_parts.num_leaves(work_result[index])
            if not count:
                continue
            params = [int(np.asarray(p)) for p in _import(getattr(mrf, part), what)()]
            if len(params) == 1 and count > 1:
                params = params * count
            self._secure.append((kind, count, params))
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=len(self._slots), thread_name_prefix="tffpipe-client"
        )
        self._loader = concurrent.futures.ThreadPoolExecutor(
            max_workers=len(self._slots), thread_name_prefix="tffpipe-prefetch"
        )
        self.last_assignment: dict[str, list[int]] = {}

    @property
    def uses_secure_sum(self) -> bool:
        """Whether rounds aggregate some values with (masked) secure sums."""
        return bool(self._secure)

    @property
    def slot_devices(self) -> list[str]:
        """The device of every concurrent client slot."""
        return [s.device for s in self._slots]

    # The LearningProcess interface used by the program loop.

    def initialize(self):
        """The initial server state, as TFF's runtime would return it."""
        return tf_parts.unflatten(self._initialize(), self.process.initialize.type_signature.result)

    def get_model_weights(self, state):
        """The model weights held in `state`."""
        return self._call(self._get_weights, self.process.get_model_weights, [state])

    def set_model_weights(self, state, weights):
        """`state` with its model weights replaced by `weights`."""
        return self._call(self._set_weights, self.process.set_model_weights, [state, weights])

    def get_hparams(self, state):
        """The hyperparameters held in `state` (learning rates, ...).

        Only called on resume, so imported then rather than at start.
        """
        return self._call(_import(self.process.get_hparams, self._what), self.process.get_hparams, [state])

    def set_hparams(self, state, hparams):
        """`state` with its hyperparameters replaced by `hparams`."""
        return self._call(
            _import(self.process.set_hparams, self._what), self.process.set_hparams, [state, hparams]
        )

    def _call(self, imported, comp, args):
        comp_type = comp.type_signature
        value = args[0] if len(args) == 1 else args
        # Values may come from Python (a float learning rate): cast each to its declared dtype.
        args = [
            tf.convert_to_tensor(leaf, dtype=leaf_type.dtype)
            for leaf, leaf_type in zip(
                tf_parts.flatten(value, comp_type.parameter), tf_parts.leaf_types(comp_type.parameter)
            )
        ]
        return tf_parts.unflatten(imported(*args), comp_type.result)

    def next(self, state, client_data: Sequence[Any]):
        """One round on `client_data` (one dataset, or structure of datasets, per client)."""
        state_leaves = _tensors(tf_parts.flatten(state, self._next_type.parameter[0]))
        with tf.device("/CPU:0"):
            client_input = self._prepare(*state_leaves)
        datasets = [tf_parts.flatten(value, self._next_type.parameter[1]) for value in client_data]
        moduli = self._moduli(len(datasets))
        accumulators, secure_inputs = self._run_clients(client_input, datasets, moduli)
        aggregate = accumulators[0]
        for other in accumulators[1:]:
            aggregate = self._merge(*aggregate, *other)
        report = self._report(*aggregate)
        secure_sums = self._secure_sums(secure_inputs, moduli)
        leaves = self._update(*state_leaves, *report, *secure_sums)
        return tf_parts.unflatten(leaves, self._next_type.result)

    def _run_clients(self, client_input, datasets, moduli):
        """Runs `work` for every client on the slots; accumulates per slot.

        Client i goes to slot i mod (number of slots), and slots are merged in
        order, so a round's result does not depend on thread timing (runs are
        reproducible and resumable to the same weights). Secure-sum inputs are
        masked by each client before they leave its slot.
        """
        masks = secure_masking.PairwiseMasks(len(datasets)) if self._secure else None
        secure_inputs: list[list[np.ndarray]] = [[] for _ in datasets]
        num_slots = len(self._slots)
        assignment = {
            k: list(range(k, len(datasets), num_slots)) for k in range(min(num_slots, len(datasets)))
        }

        size = self.clients_per_call

        def run_slot(slot: _Slot, clients: list[int]):
            with slot.lock, tf.device(slot.device):
                accumulator = self._zero()
                groups = [clients[i : i + size] for i in range(0, len(clients), size)]
                pending = self._load(groups[0], datasets)
                for n, group in enumerate(groups):
                    group_data = pending.result()
                    if n + 1 < len(groups):
                        pending = self._load(groups[n + 1], datasets)
                    accumulator, extras = self._run_group(slot, accumulator, group, group_data, client_input)
                    if masks is not None:
                        for index, extra in zip(group, extras):
                            secure_inputs[index] = self._mask(masks, moduli, index, extra)
                return accumulator

        futures = [self._pool.submit(run_slot, self._slots[k], ids) for k, ids in assignment.items()]
        accumulators = [f.result() for f in futures]
        self.last_assignment = {
            f"{self._slots[k].device} (slot {k})": ids for k, ids in assignment.items()
        }
        placement = "; ".join(f"{where}: clients {ids}" for where, ids in self.last_assignment.items())
        if self._print_first_placement is not None:
            self._print_first_placement(
                f"{self._what} placement (client i of a round goes to slot i mod "
                f"{num_slots}), first round: {placement}"
            )
            self._print_first_placement = None
        logging.info("in-process %s round: %s", self._what, placement)
        return accumulators, secure_inputs

    def _run_group(self, slot: _Slot, accumulator, group: list[int], group_data, client_input):
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

    def _load(self, group: list[int], datasets) -> concurrent.futures.Future:
        """The datasets of the clients in `group`, read into memory on a loader thread (if prefetching).

        The work reads the cached elements, which are exactly those the
        datasets' first pass produced, so training sees the same data. A
        client whose data fails to read is named (`ClientWorkFailed`).
        """
        if not self._prefetch:
            done = concurrent.futures.Future()
            done.set_result([datasets[i] for i in group])
            return done

        def read(index: int) -> list[tf.data.Dataset]:
            try:
                return [_read_into_memory(d) for d in datasets[index]]
            except (tf.errors.OpError, ValueError, TypeError) as error:
                raise ClientWorkFailed(index, error) from error

        return self._loader.submit(lambda: [read(i) for i in group])

    def _moduli(self, num_clients: int) -> list[int]:
        """Per secure value: a modulus under which the round's sum is exact
        (empty without secure sums)."""
        return [
            secure_masking.exact_sum_modulus(kind, bound, num_clients)
            for kind, _, params in self._secure
            for bound in params
        ]

    @staticmethod
    def _mask(masks, moduli, client: int, values) -> list[np.ndarray]:
        return [
            masks.mask(client, leaf, values[leaf].numpy(), modulus)
            for leaf, modulus in enumerate(moduli)
        ]

    def _secure_sums(self, secure_inputs, moduli) -> list[tf.Tensor]:
        """The server's side: adds masked vectors; sees nothing else."""
        if not moduli:
            return []
        specs = self._update.input_specs[-len(moduli) :]
        return [
            tf.constant(
                secure_masking.masked_sum([c[leaf] for c in secure_inputs], modulus).astype(
                    specs[leaf].dtype.as_numpy_dtype
                )
            )
            for leaf, modulus in enumerate(moduli)
        ]

    def close(self) -> None:
        """Stops the client and loader threads."""
        self._pool.shutdown(wait=True)
        self._loader.shutdown(wait=True)


def _read_into_memory(dataset: tf.data.Dataset) -> tf.data.Dataset:
    # One pass fills the in-memory cache that later iterators of `cached`
    # (the client's work) replay. An eager loop: a tf.function taking the
    # dataset cost 17 ms a call here against 5 ms.
    with tf.device("/CPU:0"):
        cached = dataset.cache()
        for _ in cached:
            pass
    return cached


def _tensors(leaves: Sequence[Any]) -> list[tf.Tensor]:
    return [tf.convert_to_tensor(leaf) for leaf in leaves]


def reads_ahead(prefetch_clients: str, slot_devices: Sequence[str]) -> bool:
    """Whether slots read their next client while one trains.

    "auto" does it on GPUs only: on the CPU the loader competes with training
    for the same cores (digits, 2 cores: 5,000 against 6,170 examples/s).
    """
    if prefetch_clients == "auto":
        return any(":GPU:" in device.upper() for device in slot_devices)
    return prefetch_clients == "on"


def build(
    process: tff.learning.templates.LearningProcess,
    slot_devices: Sequence[str],
    what: str = "learning process",
    print_fn: Callable[[str], None] | None = None,
    prefetch_clients: str = "auto",
    clients_per_call: int = 0,
) -> InProcessProcess:
    """`process` on the in-process runtime, with a line about placement.

    Args:
      process: the TFF process.
      slot_devices: one TensorFlow device name per concurrent client.
      what: how messages name the process.
      print_fn: where the placement lines go (None: nowhere).
      prefetch_clients: "on", "off", or "auto": on when a slot is a GPU.
      clients_per_call: clients per TensorFlow call (0: automatic).
    """
    prefetch = reads_ahead(prefetch_clients, slot_devices)
    runtime = InProcessProcess(
        process, slot_devices, what, prefetch=prefetch, print_fn=print_fn, clients_per_call=clients_per_call
    )
    if print_fn is not None:
        devices = sorted(set(slot_devices))
        per_call = runtime.clients_per_call
        print_fn(
            f"runtime inprocess: {what} on {len(slot_devices)} client slot(s) over "
            f"{', '.join(devices)}, "
            + (f"up to {per_call} clients per TensorFlow call" if per_call > 1 else "one client per TensorFlow call")
            + (f" (its client work cannot be grouped: {runtime.grouping_failed})" if runtime.grouping_failed else "")
            + ("; next clients read ahead" if prefetch else "")
            + ("; secure sums use pairwise masking" if runtime.uses_secure_sum else "")
        )
    return runtime
