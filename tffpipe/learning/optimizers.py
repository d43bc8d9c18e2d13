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


def build_optimizer(cfg: Any) -> tff.learning.optimizers.Optimizer:
    """A `tff.learning.optimizers` optimizer from `cfg.client_optimizer` or `cfg.server_optimizer`.

    Hyperparameters left at None keep TFF's defaults; sgd has no momentum.
    """
    kwargs = {"learning_rate": cfg.learning_rate}
    if cfg.name == "sgdm":
        kwargs["momentum"] = cfg.momentum
    for field in ("beta_1", "beta_2", "epsilon"):
        if getattr(cfg, field) is not None:
            kwargs[field] = getattr(cfg, field)
    return _BUILDERS[cfg.name](**kwargs)
