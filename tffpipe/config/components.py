"""From a run's configuration to what each component receives, and the one place combinations are checked.

Components (aggregation layers, algorithms, attacks, runtimes) never see a
`RunConfig`: this module hands each its own settings and a small context of
its kind, and `check` runs every active component's own checks and its
`rules` (`tffpipe.components.Rule`). This module imports no TensorFlow.
"""

import dataclasses
from typing import TYPE_CHECKING, Any
from collections.abc import Callable, Iterator

from tffpipe.aggregation import base as aggregation_base
from tffpipe.aggregation import dp as dp_layers
from tffpipe.aggregation import registry as aggregation_registry
from tffpipe.attacks import base as attack_base
from tffpipe.attacks import registry as attack_registry
from tffpipe.components import Selection
from tffpipe.errors import ConfigError
from tffpipe.learning import base as algorithm_base
from tffpipe.learning import registry as algorithm_registry
from tffpipe.runtimes import base as runtime_base
from tffpipe.runtimes import registry as runtime_registry

if TYPE_CHECKING:
    from tffpipe.config.schema import RunConfig


def layer_settings(config: "RunConfig", layer: aggregation_base.Layer) -> Any:
    """What `layer` receives as its settings: its own group; a DP mechanism's with the shared DP settings."""
    own = getattr(config.aggregation, layer.key) if layer.Settings is not None else None
    if layer.dp_mechanism:
        return dp_layers.DpSettings(shared=config.privacy, own=own)
    return own


def stack_settings(config: "RunConfig") -> dict[str, Any]:
    """{layer key: its settings} for every registered layer."""
    return {layer.key: layer_settings(config, layer) for layer in aggregation_registry.layers()}


def selection(config: "RunConfig", given: frozenset[str] = frozenset()) -> Selection:
    """The run's `Selection`: which components it chose and the run-wide numbers they may read."""
    clock = config.clock
    run = Selection(
        algorithm=config.algorithm.name,
        runtime=config.runtime.name,
        attack=config.attack.name,
        dp=config.privacy.mechanism,
        secure_aggregation=config.aggregation.secure.enabled,
        compression=config.aggregation.quantization.method,
        robust=config.aggregation.robust.defence,
        client_weighting=config.algorithm.client_weighting,
        clients_per_round=config.schedule.clients_per_round,
        rounds=config.schedule.rounds,
        seed=config.schedule.seed,
        cohort_changed_by=clock.cohort_changed_by,
        rounds_closed_by=clock.rounds_closed_by,
        personalization=bool(config.personalization.every),
        given=given,
    )
    layers = aggregation_registry.active_layers(stack_settings(config), run)
    dp_layer = next((layer for layer in layers if layer.dp_mechanism), None)
    weighting = config.algorithm.client_weighting
    if weighting == "auto":
        uniform = any(layer.needs_uniform_weighting for layer in layers)
        weighting = "uniform" if uniform else "num_examples"
    clip = None
    if dp_layer is not None:
        clip = config.privacy.clip_norm if config.privacy.clip_norm is not None else dp_layer.default_clip_norm
    return dataclasses.replace(
        run,
        layers=tuple(layer.key for layer in layers),
        uses_secure_sum=any(layer.secure_sum for layer in layers),
        weighting=weighting,
        dp_clip_norm=clip,
    )


def algorithm_context(config: "RunConfig") -> algorithm_base.Context:
    """What the run's algorithm receives."""
    algorithm = algorithm_registry.get(config.algorithm.name)
    return algorithm_base.Context(
        name=config.algorithm.name,
        settings=getattr(config.algorithm, algorithm.key) if algorithm.Settings is not None else None,
        options=dict(config.algorithm.options),
        seed=config.schedule.seed,
        client_batch_size=config.client.batch_size,
        eval_batch_size=config.schedule.eval_batch_size,
    )


def attack_context(config: "RunConfig") -> attack_base.Context:
    """What the run's attack receives (`--attack` is not "none")."""
    attack = attack_registry.get(config.attack.name)
    return attack_base.Context(
        fraction=config.attack.fraction,
        target=config.attack.target,
        scale=config.attack.scale,
        settings=getattr(config.attack, attack.key) if attack.Settings is not None else None,
        clients_per_round=config.schedule.clients_per_round,
        seed=config.schedule.seed,
    )


def runtime_context(config: "RunConfig") -> runtime_base.Context:
    """What the runtimes receive: each runtime's settings, and the run's secure-sum protocol."""

    def protocol(holder_factory: Callable | None = None) -> Callable[[], Any]:
        from tffpipe.aggregation.protocols import registry as protocols

        return protocols.for_run(config.aggregation.secure, config.output.run_dir, holder_factory)

    return runtime_base.Context(
        selected=config.runtime.name,
        settings={runtime.key: getattr(config.runtime, runtime.key, None) for runtime in runtime_registry.runtimes()},
        secure_protocol=config.aggregation.secure.protocol,
        protocol=protocol,
    )


def _components(config: "RunConfig", run: Selection) -> Iterator[tuple[Any, Any]]:
    """(component, its settings) of every component whose checks apply to this run, in checking order."""
    for layer in aggregation_registry.layers():
        settings = layer_settings(config, layer)
        if layer.checked_when_inactive or layer.active(settings, run):
            yield layer, settings
    yield algorithm_registry.get(config.algorithm.name), algorithm_context(config)
    if config.attack.name != "none":
        yield attack_registry.get(config.attack.name), attack_context(config)
    context = runtime_context(config)
    for runtime in runtime_registry.runtimes():
        yield runtime, context


def check(config: "RunConfig", given: frozenset[str] = frozenset()) -> None:
    """Runs every component's own checks and its combination rules.

    Args:
      config: the run's settings (their values already checked).
      given: the flags set explicitly (empty when a config is built directly).

    Raises:
      ConfigError: the first refusal, with its one-line reason.
    """
    run = selection(config, given)
    for component, settings in _components(config, run):
        component.check(settings, run)
        for rule in component.rules:
            if rule.refuses(settings, run):
                raise ConfigError(rule.reason(settings, run))


def resume_fingerprint(config: "RunConfig", run: Selection) -> dict[str, Any]:
    """What the active layers add to the resume fingerprint (`run` is `selection(config)`)."""
    found: dict[str, Any] = {}
    for layer in aggregation_registry.layers():
        settings = layer_settings(config, layer)
        if layer.active(settings, run):
            found.update(layer.resume_fingerprint(settings, run))
    return found
