"""Runs a TFF TensorFlow computation in this process, as a TensorFlow function.

TFF 0.87 only executes computations in its C++ worker. A TensorFlow
computation is a serialized graph with bindings for its parameter and result;
`ImportedComputation` imports that graph once into a `tf.compat.v1.wrap_function`
and prunes it into eager-callable functions, so every later call is a plain
TensorFlow function call on whatever device the caller chooses. TFF has no
public API for this; TFF's own (removed) eager executor did the same.

Values cross the boundary as flat lists of tensors, in the order of the leaves
of the computation's TFF type; `flatten` and `unflatten` convert between those
lists and the nested Python containers TFF returns.
"""

import itertools
from typing import Any
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from tffpipe.compat import (
    computation_impl,
    computation_types,
    graph_utils,
    serialization_utils,
    structure,
    tensorflow_utils,
    type_conversions,
)

_instance_ids = itertools.count()


class NotTensorFlowError(TypeError):
    """The computation is not a TensorFlow computation."""


def is_tensorflow(comp: tff.Computation) -> bool:
    """Whether `comp` is a single TensorFlow computation (no federated parts)."""
    proto = computation_impl.ConcreteComputation.get_proto(comp)
    return proto.WhichOneof("computation") == "tensorflow"


class ImportedComputation:
    """One TFF TensorFlow computation, imported once and callable many times.

    The imported graph owns its variables (resource variables under shared
    names unique to the instance), so one instance must not run twice at the
    same time: give every concurrent caller its own instance.
    """

    def __init__(self, comp: tff.Computation):
        if not is_tensorflow(comp):
            raise NotTensorFlowError(f"not a TensorFlow computation: {comp.type_signature}")
        if _has_sequence(comp.type_signature.result):
            raise NotTensorFlowError("computations returning datasets are not supported")
        proto = computation_impl.ConcreteComputation.get_proto(comp).tensorflow
        graph_def = _with_unique_names(
            serialization_utils.unpack_graph_def(proto.graph_def), f"_tffpipe{next(_instance_ids)}"
        )
        self.type_signature = comp.type_signature
        parameter_type = comp.type_signature.parameter
        parts: dict[str, Any] = {}

        def import_graph():
            # What TFF's `tensorflow_utils.deserialize_and_call_tf_computation`
            # does, without its check of the results' static shapes, which
            # rejects some valid graphs (DATASET_ITERATOR training loops).
            graph = tf.compat.v1.get_default_graph()
            feeds = []
            input_map = {}
            if parameter_type is not None:
                _, binding = tensorflow_utils.stamp_parameter_in_graph("arg", parameter_type, graph)
                feeds = [
                    graph.get_tensor_by_name(n) for n in tensorflow_utils.extract_tensor_names_from_binding(binding)
                ]
                names = tensorflow_utils.extract_tensor_names_from_binding(proto.parameter)
                input_map = graph_utils.add_control_dep_mappings(dict(zip(names, feeds)))
            if proto.session_token_tensor_name:
                input_map[proto.session_token_tensor_name] = tf.constant("tffpipe")
            results = tensorflow_utils.extract_tensor_names_from_binding(proto.result)
            init = [proto.initialize_op] if proto.initialize_op else []
            imported = tf.graph_util.import_graph_def(graph_def, input_map, results + init, name="subcomputation")
            parts["feeds"] = feeds
            parts["fetches"] = [tf.identity(t) for t in imported[: len(results)]]
            parts["init"] = imported[len(results)] if init else None
            return parts["fetches"]

        wrapped = tf.compat.v1.wrap_function(import_graph, [])
        pruned = wrapped.prune(parts["feeds"], parts["fetches"])
        self.input_specs = [tf.TensorSpec(t.shape, t.dtype) for t in parts["feeds"]]
        # Calling the pruned function directly costs about 20 ms per call in
        # TF 2.14: binding its inputs formats every argument tensor as text.
        # A tf.function with a fixed signature binds once, at tracing.
        self._body = tf.function(
            pruned,
            input_signature=self.input_specs,
            autograph=False,
        )
        # Traced here, once per instance: tracing on first call would make
        # TensorFlow warn about "retracing" once several instances (they share
        # the lambda's code) have been called.
        self._body.get_concrete_function()
        # The initializer must finish before the body reads any variable; a
        # control dependency on the outputs alone would not order the reads.
        self._init = wrapped.prune([], [parts["init"]]) if parts["init"] is not None else None
        self.num_inputs = len(parts["feeds"])
        self.num_outputs = len(parts["fetches"])

    def __call__(self, *flat_args) -> list[tf.Tensor]:
        """Runs the computation on flat arguments; returns flat results.

        Datasets are passed as `tf.data.Dataset`s (their variant tensor is fed).
        """
        if len(flat_args) != self.num_inputs:
            raise ValueError(f"expected {self.num_inputs} arguments, got {len(flat_args)}")
        return self.call(*feeds_of(flat_args))

    def call(self, *feeds) -> list[tf.Tensor]:
        """Runs initializer then body on tensors; also inside another tf.function.

        Inside a tf.function, automatic control dependencies order the two
        calls, so the body reads initialized variables.
        """
        if self._init is not None:
            self._init()
        return list(self._body(*feeds))


def feeds_of(flat_args) -> list:
    """Arguments as tensors: a `tf.data.Dataset` becomes its variant tensor."""
    return [a._variant_tensor if isinstance(a, tf.data.Dataset) else a for a in flat_args]


class GroupedClientStep:
    """`work` then `accumulate` for K clients in one TensorFlow call.

    `step(accumulator, clients, client_input)` runs each client's work and
    accumulates the updates in client order, in one call of a traced function,
    so Python and dispatch costs are paid once per group instead of once per
    client (`inprocess_process.AUTO_CLIENTS_PER_CALL` has the figures). Each position in a group has its own imported
    copy of `work`: an imported computation's variables are re-initialised at
    every call, and the imported functions hide them from TensorFlow's
    automatic control dependencies, so two clients sharing one copy in one
    graph would interleave. One traced function per group size, built on
    first use.
    """

    def __init__(
        self,
        make_work: Callable[[], ImportedComputation],
        accumulate: ImportedComputation,
        num_update: int,
        num_client_leaves: int,
    ):
        self._make_work = make_work
        self._works: list[ImportedComputation] = [make_work()]
        self._accumulate = accumulate
        self._num_update = num_update
        self._num_accumulator = accumulate.num_inputs - num_update
        self._num_client_leaves = num_client_leaves
        self._traced: dict[Any, Any] = {}

    @property
    def num_extra(self) -> int:
        """Work outputs after the update, per client (secure-sum inputs)."""
        return self._works[0].num_outputs - self._num_update

    def __call__(self, accumulator: Sequence[Any], clients: Sequence[Sequence[Any]], client_input: Sequence[Any]):
        """(new accumulator, [extra outputs of each client])."""
        outputs = list(
            self._function(len(clients))(
                *accumulator, *[leaf for client in clients for leaf in feeds_of(client)], *client_input
            )
        )
        return self._split_outputs(outputs, len(clients))

    def by_keys(
        self,
        accumulator: Sequence[Any],
        build: Callable[[Any, Any], tf.data.Dataset],
        client_ids: Sequence[str],
        seeds: Sequence[int],
        client_input: Sequence[Any],
    ):
        """Like calling the step, with each client's dataset built inside the call.

        `build(client_id, seed)` is a traced dataset function (the task's),
        so a group costs one TensorFlow call instead of one Python dataset
        construction per client plus the call. Same datasets, same results.
        """
        outputs = list(
            self._keyed_function(len(client_ids), build)(
                *accumulator,
                tf.constant(list(client_ids), tf.string),
                tf.constant(list(seeds), tf.int64),
                *client_input,
            )
        )
        return self._split_outputs(outputs, len(client_ids))

    def _split_outputs(self, outputs: list, size: int):
        accumulator, rest = outputs[: self._num_accumulator], outputs[self._num_accumulator :]
        extra = self.num_extra
        return accumulator, [rest[i * extra : (i + 1) * extra] for i in range(size)]

    def _train_group(self, works, accumulator, clients, client_input) -> list:
        """Traced body of a group: each client's work on its own copy, accumulated in order; then the extras."""
        accumulator, extra = list(accumulator), []
        for work, client in zip(works, clients):
            outputs = work.call(*client, *client_input)
            accumulator = self._accumulate.call(*accumulator, *outputs[: self._num_update])
            extra.extend(outputs[self._num_update :])
        return [*accumulator, *extra]

    def _keyed_function(self, size: int, build):
        key = ("keys", size, id(build))
        if key not in self._traced:
            self._function(size)  # the work copies
            works = self._works[:size]
            n_acc = self._num_accumulator
            input_specs = works[0].input_specs[self._num_client_leaves :]

            def step(*args):
                ids, seeds = args[n_acc], args[n_acc + 1]
                clients = [feeds_of([build(ids[k], seeds[k])]) for k in range(size)]
                return self._train_group(works, args[:n_acc], clients, args[n_acc + 2 :])

            traced = tf.function(
                step,
                input_signature=self._accumulate.input_specs[:n_acc]
                + [tf.TensorSpec([size], tf.string), tf.TensorSpec([size], tf.int64)]
                + input_specs,
                autograph=False,
            )
            traced.get_concrete_function()
            # Keeps `build` alive with its entry, so its id is never reused.
            self._traced[key] = (traced, build)
        return self._traced[key][0]

    def prepare(self, size: int) -> None:
        """Imports and traces what groups of `size` need, now (raises what that raises)."""
        self._function(size)

    def _function(self, size: int):
        if size not in self._traced:
            while len(self._works) < size:
                self._works.append(self._make_work())
            works = self._works[:size]
            client_specs = works[0].input_specs[: self._num_client_leaves]
            input_specs = works[0].input_specs[self._num_client_leaves :]
            n_acc, n_leaves = self._num_accumulator, self._num_client_leaves

            def step(*args):
                leaves = args[n_acc : n_acc + size * n_leaves]
                clients = [leaves[k * n_leaves : (k + 1) * n_leaves] for k in range(size)]
                return self._train_group(works, args[:n_acc], clients, args[n_acc + size * n_leaves :])

            traced = tf.function(
                step,
                input_signature=self._accumulate.input_specs[:n_acc] + client_specs * size + input_specs,
                autograph=False,
            )
            traced.get_concrete_function()
            self._traced[size] = traced
        return self._traced[size]


def _with_unique_names(graph_def, suffix: str):
    """`graph_def` with its functions' names and shared names ending in `suffix`.

    Importing a graph registers its function library in the process-wide
    eager context, where one name can have only one definition. Separately
    serialized computations reuse names for different bodies (seen with
    FedAdam: `__forward_predict_on_batch_N` in two parts). Shared names
    (variables, tables) must differ too, or two imported copies would share
    their variables.
    """
    names = {f.signature.name for f in graph_def.library.function}
    renamed = {name: name + suffix for name in names}

    def rename_attr(value):
        if value.HasField("func") and value.func.name in renamed:
            value.func.name = renamed[value.func.name]
        for func in value.list.func:
            if func.name in renamed:
                func.name = renamed[func.name]

    def rename_nodes(nodes):
        for node in nodes:
            if node.op in renamed:
                node.op = renamed[node.op]
            for value in node.attr.values():
                rename_attr(value)

    rename_nodes(graph_def.node)
    for function in graph_def.library.function:
        function.signature.name = renamed[function.signature.name]
        rename_nodes(function.node_def)
        for value in function.attr.values():
            rename_attr(value)
    for gradient in graph_def.library.gradient:
        gradient.function_name = renamed.get(gradient.function_name, gradient.function_name)
        gradient.gradient_func = renamed.get(gradient.gradient_func, gradient.gradient_func)
    for node in graph_def.node:
        shared_name = node.attr.get("shared_name")
        if shared_name is not None:
            # TF forbids shared names that start with an underscore.
            shared_name.s = (shared_name.s or b"shared") + suffix.encode()
    return graph_def


def _has_sequence(value_type) -> bool:
    if isinstance(value_type, computation_types.SequenceType):
        return True
    if isinstance(value_type, computation_types.StructType):
        return any(_has_sequence(t) for _, t in structure.iter_elements(value_type))
    return False


def _children(value, struct_type: computation_types.StructType) -> list[Any]:
    """The elements of `value` in the order of `struct_type`'s elements."""
    names = [name for name, _ in structure.iter_elements(struct_type)]
    if isinstance(value, structure.Struct):
        return [value[i] for i in range(len(names))]
    if isinstance(value, dict):
        return [value[n] for n in names] if all(names) else list(value.values())
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return list(value)
    if all(names):  # attrs classes, namedtuples, dataclasses
        return [getattr(value, n) for n in names]
    return list(value)


def flatten(value, value_type: computation_types.Type) -> list[Any]:
    """The leaves of `value` (nested containers) in the order of `value_type`."""
    if isinstance(value_type, computation_types.FederatedType):
        value_type = value_type.member
    if isinstance(value_type, computation_types.StructType):
        leaves = []
        for child, (_, child_type) in zip(_children(value, value_type), structure.iter_elements(value_type)):
            leaves.extend(flatten(child, child_type))
        return leaves
    return [value]


def num_leaves(value_type: computation_types.Type) -> int:
    """How many tensors (or datasets) a value of `value_type` flattens to."""
    if isinstance(value_type, computation_types.FederatedType):
        value_type = value_type.member
    if isinstance(value_type, computation_types.StructType):
        return sum(num_leaves(t) for _, t in structure.iter_elements(value_type))
    return 1


def leaf_types(value_type: computation_types.Type) -> list[computation_types.Type]:
    """The types of `flatten`'s leaves, in its order."""
    if isinstance(value_type, computation_types.FederatedType):
        value_type = value_type.member
    if isinstance(value_type, computation_types.StructType):
        return [t for _, child in structure.iter_elements(value_type) for t in leaf_types(child)]
    return [value_type]


def unflatten(leaves: Sequence[Any], value_type: computation_types.Type):
    """Nested Python containers of numpy values, as TFF's runtimes return them."""
    if isinstance(value_type, computation_types.FederatedType):
        value_type = value_type.member
    iterator = iter(leaves)
    packed = _pack(iterator, value_type)
    return type_conversions.type_to_py_container(packed, value_type)


def _pack(leaves: Iterator[Any], value_type):
    if isinstance(value_type, computation_types.FederatedType):
        value_type = value_type.member
    if isinstance(value_type, computation_types.StructType):
        return structure.Struct([(name, _pack(leaves, t)) for name, t in structure.iter_elements(value_type)])
    leaf = next(leaves)
    return leaf.numpy() if isinstance(leaf, tf.Tensor) else np.asarray(leaf)
