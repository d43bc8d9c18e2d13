"""Bad arguments are refused in one line before any work: the API's types, names, help."""

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, user_env
from tffpipe import api
from tffpipe import cli
from tffpipe import config
from tffpipe import settings
from tffpipe.program import progress


@pytest.mark.parametrize(
    "values, message",
    [
        ({"rounds": "two"}, "--rounds must be a whole number, got 'two' (str)"),
        ({"rounds": "3"}, "--rounds must be a whole number, got '3' (str)"),
        ({"rounds": 2.5}, "--rounds must be a whole number, got 2.5 (float)"),
        ({"rounds": True}, "--rounds must be a whole number, got True (bool)"),
        ({"rounds": 10**20}, "--rounds must be at most 1,000,000,000, got 100000000000000000000"),
        ({"client_learning_rate": None}, "--client_learning_rate must be a number, got None (NoneType)"),
        ({"client_learning_rate": "0.1"}, "--client_learning_rate must be a number, got '0.1' (str)"),
        ({"client_learning_rate": float("inf")}, "--client_learning_rate must be a finite number, got inf"),
        ({"client_learning_rate": float("nan")}, "--client_learning_rate must be a finite number, got nan"),
        ({"zeroing": "yes"}, "--zeroing must be True or False, got 'yes' (str)"),
        ({"zeroing": 1}, "--zeroing must be True or False, got 1 (int)"),
        ({"task": 3}, "--task must be a string, got 3 (int)"),
        ({"dp": "fixed", "dp_noise_multiplier": "1"}, "--dp_noise_multiplier must be a number, got '1' (str)"),
        ({"digits_alpha": "0.1"}, "--digits_alpha must be a number, got '0.1' (str)"),
        ({"on_divergence": "ignore"}, "--on_divergence='ignore' is not one of: stop, warn"),
        (
            {"experiment_name": "a\nb"},
            "--experiment_name must not contain control characters (it holds '\\n'), got 'a\\nb'",
        ),
        (
            {"experiment_name": "x" * 300},
            "--experiment_name must be at most 255 bytes long, the longest folder name a "
            f"filesystem takes, got '{'x' * 57}...'",
        ),
    ],
)
def test_run_refuses_a_wrong_type_in_one_line_before_writing_anything(values, message, tmp_path):
    with pytest.raises(config.ConfigError) as info:
        api.run(root_dir=str(tmp_path / "root"), quiet=True, **values)
    assert str(info.value) == message
    assert not os.path.exists(tmp_path / "root")


def test_python_numbers_of_the_right_kind_are_taken():
    import numpy as np

    cfg = config.from_values({"rounds": np.int64(3), "client_learning_rate": 1, "digits_alpha": 1, "zeroing": np.True_})
    assert cfg.schedule.rounds == 3 and type(cfg.schedule.rounds) is int
    assert cfg.client_optimizer.learning_rate == 1.0 and type(cfg.client_optimizer.learning_rate) is float
    assert cfg.task.options["alpha"] == 1.0 and type(cfg.task.options["alpha"]) is float
    assert cfg.aggregation.zeroing.enabled is True


def test_the_eta_of_a_huge_run_is_words_not_an_overflow():
    assert progress.format_eta(61) == "0:01:01"
    assert progress.format_eta(1e20) == "over 100 years"
    assert progress.format_eta(float("nan")) == "over 100 years"


def _launch(*args):
    return subprocess.run(
        [sys.executable, "-m", "tffpipe.train", *args],
        cwd=REPO_ROOT,
        env=user_env(),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_helpfull_lists_every_flag_and_exits_zero():
    done = _launch("--helpfull")
    assert done.returncode == 0, done.stderr
    for item in settings.declared(config.RunConfig):
        assert f"--{item.spec.flag}" in done.stdout or f"--[no]{item.spec.flag}" in done.stdout


def test_helpshort_gives_each_flags_first_sentence_whole():
    text = cli.short_help("python -m tffpipe.train")
    entries = re.split(r"\n  (?=--)", text.split("\n", 1)[1])
    by_flag = {}
    for entry in entries:
        lines = [line for line in entry.splitlines() if line.startswith(" ") or line.startswith("--")]
        flat = " ".join(line.strip() for line in lines)
        if flat.startswith("--"):
            by_flag[flat.split()[0][2:]] = flat
    for item in settings.declared(config.RunConfig):
        if not item.spec.short:
            continue
        shown = by_flag[item.spec.flag]
        first = re.split(r"(?<!\bal)\.\s+(?=[A-Z])", item.spec.help, maxsplit=1)[0].rstrip(".")
        assert " ".join(first.split()) in shown, item.spec.flag
        assert "..." not in shown
    assert "Every this many rounds (and after the last), fine-tune the global model" in " ".join(text.split())


def test_settings_that_must_match_are_refused_before_tensorflow_loads(tmp_path):
    from tffpipe.program import files

    checkpoints_dir = tmp_path / "e" / "checkpoints"
    os.makedirs(checkpoints_dir / "program_state_2")
    saved = config.from_values({"root_dir": str(tmp_path), "experiment_name": "e"}).fingerprint()
    files.write_json_atomic(str(checkpoints_dir / "fingerprint.json"), saved)
    probe = (
        "import sys\n"
        "from tffpipe import config\n"
        "from tffpipe.program import saved_settings\n"
        f"cfg = config.from_values({{'root_dir': {str(tmp_path)!r}, 'experiment_name': 'e', 'seed': 5, "
        "'digits_alpha': 0.1})\n"
        "try:\n"
        "    saved_settings.refuse_changed_settings(cfg)\n"
        "except saved_settings.ResumeError as e:\n"
        "    print(e)\n"
        "print('tensorflow loaded' if 'tensorflow' in sys.modules else 'tensorflow not loaded')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, env=user_env(), capture_output=True, text=True, timeout=120
    )
    assert done.stdout.splitlines() == [
        f"the checkpoint of round 2 in {checkpoints_dir} was written with different settings (seed: 0 -> 5; "
        "task_options.alpha: 0.5 -> 0.1); use the original settings or a new --experiment_name",
        "tensorflow not loaded",
    ], done.stderr
    launched = _launch(f"--root_dir={tmp_path}", "--experiment_name=e", "--seed=5")
    assert launched.returncode == 2
    assert launched.stderr.strip().splitlines()[-1].startswith("error: the checkpoint of round 2 in ")
    assert sorted(os.listdir(tmp_path)) == [".e.lock", "e"] and os.listdir(tmp_path / "e") == ["checkpoints"]
