"""Federated Reconstruction (Singhal et al., NeurIPS 2021): some layers never leave the clients.

`--local_layers` names the layers that stay on the clients; the others are
global, trained and aggregated as in FedAvg. In every round (and every
evaluation) each client first reconstructs its local layers from a fresh
initialisation on part of its data with the global layers frozen, then
trains the global layers (or measures the model) on the rest. TFF builds
both processes: `build_fed_recon` and `build_fed_recon_eval`, with
`ReconstructionModel.from_keras_model_and_layers`.

The server only ever holds the global layers: the process's model weights,
the checkpoints and the evaluation are theirs; the exported Keras model has
the trained global layers and freshly initialised local ones, which a
client reconstructs on its own data.
"""

import dataclasses

from tffpipe import components
from tffpipe import settings
from tffpipe.errors import ConfigError
from tffpipe.learning import base

_APPLIES = ("algorithm", ("fedrecon",))


@dataclasses.dataclass(frozen=True)
class Settings:
    local_layers: str = settings.setting(
        "",
        "fedrecon: the model's layers that stay on the clients, by name or position "
        "(comma-separated; -1 is the last layer), e.g. output.",
        flag="local_layers",
        group="algorithm",
        applies=_APPLIES,
        resume=settings.MUST_MATCH,
    )
    reconstruction_epochs: int = settings.setting(
        1,
        "fedrecon: passes over the reconstruction part of a client's data (its even batches "
        "in training, its even examples in evaluation).",
        flag="reconstruction_epochs",
        group="algorithm",
        check=settings.at_least(1),
        applies=_APPLIES,
    )
    reconstruction_learning_rate: float = settings.setting(
        0.1,
        "fedrecon: SGD learning rate of the clients' reconstruction of their local layers.",
        flag="reconstruction_learning_rate",
        group="algorithm",
        check=settings.positive,
        applies=_APPLIES,
    )


def _layer_names(model) -> list[str]:
    return [layer.name for layer in model.layers]


def split_layers(model, local_layers: str, task_name: str) -> tuple[list, list]:
    """The model's (global, local) layers for a `--local_layers` value.

    Raises:
      ConfigError: a name or position that is not one of the model's layers,
        with the list of its layers; or every weighted layer local.
    """
    layers = list(model.layers)
    local = []
    for item in (part.strip() for part in local_layers.split(",") if part.strip()):
        try:
            found = layers[int(item)]
        except ValueError:
            found = next((layer for layer in layers if layer.name == item), None)
        except IndexError:
            found = None
        if found is None:
            raise ConfigError(
                f"--local_layers: {item!r} is not a layer of task {task_name!r}'s model; its layers "
                f"are {', '.join(_layer_names(model))} (or positions 0..{len(layers) - 1}, -1 the last)"
            )
        if found not in local:
            local.append(found)
    global_layers = [layer for layer in layers if layer not in local]
    if not any(layer.weights for layer in global_layers):
        raise ConfigError("--local_layers: every layer with weights would be local; the server would train nothing")
    return global_layers, local


def global_variables(model, local_layers: str, task_name: str) -> tuple[list, list]:
    """The (trainable, non-trainable) variables of the global layers, in TFF's order."""
    global_layers, _ = split_layers(model, local_layers, task_name)
    return (
        [v for layer in global_layers for v in layer.trainable_weights],
        [v for layer in global_layers for v in layer.non_trainable_weights],
    )


def alternate_examples(ctx: base.Context):
    """An evaluation split: even examples reconstruct the local layers, odd ones measure the model.

    TFF's default alternates *batches*; an evaluation client often holds one
    batch of `--eval_batch_size`, which would leave nothing to measure. The
    reconstruction makes `--reconstruction_epochs` passes in batches of
    `--client_batch_size`, as training does.
    """
    import tensorflow as tf

    def split(dataset):
        numbered = dataset.unbatch().enumerate()

        def part(remainder):
            return numbered.filter(lambda i, _: tf.equal(i % 2, remainder)).map(lambda _, example: example)

        epochs = ctx.settings.reconstruction_epochs
        reconstruct = part(0).repeat(epochs).batch(ctx.client_batch_size)
        return reconstruct, part(1).batch(ctx.eval_batch_size)

    return split


class FedRecon(base.Algorithm):
    key = "fedrecon"
    Settings = Settings

    rules = (
        components.refuses(
            lambda ctx, run: run.personalization,
            "--personalize_every fine-tunes the whole global model; under --algorithm=fedrecon every "
            "evaluation already reconstructs each client's local layers on its own data",
        ),
    )

    def check(self, ctx, run):
        if not ctx.settings.local_layers.strip():
            raise ConfigError("--algorithm=fedrecon needs --local_layers: the layers that stay on the clients")

    def _reconstruction_model_fn(self, task, settings):
        import tensorflow_federated as tff

        local_layers = settings.local_layers
        input_spec = task.input_spec

        def model_fn():
            model = task.model_builder()
            global_layers, local = split_layers(model, local_layers, task.name)
            return tff.learning.models.ReconstructionModel.from_keras_model_and_layers(
                model, global_layers=global_layers, local_layers=local, input_spec=input_spec
            )

        model_fn()  # a wrong layer name fails here, before TFF traces anything
        return model_fn

    def _reconstruction_optimizer(self, settings):
        import tensorflow_federated as tff

        return tff.learning.optimizers.build_sgdm(settings.reconstruction_learning_rate)

    def build(self, parts):
        import tensorflow_federated as tff

        task, settings = parts.task, parts.context.settings
        return tff.learning.algorithms.build_fed_recon(
            self._reconstruction_model_fn(task, settings),
            loss_fn=task.loss_builder,
            metrics_fn=task.metrics_builder,
            server_optimizer_fn=parts.server_optimizer,
            client_optimizer_fn=parts.client_optimizer,
            reconstruction_optimizer_fn=self._reconstruction_optimizer(settings),
            dataset_split_fn=tff.learning.models.ReconstructionModel.build_dataset_split_fn(
                recon_epochs=settings.reconstruction_epochs, split_dataset=True
            ),
            client_weighting=self.client_weighting(parts),
            model_aggregator_factory=parts.model_aggregator,
        )

    def evaluation_process(self, task, ctx, loop_implementation):
        import tensorflow_federated as tff

        return tff.learning.algorithms.build_fed_recon_eval(
            self._reconstruction_model_fn(task, ctx.settings),
            loss_fn=task.loss_builder,
            metrics_fn=task.metrics_builder,
            reconstruction_optimizer_fn=self._reconstruction_optimizer(ctx.settings),
            dataset_split_fn=alternate_examples(ctx),
        )

    def initial_weights(self, task, ctx):
        import tensorflow as tf
        import tensorflow_federated as tff

        tf.keras.utils.set_random_seed(ctx.seed)
        trainable, non_trainable = global_variables(task.model_builder(), ctx.settings.local_layers, task.name)
        return tff.learning.models.ModelWeights(
            trainable=[v.numpy() for v in trainable], non_trainable=[v.numpy() for v in non_trainable]
        )

    def keras_model(self, task, ctx, model_weights):
        """The global layers from `model_weights`; the local ones as the run's seed initialises them."""
        import tensorflow as tf

        tf.keras.utils.set_random_seed(ctx.seed)
        model = task.model_builder()
        trainable, non_trainable = global_variables(model, ctx.settings.local_layers, task.name)
        values = list(model_weights.trainable) + list(model_weights.non_trainable)
        for variable, value in zip(trainable + non_trainable, values):
            variable.assign(value)
        return model


ALGORITHM = FedRecon()
