"""`tff.learning.optimizers` optimizers from the client and server optimizer settings."""

from typing import Any

import tensorflow_federated as tff

_BUILDERS = {
    "sgd": tff.learning.optimizers.build_sgdm,
    "sgdm": tff.learning.optimizers.build_sgdm,
    "adam": tff.learning.optimizers.build_adam,
    "yogi": tff.learning.optimizers.build_yogi,
    "adagrad": tff.learning.optimizers.build_adagrad,
}


def builders() -> dict[str, Any]:
    """Optimizer name -> TFF builder (plain sgd is sgdm without momentum)."""
    return dict(_BUILDERS)


def build_optimizer(settings: Any) -> tff.learning.optimizers.Optimizer:
    """A `tff.learning.optimizers` optimizer from the client or the server optimizer's settings.

    Hyperparameters left at None keep TFF's defaults; sgd has no momentum.
    """
    kwargs = {"learning_rate": settings.learning_rate}
    if settings.name == "sgdm":
        kwargs["momentum"] = settings.momentum
    for field in ("beta_1", "beta_2", "epsilon"):
        if getattr(settings, field) is not None:
            kwargs[field] = getattr(settings, field)
    return _BUILDERS[settings.name](**kwargs)
