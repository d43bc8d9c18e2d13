"""Resume semantics: what may change takes effect, what must match is refused."""

import csv
import os
import re

import pytest

from conftest import REPO_ROOT, make_config
from tffpipe.config import components
from tffpipe import config
from tffpipe import settings
from tffpipe.program import assembly
from tffpipe.program import loop
from tffpipe.program import metrics as metrics_lib
from tffpipe.program import sampling
from tffpipe.runtimes import registry as runtime_registry

from tffpipe_tasks import digits

SMALL = {"digits_num_clients": 12, "digits_eval_clients": 3, "digits_alpha": 1.0}


@pytest.fixture(scope="module")
def small_task():
    return digits.create_task(num_clients=12, eval_clients=3, alpha=1.0, seed=0)


def _config(root, rounds, **values):
    return make_config(
        **{
            **SMALL,
            "client_epochs": 1,
            "client_batch_size": 32,
            "rounds": rounds,
            "clients_per_round": 3,
            "eval_every": 0,
            "root_dir": str(root),
            "experiment_name": "p",
            # Without zeroing the aggregator keeps no state, so a fresh state with the
            # checkpoint's weights is the same server state as the restored one.
            "zeroing": False,
            "runtime": "cpp",
            **values,
        }
    )


def _csv_loss(run_dir, round_num):
    with open(os.path.join(run_dir, "results", "metrics.csv")) as f:
        rows = {int(row["round"]): row for row in csv.DictReader(f)}
    return float(rows[round_num]["train/loss"])


def _rounds_from_weights(task, cfg, weights, first_round, last_round):
    """The train losses of rounds first..last of a process built with `cfg`, from `weights`."""
    ids = list(task.train_data.client_ids)
    runtime = runtime_registry.get("cpp")
    process, _ = assembly.build_learning_process(task, cfg, ids, runtime.loop_implementation())
    spec = loop.client_spec(cfg)
    losses = []
    with runtime.running(process, components.runtime_context(cfg), lambda line: None):
        state = process.set_model_weights(process.initialize(), weights)
        for round_num in range(first_round, last_round + 1):
            sampled = sampling.sample_clients(ids, cfg.schedule.clients_per_round, seed=0, round_num=round_num)
            datasets = [
                task.client_dataset(cid, spec, seed=sampling.client_seed(0, round_num, i))
                for i, cid in enumerate(sampled)
            ]
            output = process.next(state, datasets)
            state = output.state
            losses.append(metrics_lib.flatten(output.metrics)["train/loss"])
    return losses


@pytest.mark.slow  # 30 s in the default suite's last CI run; kept out of it for time
def test_changed_learning_rates_are_what_trains_after_the_resume(small_task, tmp_path):
    old = {"client_learning_rate": 0.1, "server_learning_rate": 1.0}
    new = {"client_learning_rate": 0.02, "server_learning_rate": 0.3}
    first = loop.run(_config(tmp_path, 2, **old), small_task, print_fn=lambda line: None)

    lines = []
    resumed_cfg = _config(tmp_path, 4, **new)
    loop.run(resumed_cfg, small_task, print_fn=lines.append)
    assert (
        "changed since the last invocation, in effect from round 3: --rounds 2 -> 4, "
        "--client_learning_rate 0.1 -> 0.02, --server_learning_rate 1 -> 0.3"
    ) in lines

    # The reference: rounds 3-4 of a process built with the new rates, started
    # from the checkpoint's weights (plain sgd keeps no state but its rates).
    # Round 3's loss shows the client rate, round 4's the server rate too.
    reference = _rounds_from_weights(small_task, resumed_cfg, first.model_weights, 3, 4)
    assert [_csv_loss(tmp_path / "p", 3), _csv_loss(tmp_path / "p", 4)] == pytest.approx(reference, rel=1e-5)
    (with_old_rates,) = _rounds_from_weights(small_task, _config(tmp_path, 4, **old), first.model_weights, 3, 3)
    assert abs(reference[0] - with_old_rates) > 1e-4


def test_under_dp_the_cohort_must_match_and_the_rounds_when_the_noise_was_solved_for_them(tmp_path):
    def fingerprint(**values):
        cfg = make_config(clients_per_round=5, root_dir=str(tmp_path), **values)
        return cfg.fingerprint()

    plain = dict(rounds=10)
    assert config.fingerprint_differences(fingerprint(**plain), fingerprint(rounds=20)) == []
    # Without DP the cohort may change too.
    a = make_config(clients_per_round=5).fingerprint()
    assert config.fingerprint_differences(a, make_config(clients_per_round=8).fingerprint()) == []

    fixed = dict(dp="fixed", dp_noise_multiplier=1.0)
    assert config.fingerprint_differences(fingerprint(rounds=10, **fixed), fingerprint(rounds=20, **fixed)) == []
    assert config.fingerprint_differences(
        make_config(clients_per_round=5, **fixed).fingerprint(), make_config(clients_per_round=8, **fixed).fingerprint()
    ) == ["clients_per_round: 5 -> 8"]
    target = dict(dp="fixed", dp_target_epsilon=5.0)
    assert config.fingerprint_differences(fingerprint(rounds=10, **target), fingerprint(rounds=20, **target)) == [
        "rounds: 10 -> 20"
    ]
    tree = dict(dp="tree", dp_noise_multiplier=1.0)
    assert config.fingerprint_differences(fingerprint(rounds=10, **tree), fingerprint(rounds=20, **tree)) == [
        "rounds: 10 -> 20"
    ]


def test_a_checkpoint_from_before_the_dp_cohort_entry_is_still_accepted():
    current = make_config(clients_per_round=5, dp="fixed", dp_noise_multiplier=1.0).fingerprint()
    saved = {k: v for k, v in current.items() if k != "clients_per_round"}
    assert config.fingerprint_differences(saved, current) == []


def _readme_resume_table():
    with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    start = text.index("| on resume | settings |")
    rows = {}
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        kind, flags = line.strip("|").split("|", 1)
        rows[re.match(r"\*\*[^*]+\*\*", kind.strip()).group(0)] = re.findall(r"`--([a-z0-9_]+)", flags)
    return rows


def test_the_readmes_resume_table_lists_every_setting_under_its_declared_class():
    rows = _readme_resume_table()
    classes = {
        settings.MUST_MATCH: "**must match**",
        settings.MAY_CHANGE: "**may change**",
        settings.NOT_APPLICABLE: "**not applicable**",
    }
    assert sorted(rows) == sorted(classes.values())
    listed = {flag: kind for kind, flags in rows.items() for flag in flags}
    for item in settings.declared(config.RunConfig):
        assert listed.get(item.spec.flag) == classes[item.spec.resume], item.spec.flag


def test_a_checkpoint_from_before_the_task_gained_an_option_resumes_at_its_default():
    current = make_config(task="digits").fingerprint()
    saved = {k: v for k, v in current.items() if k != config.OPTION_DEFAULTS}
    saved["task_options"] = {k: v for k, v in current["task_options"].items() if not k.startswith("feature_skew")}
    assert config.fingerprint_differences(saved, current) == []
    skewed = make_config(task="digits", digits_feature_skew="rotation").fingerprint()
    assert config.fingerprint_differences(saved, skewed) == ["task_options.feature_skew: None -> 'rotation'"]
