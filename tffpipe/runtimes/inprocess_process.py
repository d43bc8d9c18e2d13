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

Rounds of enough clients of a process with a stacked form (FedAvg, plain
SGD, a stackable Keras model) run that form's process instead: clients train
together on stacked copies of the model (`stacked_clients.py`) and `work`
only passes each client's result through the aggregation's client part.

TFF 0.87 has no Python executor any more, which is why this is written here.
"""

from typing import Any
from collections.abc import Callable, Sequence

from absl import logging
import tensorflow as tf
import tensorflow_federated as tff
from tffpipe.compat import forms

from tffpipe import errors
from tffpipe.aggregation.protocols import base as protocols_base
from tffpipe.aggregation.protocols import masking
from tffpipe.aggregation.protocols import pairwise_masks
from tffpipe.learning import stacked
from tffpipe.runtimes import client_half
from tffpipe.runtimes import round_parts
from tffpipe.runtimes import stacked_clients
from tffpipe.runtimes import stacked_training as stacked_training_lib
from tffpipe.runtimes import tf_parts


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
        stacked_training: str = "off",
    ):
        self.process = process
        self._what = what
        self._print_first_placement = print_fn
        try:
            init = tff.backends.mapreduce.get_state_initialization_computation(process.initialize)
        except Exception as e:
            raise InProcessUnsupported(
                f"the {what}'s initialize cannot run on --runtime=inprocess ({errors.first_line(e)}); use --runtime=cpp"
            ) from e
        self._initialize = _import(init, what)
        self._get_weights = _import(process.get_model_weights, what)
        self._set_weights = _import(process.set_model_weights, what)
        mrf = compile_round(process.next, what)
        if clients is None:
            half = client_half.ClientHalf.of(mrf, slot_devices, what, prefetch, clients_per_call)
        else:
            half = clients(mrf)
        self._plain = round_parts.RoundParts.of(mrf, process.next.type_signature, half, what)
        self.stacked_setting = stacked_training
        self.stacked: stacked_clients.StackedClients | None = None
        self.stacked_reason = ""
        self._stacked_round: round_parts.RoundParts | None = None
        # Built at the first round that would use it (it compiles a second
        # process, about 2.4 s for digits): (slots, clients per call).
        self._stacked_pending = (
            (list(slot_devices), clients_per_call) if stacked_training != "off" and clients is None else None
        )
        self._print_fn = print_fn
        self._protocol_factory = protocol or masking.MaskingProtocol
        self.protocol = self._protocol_factory() if self._plain.secure else masking.MaskingProtocol()

    def _stack(self, slot_devices: Sequence[str], clients_per_call: int) -> round_parts.RoundParts | None:
        """Rounds of the stacked form's process, or None and why not in `stacked_reason`.

        Its rounds continue the process's: same state, clients' data their
        training results (`learning/stacked.py`).
        """
        form = stacked.form_of(self.process)
        if isinstance(form, str):
            self.stacked_reason = form
            return None
        try:
            mrf = compile_round(form.process.next, self._what)
            # Its clients' data are tensors in memory already: nothing to read ahead.
            half = client_half.ClientHalf.of(mrf, slot_devices, self._what, False, clients_per_call)
            self.stacked = stacked_clients.StackedClients(form)
            return round_parts.RoundParts.of(mrf, form.process.next.type_signature, half, self._what)
        except (InProcessUnsupported, stacked_training_lib.NotStackable) as e:
            self.stacked, self.stacked_reason = None, errors.first_line(e)
            return None

    def say_stacking_to(self, print_fn: Callable[[str], None]) -> None:
        """Where the line saying whether clients train stacked goes, at the first round that could."""
        self._print_fn = print_fn

    def _parts_for(self, num_clients: int) -> round_parts.RoundParts:
        """The stacked round when it applies to a round of `num_clients` clients, else the plain one."""
        wanted = self.stacked_setting == "on" or num_clients >= stacked_clients.STACKED_MIN_CLIENTS
        if wanted and self._stacked_pending is not None:
            self._stacked_round = self._stack(*self._stacked_pending)
            self._stacked_pending = None
            if self._stacked_round is not None and self._stacked_round.secure and not self._plain.secure:
                self.protocol = self._protocol_factory()
            if self._print_fn is not None:
                self._print_fn(f"runtime inprocess: {self._what}: {stacked_note(self)}")
        if wanted and self._stacked_round is not None:
            return self._stacked_round
        return self._plain

    @property
    def clients(self) -> Any:
        """The client half of rounds of TFF's client work."""
        return self._plain.clients

    @property
    def uses_secure_sum(self) -> bool:
        """Whether rounds aggregate some values with (masked) secure sums."""
        return bool(self._plain.secure)

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
        parts = self._parts_for(len(client_data))
        state_leaves = _tensors(tf_parts.flatten(state, parts.next_type.parameter[0]))
        with tf.device("/CPU:0"):
            client_input = parts.prepare(*state_leaves)
        moduli = self._moduli(parts, len(client_data))
        keys = (
            self.protocol.round_keys(len(client_data), moduli, self._largest_sums(parts, len(client_data)))
            if parts.secure
            else None
        )
        if parts is self._stacked_round:
            assert self.stacked is not None
            client_data = self.stacked.client_results(state, client_data)
        accumulators, partial_sums = parts.clients.run_round(client_input, client_data, keys, moduli)
        self._say_placement(parts.clients)
        report = parts.report(*client_half.merge_all(parts.merge, accumulators))
        secure_sums = self._secure_sums(parts, partial_sums, moduli)
        leaves = parts.update(*state_leaves, *report, *secure_sums)
        return tf_parts.unflatten(leaves, parts.next_type.result)

    def _say_placement(self, clients: Any) -> None:
        placement = clients.describe()
        if self._print_first_placement is not None:
            self._print_first_placement(f"{self._what} placement ({clients.placement_rule}), first round: {placement}")
            self._print_first_placement = None
        logging.info("in-process %s round: %s", self._what, placement)

    def _moduli(self, parts: round_parts.RoundParts, num_clients: int) -> list[int]:
        """Per secure value: a modulus under which the round's sum is exact
        (empty without secure sums)."""
        return [
            pairwise_masks.exact_sum_modulus(kind, bound, num_clients)
            for kind, _, params in parts.secure
            for bound in params
        ]

    def _largest_sums(self, parts: round_parts.RoundParts, num_clients: int) -> list[int]:
        """Per secure value: the largest the round's sum can be before its modulus."""
        return [
            pairwise_masks.largest_sum(kind, bound, num_clients) for kind, _, params in parts.secure for bound in params
        ]

    def _secure_sums(self, parts: round_parts.RoundParts, partial_sums, moduli) -> list[tf.Tensor]:
        """The server's side: the protocol's sum of the protected partial sums; sees nothing else."""
        if not moduli:
            return []
        specs = parts.update.input_specs[-len(moduli) :]
        sums = self.protocol.total(partial_sums, moduli, [tuple(spec.shape) for spec in specs])
        return [tf.constant(total.astype(spec.dtype.as_numpy_dtype)) for total, spec in zip(sums, specs)]

    def close(self) -> None:
        """Stops the client half (threads, actors) and the secure protocol's key holder."""
        try:
            self.clients.close()
            if self._stacked_round is not None:
                self._stacked_round.clients.close()
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
    stacked_training: str = "off",
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
      stacked_training: where the process has a stacked form, "auto" trains
        the clients of rounds of `stacked_clients.STACKED_MIN_CLIENTS` or
        more on stacked copies of the model, "on" those of every round, "off"
        none.
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
        stacked_training=stacked_training,
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


def stacked_note(runtime: InProcessProcess) -> str:
    """Whether and when a runtime's rounds train clients stacked, or why not."""
    if runtime.stacked is not None:
        rounds = (
            "every round"
            if runtime.stacked_setting == "on"
            else f"rounds of {stacked_clients.STACKED_MIN_CLIENTS} clients or more"
        )
        return (
            f"in {rounds}, clients train on stacked copies of the model, up to "
            f"{runtime.stacked.clients_per_call} per call, then pass through the aggregation's client part"
        )
    return f"clients do not train stacked ({runtime.stacked_reason})"
