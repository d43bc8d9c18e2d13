"""An aggregation factory that gathers a round's updates at the server and reduces them there.

Robust rules (`robust_rules.py`) must see every client's update, which TFF's
sums and means never reveal. The updates are gathered with TFF's own
`UnweightedReservoirSamplingFactory` sized to the cohort (so every update is
kept; the reservoir's order is random, which the rules do not depend on),
then one TensorFlow computation at the server flattens each update into a
row, applies the rule and reshapes the aggregate. Because the gathering is a
single `federated_aggregate`, the round still compiles to TFF's
MapReduceForm (the in-process runtime) and splits across remote workers
(the reservoirs merge).

The server holds cohort x model-size float32 values during the reduction.
"""

import collections
import functools
from typing import Any
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tffpipe.aggregation import robust_rules


class CollectAndReduceFactory(tff.aggregators.UnweightedAggregationFactory):
    """Reduces the round's client values with a robust rule at the server.

    Args:
      rule: a `robust_rules` function (rows -> `RuleOutput`).
      cohort: the clients per round (the reservoir's size).
      **rule_options: keyword options of the rule.
    """

    def __init__(self, rule: Callable[..., robust_rules.RuleOutput], cohort: int, **rule_options: Any):
        self._rule = functools.partial(rule, **rule_options)
        self._cohort = cohort

    def create(self, value_type) -> tff.templates.AggregationProcess:
        sampler = tff.aggregators.UnweightedReservoirSamplingFactory(self._cohort).create(value_type)
        sample_type = sampler.next.type_signature.result.result.member
        rule = self._rule

        @tff.tensorflow.computation(sample_type)
        def reduce(sample):
            # Shapes from the sample itself: its container may order leaves
            # otherwise than `value_type` (tf.nest sorts a dict's keys).
            leaves = tf.nest.flatten(sample)
            shapes = [leaf.shape[1:] for leaf in leaves]
            sizes = [int(np.prod(shape, dtype=np.int64)) for shape in shapes]
            n = tf.shape(leaves[0])[0]
            rows = tf.concat([tf.reshape(tf.cast(leaf, tf.float32), [n, -1]) for leaf in leaves], axis=1)
            out = rule(rows)
            pieces = tf.split(out.aggregate, sizes) if len(sizes) > 1 else [out.aggregate]
            aggregate = [
                tf.cast(tf.reshape(piece, shape), leaf.dtype) for piece, shape, leaf in zip(pieces, shapes, leaves)
            ]
            return collections.OrderedDict(
                result=tf.nest.pack_sequence_as(sample, aggregate),
                figures=collections.OrderedDict(sorted(out.figures.items())),
            )

        @tff.federated_computation()
        def init_fn():
            return sampler.initialize()

        @tff.federated_computation(init_fn.type_signature.result, tff.FederatedType(value_type, tff.CLIENTS))
        def next_fn(state, value):
            gathered = sampler.next(state, value)
            reduced = tff.federated_map(reduce, gathered.result)
            return tff.templates.MeasuredProcessOutput(
                state=gathered.state,
                result=reduced.result,
                measurements=tff.federated_zip(collections.OrderedDict(robust=reduced.figures)),
            )

        return tff.templates.AggregationProcess(init_fn, next_fn)
