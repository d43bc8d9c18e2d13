"""K clients' copies of one Keras model, run in one batched TensorFlow call.

Small clients make a round a long series of tiny steps: a client with 7
examples runs one batch of 7, and TFF's client work pays a fixed cost per
client far above that batch's arithmetic. Here each parameter of the model is
held once per client, stacked on a leading axis of size K, and a step of all
K clients is one batched matmul per layer: a Dense layer is
`[K, b, in] @ [K, in, out]`, a Conv2D layer is the same matmul on the
images' patches (`tf.image.extract_patches`). TensorFlow has no per-client
(grouped) convolution on the CPU and `tf.vectorized_map` runs a Conv2D's
gradient as a loop, which is why the layers are written out here.

Only models whose every layer is listed in `_LAYERS` and that hold no state
outside their trainable weights can be stacked; `stack_model` says which
layer or property stands in the way (`NotStackable`).
"""

import dataclasses
from collections.abc import Callable, Sequence

import tensorflow as tf

# A layer's work on stacked values: (its stacked parameters, x of shape
# [K, b, ...]) -> y of shape [K, b, ...].
LayerFn = Callable[[Sequence[tf.Tensor], tf.Tensor], tf.Tensor]

_ACTIVATIONS = {
    "linear": tf.identity,
    "relu": tf.nn.relu,
    "sigmoid": tf.sigmoid,
    "tanh": tf.tanh,
    "softmax": tf.nn.softmax,
    "elu": tf.nn.elu,
    "gelu": lambda t: tf.nn.gelu(t, approximate=False),
}


class NotStackable(ValueError):
    """The model cannot be run as stacked per-client copies; the message says why."""


@dataclasses.dataclass(frozen=True)
class StackedModel:
    """A model's layers as functions of stacked per-client parameters.

    Attributes:
      layers: each layer's function and how many parameters it takes, in the
        order of the model's `trainable_weights`.
    """

    layers: tuple[tuple[LayerFn, int], ...]
    # The most values one example holds at once in any layer (a Conv2D's
    # patches, or an output), which sets how many clients fit in one call.
    largest_per_example: int = 1

    def forward(self, params: Sequence[tf.Tensor], x: tf.Tensor) -> tf.Tensor:
        """The K models' outputs on x of shape [K, b, ...]; params[i] is [K, *weight_i.shape]."""
        start = 0
        for fn, count in self.layers:
            x = fn(params[start : start + count], x)
            start += count
        return x


def stack_model(model: tf.keras.Model) -> StackedModel:
    """The stacked form of `model` (a Sequential or a functional chain of supported layers).

    Raises:
      NotStackable: naming the first layer or property that cannot be stacked.
    """
    if model.non_trainable_weights:
        raise NotStackable(f"model {model.name!r} has non-trainable weights (state the stacked form does not keep)")
    if model.losses:
        raise NotStackable(f"model {model.name!r} adds its own losses (regularizers)")
    layers = [layer for layer in model.layers if not isinstance(layer, tf.keras.layers.InputLayer)]
    if not isinstance(model, tf.keras.Sequential) and not _is_chain(model):
        raise NotStackable(f"model {model.name!r} is not a chain of layers")
    built = []
    largest = 1
    for layer in layers:
        largest = max(largest, _values_per_example(layer))
        kind = type(layer).__name__
        convert = _LAYERS.get(kind)
        if convert is None:
            raise NotStackable(f"layer {layer.name!r} ({kind}) has no stacked form")
        if any(getattr(layer, name, None) is not None for name in _REGULARIZERS):
            raise NotStackable(f"layer {layer.name!r} has a regularizer or constraint")
        built.append((convert(layer), len(layer.trainable_weights)))
    if sum(count for _, count in built) != len(model.trainable_weights):
        raise NotStackable(f"model {model.name!r} shares or nests weights")
    return StackedModel(tuple(built), largest)


_REGULARIZERS = (
    "kernel_regularizer",
    "bias_regularizer",
    "activity_regularizer",
    "kernel_constraint",
    "bias_constraint",
)


def _values_per_example(layer: tf.keras.layers.Layer) -> int:
    """Values of one example in the layer's output, or in its patches for a Conv2D."""
    try:
        shape = layer.output_shape
    except (AttributeError, RuntimeError):
        return 1
    size = 1
    for dim in shape[1:]:
        size *= int(dim or 1)
    if isinstance(layer, tf.keras.layers.Conv2D):
        kh, kw = layer.kernel_size
        size = size // int(layer.filters) * kh * kw * int(layer.input_shape[-1])
    return size


def _is_chain(model: tf.keras.Model) -> bool:
    """Whether a functional model is one input through its layers in order."""
    try:
        layers = [layer for layer in model.layers if not isinstance(layer, tf.keras.layers.InputLayer)]
        return len(model.inputs) == 1 and all(len(layer.inbound_nodes) == 1 for layer in layers)
    except (AttributeError, ValueError):
        return False


def _activation(layer: tf.keras.layers.Layer) -> Callable[[tf.Tensor], tf.Tensor]:
    name = getattr(layer.activation, "__name__", "")
    if name not in _ACTIVATIONS:
        raise NotStackable(
            f"layer {layer.name!r} has activation {name or layer.activation!r}, which has no stacked form"
        )
    return _ACTIVATIONS[name]


def _dense(layer: tf.keras.layers.Dense) -> LayerFn:
    activation, use_bias = _activation(layer), layer.use_bias

    def run(params, x):
        y = tf.matmul(x, params[0])  # [K, b, in] @ [K, in, out]
        if use_bias:
            y += params[1][:, None, :]
        return activation(y)

    return run


def _conv2d(layer: tf.keras.layers.Conv2D) -> LayerFn:
    if layer.data_format != "channels_last" or layer.groups != 1:
        raise NotStackable(f"layer {layer.name!r} is not a channels-last, ungrouped Conv2D")
    activation, use_bias = _activation(layer), layer.use_bias
    kh, kw = layer.kernel_size
    strides = [1, *layer.strides, 1]
    rates = [1, *layer.dilation_rate, 1]
    padding = layer.padding.upper()

    def run(params, x):
        k, b = tf.shape(x)[0], tf.shape(x)[1]
        images = tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], 0))
        # [K*b, H', W', kh*kw*C]: the patches' depth is ordered (row, column,
        # channel), as a [kh, kw, C, F] kernel is laid out.
        patches = tf.image.extract_patches(images, [1, kh, kw, 1], strides, rates, padding)
        height, width, depth = tf.shape(patches)[1], tf.shape(patches)[2], tf.shape(patches)[3]
        kernel = params[0]
        y = tf.matmul(tf.reshape(patches, [k, -1, depth]), tf.reshape(kernel, [k, depth, tf.shape(kernel)[-1]]))
        if use_bias:
            y += params[1][:, None, :]
        return activation(tf.reshape(y, [k, b, height, width, tf.shape(kernel)[-1]]))

    return run


def _per_image(op: Callable[[tf.Tensor], tf.Tensor]) -> LayerFn:
    """A parameterless image op applied to all K*b images at once."""

    def run(params, x):
        k, b = tf.shape(x)[0], tf.shape(x)[1]
        y = op(tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], 0)))
        return tf.reshape(y, tf.concat([[k, b], tf.shape(y)[1:]], 0))

    return run


def _pool(layer: tf.keras.layers.Layer, pool: Callable) -> LayerFn:
    if layer.data_format != "channels_last":
        raise NotStackable(f"layer {layer.name!r} is not channels-last")
    size, strides, padding = layer.pool_size, layer.strides, layer.padding.upper()
    return _per_image(lambda images: pool(images, size, strides, padding))


def _flatten(layer: tf.keras.layers.Flatten) -> LayerFn:
    def run(params, x):
        return tf.reshape(x, [tf.shape(x)[0], tf.shape(x)[1], -1])

    return run


def _activation_layer(layer: tf.keras.layers.Activation) -> LayerFn:
    activation = _activation(layer)
    return lambda params, x: activation(x)


def _relu_layer(layer: tf.keras.layers.ReLU) -> LayerFn:
    if layer.max_value is not None or float(layer.negative_slope) != 0.0 or float(layer.threshold) != 0.0:
        raise NotStackable(f"layer {layer.name!r} is a ReLU with a cap, slope or threshold")
    return lambda params, x: tf.nn.relu(x)


def _reshape(layer: tf.keras.layers.Reshape) -> LayerFn:
    target = list(layer.target_shape)
    return lambda params, x: tf.reshape(x, tf.concat([tf.shape(x)[:2], target], 0))


_LAYERS: dict[str, Callable[[tf.keras.layers.Layer], LayerFn]] = {
    "Dense": _dense,
    "Conv2D": _conv2d,
    "MaxPooling2D": lambda layer: _pool(layer, tf.nn.max_pool2d),
    "AveragePooling2D": lambda layer: _pool(layer, tf.nn.avg_pool2d),
    "Flatten": _flatten,
    "Activation": _activation_layer,
    "ReLU": _relu_layer,
    "Reshape": _reshape,
}
