"""The in-process runtime: a learning process's round as TensorFlow functions.

`process.next` is compiled to TFF's `MapReduceForm` (TFF's own compiler), and
its TensorFlow parts run here, in the launcher's process, on TensorFlow
devices of our choosing:

  prepare(server state)                         -> client input (broadcast)
  work(client dataset, client input)            -> client update, per client
  zero / accumulate / merge / report            -> the aggregate
  secure-sum parts                              -> the secure protocol's sums (masking, CKKS)
  update(server state, aggregates)              -> new state and metrics

Each part is imported once (`tf_parts.ImportedComputation`); `work` and
`accumulate` once per concurrent client slot, each slot on its device. The
object looks like a TFF `LearningProcess` to the program loop (`initialize`,
`next`, `get_model_weights`, `set_model_weights`), returns the same Python
structures as TFF's runtime, so checkpoints are interchangeable.

TFF 0.87 has no Python executor any more, which is why this is written here.
"""

from typing import Any
from collections.abc import Callable, Sequence

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from tffpipe.compat import forms

from tffpipe import errors
from tffpipe.aggregation.protocols import base as protocols_base
from tffpipe.aggregation.protocols import masking
from tffpipe.aggregation.protocols import pairwise_masks
from tffpipe.runtimes import client_half
from tffpipe.runtimes import tf_parts

_SECURE_KINDS = (
    # (MapReduceForm part giving the parameter, work output index, kind)
    ("secure_sum_bitwidth", forms.WORK_SECAGG_BITWIDTH_INDEX, "bitwidth"),
    ("secure_sum_max_input", forms.WORK_SECAGG_MAX_INPUT_INDEX, "max_input"),
    ("secure_modular_sum_modulus", forms.WORK_SECAGG_MODULUS_INDEX, "modular"),
)


def compile_round(computation: tff.Computation, what: str):
    """`computation` as a MapReduceForm.

    Raises:
      InProcessUnsupported: with TFF's reason and the way out.
    """
    try:
        return tff.backends.mapreduce.get_map_reduce_form_for_computation(computation)
    except Exception as e:
        # TFF's compiler raises many types (ValueError, TypeError, compiler
        # errors); all mean the same thing to the user.
        raise InProcessUnsupported(
            f"the {what} cannot run on --runtime=inprocess: TFF cannot compile its "
            f"round to a MapReduceForm ({errors.first_line(e)}); use --runtime=cpp"
        ) from e


# Re-exported: callers name them through this module.
InProcessUnsupported = client_half.InProcessUnsupported
ClientWorkFailed = client_half.ClientWorkFailed
AUTO_CLIENTS_PER_CALL = client_half.AUTO_CLIENTS_PER_CALL
_import = client_half.import_part


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
        `client_half.AUTO_CLIENTS_PER_CALL`); 1 is the per-client path.
      clients: runs the client half instead of slots on this machine (given
        the MapReduceForm; `ray_actors.RayClients`): `slot_devices`,
        `prefetch` and `clients_per_call` are then unused. By default a
        `client_half.ClientHalf`; both offer `run_round`, `describe`,
        `placement_rule`, `slot_devices`, `clients_per_call`,
        `grouping_failed`, `last_assignment` and `close`.
      protocol: makes the protocol that executes secure sums, called only
        when the process has any (default: pairwise masking).
    """

    # `next` takes `program.client_sources.ClientDatasets` as well as lists.
    accepts_client_sources = True

    def __init__(
        self,
        process: tff.learning.templates.LearningProcess,
        slot_devices: Sequence[str],
        what: str = "learning process",
        prefetch: bool = True,
        print_fn: Callable[[str], None] | None = None,
        clients_per_call: int = 0,
        clients: Callable[[forms.MapReduceForm], Any] | None = None,
        protocol: Callable[[], protocols_base.SecureProtocol] | None = None,
    ):
        self.process = process
        self._next_type = process.next.type_signature
        self._what = what
        self._print_first_placement = print_fn
        mrf = compile_round(process.next, what)
        try:
            init = tff.backends.mapreduce.get_state_initialization_computation(process.initialize)
        except Exception as e:
            raise InProcessUnsupported(
                f"the {what}'s initialize cannot run on --runtime=inprocess ({errors.first_line(e)}); use --runtime=cpp"
            ) from e
        self._initialize = _import(init, what)
        self._prepare = _import(mrf.prepare, what)
        self._merge = _import(mrf.merge, what)
        self._report = _import(mrf.report, what)
        self._update = _import(mrf.update, what)
        self._get_weights = _import(process.get_model_weights, what)
        self._set_weights = _import(process.set_model_weights, what)
        if clients is None:
            self.clients = client_half.ClientHalf.of(mrf, slot_devices, what, prefetch, clients_per_call)
        else:
            self.clients = clients(mrf)
        # Secure-sum parameters are constants of the computation: read once.
        work_result = mrf.work.type_signature.result
        self._secure: list[tuple[str, int, list[int]]] = []
        for part, index, kind in _SECURE_KINDS:
            count = tf_parts.num_leaves(work_result[index])
            if not count:
                continue
            params = [int(np.asarray(p)) for p in _import(getattr(mrf, part), what)()]
            if len(params) == 1 and count > 1:
                params = params * count
            self._secure.append((kind, count, params))
        self.protocol = (protocol or masking.MaskingProtocol)() if self._secure else masking.MaskingProtocol()

    @property
    def uses_secure_sum(self) -> bool:
        """Whether rounds aggregate some values with (masked) secure sums."""
        return bool(self._secure)

    @property
    def slot_devices(self) -> list[str]:
        """The device of every concurrent client slot."""
        return self.clients.slot_devices

    @property
    def clients_per_call(self) -> int:
        return self.clients.clients_per_call

    @property
    def grouping_failed(self) -> str:
        """Why client work runs one client per call, if it cannot be grouped."""
        return self.clients.grouping_failed

    @property
    def last_assignment(self) -> dict[str, list[int]]:
        """Which slot trained which clients (by position) in the last round."""
        return self.clients.last_assignment

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
        return self._call(_import(self.process.set_hparams, self._what), self.process.set_hparams, [state, hparams])

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
        moduli = self._moduli(len(client_data))
        keys = (
            self.protocol.round_keys(len(client_data), moduli, self._largest_sums(len(client_data)))
            if self._secure
            else None
        )
        accumulators, partial_sums = self.clients.run_round(client_input, client_data, keys, moduli)
        self._say_placement()
        report = self._report(*client_half.merge_all(self._merge, accumulators))
        secure_sums = self._secure_sums(partial_sums, moduli)
        leaves = self._update(*state_leaves, *report, *secure_sums)
        return tf_parts.unflatten(leaves, self._next_type.result)

    def _say_placement(self) -> None:
        placement = self.clients.describe()
        if self._print_first_placement is not None:
            self._print_first_placement(
                f"{self._what} placement ({self.clients.placement_rule}), first round: {placement}"
            )
            self._print_first_placement = None
        logging.info("in-process %s round: %s", self._what, placement)

    def _moduli(self, num_clients: int) -> list[int]:
        """Per secure value: a modulus under which the round's sum is exact
        (empty without secure sums)."""
        return [
            pairwise_masks.exact_sum_modulus(kind, bound, num_clients)
            for kind, _, params in self._secure
            for bound in params
        ]

    def _largest_sums(self, num_clients: int) -> list[int]:
        """Per secure value: the largest the round's sum can be before its modulus."""
        return [
            pairwise_masks.largest_sum(kind, bound, num_clients) for kind, _, params in self._secure for bound in params
        ]

    def _secure_sums(self, partial_sums, moduli) -> list[tf.Tensor]:
        """The server's side: the protocol's sum of the protected partial sums; sees nothing else."""
        if not moduli:
            return []
        specs = self._update.input_specs[-len(moduli) :]
        sums = self.protocol.total(partial_sums, moduli, [tuple(spec.shape) for spec in specs])
        return [tf.constant(total.astype(spec.dtype.as_numpy_dtype)) for total, spec in zip(sums, specs)]

    def close(self) -> None:
        """Stops the client half (threads, actors) and the secure protocol's key holder."""
        try:
            self.clients.close()
        finally:
            self.protocol.close()


def _tensors(leaves: Sequence[Any]) -> list[tf.Tensor]:
    return [tf.convert_to_tensor(leaf) for leaf in leaves]


def build(
    process: tff.learning.templates.LearningProcess,
    slot_devices: Sequence[str],
    what: str = "learning process",
    print_fn: Callable[[str], None] | None = None,
    prefetch_clients: str = "auto",
    clients_per_call: int = 0,
    protocol: Callable[[], protocols_base.SecureProtocol] | None = None,
) -> InProcessProcess:
    """`process` on the in-process runtime, with a line about placement.

    Args:
      process: the TFF process.
      slot_devices: one TensorFlow device name per concurrent client.
      what: how messages name the process.
      print_fn: where the placement lines go (None: nowhere).
      prefetch_clients: "on", "off", or "auto": on when a slot is a GPU.
      clients_per_call: clients per TensorFlow call (0: automatic).
      protocol: makes the secure-sum protocol (default: pairwise masking).
    """
    prefetch = client_half.reads_ahead(prefetch_clients, slot_devices)
    runtime = InProcessProcess(
        process,
        slot_devices,
        what,
        prefetch=prefetch,
        print_fn=print_fn,
        clients_per_call=clients_per_call,
        protocol=protocol,
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
            + (f"; secure sums use {runtime.protocol.summary}" if runtime.uses_secure_sum else "")
        )
        if runtime.uses_secure_sum and what == "learning process":
            print_fn(runtime.protocol.note("inprocess"))
    return runtime
