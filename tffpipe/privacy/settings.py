"""Client-level differential privacy: the settings every DP mechanism shares.

The mechanisms are aggregation layers (`tffpipe/aggregation/dp_*.py`), which
receive these settings with their own; `accounting.py` turns them into
epsilon. This module imports no TensorFlow.
"""

import dataclasses

from tffpipe import settings
from tffpipe.aggregation import registry as aggregation_registry

_DP_ON = ("dp", lambda: aggregation_registry.dp_mechanisms()[1:])


@dataclasses.dataclass(frozen=True)
class Settings:
    """Client-level differential privacy: the mechanism and the settings all mechanisms share.

    The mechanisms are aggregation layers (`tffpipe/aggregation/dp_*.py`);
    settings of one mechanism only are declared in its module.
    """

    mechanism: str = settings.setting(
        "none",
        "Client-level differential privacy: fixed (Gaussian, fixed clipping; McMahan "
        "et al. 2018), adaptive (clipping to a quantile; Andrew et al. 2021), tree (DP-FTRL "
        "tree aggregation; Kairouz et al. 2021), distributed (distributed discrete Gaussian "
        "with secure aggregation; Kairouz et al. 2021).",
        flag="dp",
        group="privacy",
        choices=aggregation_registry.dp_mechanisms,
        resume=settings.MUST_MATCH,
        short=True,
    )
    clip_norm: float | None = settings.setting(
        None,
        "L2 clipping norm of each client update (initial norm under --dp=adaptive).",
        flag="dp_clip_norm",
        group="privacy",
        check=settings.positive,
        applies=_DP_ON,
        resume=settings.MUST_MATCH,
        effective=lambda run, value: run.dp_clip_norm,
        default_text="1.0; 0.1 under --dp=adaptive",
        short=True,
    )
    noise_multiplier: float | None = settings.setting(
        None,
        "Noise stddev divided by the clipping norm; give this or --dp_target_epsilon.",
        flag="dp_noise_multiplier",
        group="privacy",
        check=settings.at_least(0),
        applies=_DP_ON,
        resume=settings.MUST_MATCH,
        short=True,
    )
    target_epsilon: float | None = settings.setting(
        None,
        "Solve for the noise multiplier that spends this epsilon after --rounds rounds.",
        flag="dp_target_epsilon",
        group="privacy",
        check=settings.positive,
        applies=_DP_ON,
        resume=settings.MUST_MATCH,
        short=True,
    )
    max_epsilon: float | None = settings.setting(
        None,
        "Stop cleanly before the round that would bring epsilon above this.",
        flag="dp_max_epsilon",
        group="privacy",
        check=settings.positive,
        applies=_DP_ON,
    )
    delta: float = settings.setting(
        1e-5,
        "Delta of the reported (epsilon, delta).",
        flag="dp_delta",
        group="privacy",
        check=settings.open_interval(0, 1),
        applies=_DP_ON,
    )
