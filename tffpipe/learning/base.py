"""What a federated algorithm is: one module in this folder with an `ALGORITHM`.

An algorithm knows its own settings (a frozen `Settings` dataclass whose
fields become flags), its checks, and how to build a TFF learning process
from the model function, the optimizers and the aggregator. Modules import
TensorFlow Federated inside `build`, never at import (flags are checked
before TensorFlow loads). An algorithm sees its own settings in a small
`Context`, never the run's configuration; which other components it refuses
is its `rules` (`tffpipe.components.Rule`), checked in
`tffpipe/config/components.py`.
"""

import dataclasses
from typing import TYPE_CHECKING, Any
from collections.abc import Callable, Mapping

from tffpipe.components import Rule, Selection

if TYPE_CHECKING:  # TensorFlow Federated loads only when a process is built
    import tensorflow_federated as tff

    from tffpipe.tasks import Task


@dataclasses.dataclass(frozen=True)
class Context:
    """What an algorithm is given besides the task.

    Attributes:
      name: `--algorithm` as given (a user's builder path for the plug-in).
      settings: the algorithm's own settings (None for those without).
      options: keyword options of a user's builder, from its flags.
      seed: `--seed` (the initial model).
      client_batch_size: `--client_batch_size`.
      eval_batch_size: `--eval_batch_size`.
    """

    name: str
    settings: Any = None
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    seed: int = 0
    client_batch_size: int = 20
    eval_batch_size: int = 64


@dataclasses.dataclass(frozen=True)
class Parts:
    """What every algorithm is built from.

    Attributes:
      model_fn: returns a fresh `tff.learning` model of the task.
      client_optimizer: a `tff.learning.optimizers` optimizer (None for
        algorithms that train no client optimizer).
      server_optimizer: likewise, for the server.
      model_aggregator: the aggregation factory of the stack.
      make_aggregator: builds another, independent copy of the stack (for
        algorithms that aggregate a second value, like Mime-lite).
      weighted: whether the aggregator is weighted by number of examples.
      loop_implementation: how clients iterate over their data (the runtime
        chooses it).
      context: the algorithm's settings and context.
      task: the task (for algorithms that build their own model from it).
    """

    model_fn: Callable[[], "tff.learning.models.VariableModel"]
    client_optimizer: "tff.learning.optimizers.Optimizer | None"
    server_optimizer: "tff.learning.optimizers.Optimizer"
    model_aggregator: "tff.aggregators.AggregationFactory"
    make_aggregator: Callable[[], "tff.aggregators.AggregationFactory"]
    weighted: bool
    loop_implementation: "tff.learning.LoopImplementation"
    context: Context
    task: "Task | None" = None


class Algorithm:
    """Base class of a federated algorithm."""

    key: str = ""
    Settings: type | None = None
    uses_client_optimizer: bool = True
    # Whether `client_work` gives the client work alone (clients send a model
    # delta): update-poisoning attacks wrap it (`attacks/client_work.py`).
    sends_model_delta: bool = False
    # Whether `train/num_examples` counts every example the reporting clients
    # train (epochs included) when all is well: TFF resets the metrics of a
    # client whose update is not finite, so a shortfall shows clients left out
    # (`program/divergence.py`).
    counts_each_example: bool = False
    # Whether the run is asynchronous (no rounds of a TFF process; see
    # `tffpipe/program/fedbuff.py`).
    asynchronous: bool = False

    # Combinations with other components the algorithm refuses.
    rules: tuple[Rule, ...] = ()

    def check(self, ctx: Context, run: Selection) -> None:
        """Refuses its own settings that cannot work in this run (`ConfigError`)."""

    def build(self, parts: Parts) -> Any:
        """The `tff.learning.templates.LearningProcess`."""
        raise NotImplementedError

    def client_work(self, parts: Parts) -> Any:
        """The `tff.learning.templates.ClientWorkProcess` alone, for algorithms that send a model delta.

        `compose.learning_process` composes it with TFF's broadcast, the
        aggregation stack and TFF's optimizer finalizer, as TFF's FedAvg
        builder does.
        """
        raise NotImplementedError(f"--algorithm={self.key} does not expose its client work")

    def stacked_form(self, parts: Parts) -> Any:
        """A `learning.stacked.StackedForm` of the process (its clients trained stacked), or why there is none."""
        return f"--algorithm={self.key} has no stacked form"

    def evaluation_process(self, task: Any, ctx: Context, loop_implementation: Any) -> Any:
        """Federated evaluation of the process's model weights on held-out clients (TFF's `build_fed_eval`)."""
        import tensorflow_federated as tff
        from tffpipe.learning import builder

        return tff.learning.algorithms.build_fed_eval(
            builder.build_model_fn(task), loop_implementation=loop_implementation
        )

    def initial_weights(self, task: Any, ctx: Context) -> Any:
        """The seeded initial model weights the process starts from (every layer's)."""
        from tffpipe.learning import builder

        return builder.initial_model_weights(task, ctx.seed)

    def keras_model(self, task: Any, ctx: Context, model_weights: Any) -> Any:
        """A Keras model of the task holding the process's model weights (the export)."""
        model = task.model_builder()
        model_weights.assign_weights_to(model)
        return model

    def client_weighting(self, parts: Parts) -> Any:
        import tensorflow_federated as tff

        return tff.learning.ClientWeighting.NUM_EXAMPLES if parts.weighted else tff.learning.ClientWeighting.UNIFORM
