"""Components get their own settings and a small context; their combination rules are data checked in one place."""

import ast
import dataclasses
import pathlib

import pytest

from conftest import REPO_ROOT, make_config
from tffpipe import components
from tffpipe.aggregation import registry as aggregation_registry
from tffpipe.attacks import registry as attack_registry
from tffpipe.config import components as config_components
from tffpipe.errors import ConfigError
from tffpipe.learning import registry as algorithm_registry
from tffpipe.runtimes import registry as runtime_registry

COMPONENT_FOLDERS = ("aggregation", "learning", "attacks", "runtimes")


def _component_modules():
    for folder in COMPONENT_FOLDERS:
        yield from sorted((pathlib.Path(REPO_ROOT) / "tffpipe" / folder).rglob("*.py"))


def test_no_component_module_imports_the_run_configuration_or_takes_it():
    found = []
    for path in _component_modules():
        tree = ast.parse(path.read_text(), str(path))
        where = path.relative_to(REPO_ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
                if any(n == "tffpipe.config" or n.startswith("tffpipe.config.") for n in names):
                    found.append(f"{where}:{node.lineno} imports {node.module}")
            elif isinstance(node, ast.Import):
                found += [
                    f"{where}:{node.lineno} imports {a.name}" for a in node.names if a.name.startswith("tffpipe.config")
                ]
            elif isinstance(node, (ast.FunctionDef, ast.Lambda)):
                arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                found += [f"{where}:{node.lineno} takes {a.arg}" for a in arguments if a.arg in ("cfg", "config")]
            elif (
                isinstance(node, ast.Attribute)
                and node.attr in ("schedule", "privacy")
                and isinstance(node.value, ast.Name)
            ):
                found.append(f"{where}:{node.lineno} reads {node.value.id}.{node.attr}")
    assert found == []
    # The scan sees what it looks for.
    assert "takes cfg" in str(_scan_source("def check(self, cfg):\n    return cfg.schedule.rounds\n"))


def _scan_source(source):
    tree = ast.parse(source)
    return [
        f"takes {a.arg}"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef)
        for a in node.args.args
        if a.arg in ("cfg", "config")
    ]


def test_every_component_declares_its_rules_as_data():
    kinds = [
        aggregation_registry.layers(),
        algorithm_registry.algorithms(),
        [attack_registry.get(name) for name in attack_registry.ATTACKS],
        runtime_registry.runtimes(),
    ]
    counted = 0
    for registered in kinds:
        for component in registered:
            assert isinstance(component.rules, tuple)
            assert all(isinstance(rule, components.Rule) for rule in component.rules), component
            counted += len(component.rules)
    # dp (2, on each of 4 mechanisms) + dp_adaptive (1) + robust (5) + quantization (2) + secure (2)
    # + fedrecon (1) + mime_lite (1) + fedbuff (5) + the update attacks (1 each) + ray (1)
    update_attacks = sum(attack_registry.get(n).poisons_updates for n in attack_registry.ATTACKS)
    assert counted == 2 * 4 + 1 + 5 + 2 + 2 + 1 + 1 + 5 + update_attacks + 1


def test_a_rule_reads_only_the_components_settings_and_the_selection():
    rule = components.refuses(lambda s, run: run.dp != "none", "--robust={s.defence} cannot run under --dp={run.dp}")
    settings = aggregation_registry.get("robust").Settings(defence="krum")
    assert rule.refuses(settings, components.Selection(dp="fixed"))
    assert not rule.refuses(settings, components.Selection())
    assert rule.reason(settings, components.Selection(dp="tree")) == "--robust=krum cannot run under --dp=tree"
    needs = components.requires(lambda s, run: run.secure_aggregation, lambda s, run: f"{run.algorithm} needs it")
    assert (
        needs.refuses(None, components.Selection()) and needs.reason(None, components.Selection()) == "fedavg needs it"
    )


def test_the_one_checker_applies_a_components_rules_with_their_message(monkeypatch):
    layer = aggregation_registry.get("zeroing")
    rule = components.refuses(lambda s, run: run.rounds > 7 and s.enabled, "zeroing refuses {run.rounds} rounds")
    monkeypatch.setattr(type(layer), "rules", (rule,))
    with pytest.raises(ConfigError, match=r"^zeroing refuses 8 rounds$"):
        make_config(rounds=8)
    make_config(rounds=7)
    make_config(rounds=8, zeroing=False)  # an inactive layer's rules do not apply


def test_the_selection_says_what_the_stack_puts_in_effect():
    plain = config_components.selection(make_config())
    assert (plain.weighting, plain.uses_secure_sum, plain.dp_clip_norm) == ("num_examples", False, None)
    assert plain.layers == ("zeroing", "mean")
    dp = config_components.selection(make_config(dp="adaptive", dp_noise_multiplier=0.1, clients_per_round=10))
    assert (dp.weighting, dp.dp_clip_norm, dp.layers) == ("uniform", 0.1, ("zeroing", "dp_adaptive"))
    ddp = config_components.selection(make_config(dp="distributed", dp_noise_multiplier=0.5, dp_clip_norm=2.0))
    assert ddp.uses_secure_sum and not ddp.secure_aggregation and ddp.dp_clip_norm == 2.0
    clock = config_components.selection(make_config(over_selection=1.5))
    assert (clock.cohort_changed_by, clock.rounds_closed_by) == ("--over_selection", "--over_selection")
    assert config_components.selection(make_config(client_dropout=0.2)).rounds_closed_by == ""


def test_each_component_receives_only_its_own_settings():
    cfg = make_config(algorithm="fedprox", proximal_strength=0.3, attack="scale", attack_scale=4.0)
    algorithm = config_components.algorithm_context(cfg)
    assert algorithm.settings == cfg.algorithm.fedprox and algorithm.name == "fedprox"
    assert {f.name for f in dataclasses.fields(algorithm)} == {
        "name",
        "settings",
        "options",
        "seed",
        "client_batch_size",
        "eval_batch_size",
    }
    attack = config_components.attack_context(cfg)
    assert (attack.scale, attack.settings) == (4.0, None)
    robust = aggregation_registry.get("robust")
    assert config_components.layer_settings(cfg, robust) is cfg.aggregation.robust
    dp = config_components.layer_settings(cfg, aggregation_registry.get("dp_adaptive"))
    assert dp.shared is cfg.privacy and dp.own is cfg.aggregation.dp_adaptive
    runtime = config_components.runtime_context(cfg)
    assert runtime.selected == cfg.runtime.name and runtime.settings["inprocess"] is cfg.runtime.inprocess
