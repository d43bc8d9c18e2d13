"""Update-poisoning attacks as a wrapper around an algorithm's client work.

TFF's client work (`tff.learning.templates.build_model_delta_client_work`
and FedProx's) trains and returns each client's model delta; it knows
nothing of attackers, and TFF has no hook between training and aggregation.
This wrapper runs it unchanged and then replaces the attackers' deltas with
the attack's. Which clients attack travels with their data: each client's
data is `{"data": its batches, "attacker": one int64}`, 0 for an honest
client and a per-round seed for an attacker (a structure of sequences, which
TFF's learning processes accept), so the attack runs inside the round on
every runtime: TFF's C++ runtime, the in-process MapReduceForm and remote
workers.

Attacks that need the benign updates' statistics (ALIE) keep the previous
round's per-coordinate mean and standard deviation of the honest updates in
the client work's state and broadcast them with it.
"""

import collections

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tffpipe.attacks import base

TOKEN_TYPE = tff.SequenceType(tff.TensorType(np.int64))


def client_data(dataset: tf.data.Dataset, token: int) -> collections.OrderedDict:
    """One client's data for an attacked process: its batches and its attacker token (0: honest)."""
    return collections.OrderedDict(data=dataset, attacker=tf.data.Dataset.from_tensors(np.int64(token)))


def wrap(
    inner: tff.learning.templates.ClientWorkProcess, attack: base.UpdateAttack, options: base.UpdateOptions
) -> tff.learning.templates.ClientWorkProcess:
    """`inner` whose attackers send `attack`'s update instead of their honest one.

    Args:
      inner: a client work whose result's `update` is the model delta.
      attack: the update attack.
      options: its numbers (scale, z).
    """
    state_type, weights_type, data_type = inner.next.type_signature.parameter
    result_type = inner.next.type_signature.result.result.member
    client_data_type = tff.FederatedType(
        collections.OrderedDict(data=data_type.member, attacker=TOKEN_TYPE), tff.CLIENTS
    )

    @tff.tensorflow.computation(TOKEN_TYPE)
    def read_token(tokens):
        return tokens.reduce(np.int64(0), lambda _, token: token)

    def poisoned(result, token, benign=None):
        honest = tf.nest.flatten(result.update)
        # Not `token != 0`: TFF traces in TF1 graph mode, where that compares
        # the Python objects and is always True. A cond, not a where: honest
        # clients do not compute the attack (Gaussian noise of model size).
        chosen = tf.cond(
            tf.not_equal(token, 0),
            lambda: attack.poisoned_update(honest, token, options, benign),
            lambda: honest,
        )
        return tff.learning.templates.ClientResult(
            update=tf.nest.pack_sequence_as(result.update, chosen), update_weight=result.update_weight
        )

    if not attack.needs_benign_statistics:

        @tff.tensorflow.computation(result_type, np.int64)
        def poison(result, token):
            return poisoned(result, token)

        @tff.federated_computation(state_type, weights_type, client_data_type)
        def next_fn(state, weights, data):
            output = inner.next(state, weights, data.data)
            tokens = tff.federated_map(read_token, data.attacker)
            result = tff.federated_map(poison, (output.result, tokens))
            return tff.templates.MeasuredProcessOutput(output.state, result, output.measurements)

        return tff.learning.templates.ClientWorkProcess(
            inner.initialize, next_fn, get_hparams_fn=inner.get_hparams, set_hparams_fn=inner.set_hparams
        )
    return _with_benign_statistics(inner, read_token, poisoned, result_type, client_data_type)


def _with_benign_statistics(inner, read_token, poisoned, result_type, client_data_type):
    """The wrapper for attacks that read last round's benign mean and std (ALIE)."""
    update_type = result_type.update
    statistics_type = collections.OrderedDict(mean=update_type, std=update_type, available=np.bool_)

    @tff.tensorflow.computation
    def no_statistics():
        zeros = tf.nest.map_structure(
            lambda spec: tf.zeros(spec.shape, spec.dtype), tff.types.type_to_tf_tensor_specs(update_type)
        )
        return collections.OrderedDict(mean=zeros, std=zeros, available=tf.constant(False))

    @tff.federated_computation
    def init_fn():
        return tff.federated_zip(
            collections.OrderedDict(inner=inner.initialize(), benign=tff.federated_eval(no_statistics, tff.SERVER))
        )

    state_type = init_fn.type_signature.result

    @tff.tensorflow.computation(state_type.member)
    def get_hparams(state):
        return inner.get_hparams(state["inner"])

    hparams_type = inner.get_hparams.type_signature.result

    @tff.tensorflow.computation(state_type.member, hparams_type)
    def set_hparams(state, hparams):
        return collections.OrderedDict(inner=inner.set_hparams(state["inner"], hparams), benign=state["benign"])

    @tff.tensorflow.computation(result_type, np.int64, statistics_type)
    def poison(result, token, benign):
        mean, std = tf.nest.flatten(benign["mean"]), tf.nest.flatten(benign["std"])
        # Before any statistics exist (the first round), attackers act honestly.
        token = tf.where(benign["available"], token, tf.constant(0, tf.int64))
        return poisoned(result, token, (mean, std))

    @tff.tensorflow.computation(result_type)
    def moments(result):
        # In float64: E[u^2] - E[u]^2 in float32 loses the small deviations.
        update = tf.nest.map_structure(lambda u: tf.cast(u, tf.float64), result.update)
        return collections.OrderedDict(first=update, second=tf.nest.map_structure(tf.square, update))

    moments_type = moments.type_signature.result

    @tff.tensorflow.computation(moments_type)
    def statistics_of(mean_moments):
        std = tf.nest.map_structure(
            lambda first, second: tf.cast(tf.sqrt(tf.maximum(second - tf.square(first), 0.0)), tf.float32),
            mean_moments["first"],
            mean_moments["second"],
        )
        mean = tf.nest.map_structure(lambda first: tf.cast(first, tf.float32), mean_moments["first"])
        return collections.OrderedDict(mean=mean, std=std, available=tf.constant(True))

    @tff.federated_computation(state_type, inner.next.type_signature.parameter[1], client_data_type)
    def next_fn(state, weights, data):
        output = inner.next(state.inner, weights, data.data)
        tokens = tff.federated_map(read_token, data.attacker)
        benign = tff.federated_broadcast(state.benign)
        result = tff.federated_map(poison, (output.result, tokens, benign))
        # Every client's honest update (attackers computed one too) gives next round's statistics.
        mean_moments = tff.federated_mean(tff.federated_map(moments, output.result))
        new_state = tff.federated_zip(
            collections.OrderedDict(inner=output.state, benign=tff.federated_map(statistics_of, mean_moments))
        )
        return tff.templates.MeasuredProcessOutput(new_state, result, output.measurements)

    return tff.learning.templates.ClientWorkProcess(
        init_fn, next_fn, get_hparams_fn=get_hparams, set_hparams_fn=set_hparams
    )
