"""Run folders without --experiment_name: named from the settings, so commands never collide."""

import os
import re
import shlex
import socket
import subprocess
import sys

import pytest
from absl import flags

from tffpipe import cli
from tffpipe import config
from tffpipe import errors
from tffpipe import run_names

from conftest import REPO_ROOT, documentation_pages, user_env


def _name(**values):
    return config.from_values(values).output.experiment_name


def test_a_run_at_every_default_is_named_after_its_task():
    assert _name() == "digits"
    assert _name(rounds=50, seed=0, digits_alpha=0.5) == "digits"  # explicit defaults are omitted ones
    assert _name(task="diabetes") == "diabetes"
    assert config.RunConfig().output.run_dir == os.path.join(config.OutputConfig().root_dir, "digits")


def test_the_name_lists_what_differs_from_the_defaults_with_a_hash_of_it():
    name = _name(digits_alpha=0.1, algorithm="fedprox", client_learning_rate=0.05, secure_aggregation=True)
    slug, digest = name.rsplit("-", 1)
    assert slug == "digits-algorithm=fedprox-client_learning_rate=0.05-digits_alpha=0.1-secure_aggregation"
    assert re.fullmatch("[0-9a-f]{8}", digest)
    # The same settings given in another order (or as flags) name the same folder.
    assert _name(secure_aggregation=True, client_learning_rate=0.05, algorithm="fedprox", digits_alpha=0.1) == name
    parsed = cli.parse(
        ["train", "--secure_aggregation", "--client_learning_rate=0.05", "--algorithm=fedprox", "--digits_alpha=0.1"]
    )
    assert parsed.output.experiment_name == name


def test_any_setting_that_differs_gives_another_folder():
    names = {
        _name(),
        _name(seed=1),
        _name(seed=2),
        _name(rounds=20),
        _name(runtime="inprocess"),
        _name(client_learning_rate=0.02),
        _name(client_learning_rate=0.05),
        _name(dp="fixed", dp_noise_multiplier=1.0),
        _name(digits_alpha=0.1),
        _name(task="diabetes"),
        _name(task="diabetes", client_learning_rate=0.02),
    }
    assert len(names) == 11
    # Where a run reads and writes is not part of the name: a moved --root_dir still resumes.
    assert _name(root_dir="/elsewhere", data_dir="/data") == "digits"


def test_an_explicit_name_is_kept():
    assert _name(experiment_name="mine", seed=3) == "mine"


def test_long_names_are_cut_and_stay_distinct():
    many = dict(
        client_learning_rate=0.0123456,
        server_learning_rate=0.654321,
        client_epochs=3,
        client_batch_size=17,
        clients_per_round=7,
        eval_every=3,
        checkpoint_every=4,
        keep_checkpoints=5,
        seed=11,
        rounds=33,
    )
    first, second = _name(**many), _name(**many, digits_alpha=0.2)
    assert first != second
    for name in (first, second):
        assert len(name.encode()) <= config.MAX_NAME_BYTES
        slug = name.rsplit("-", 1)[0]
        assert len(slug) <= len("digits-") + run_names.MAX_SLUG_CHARS + len("-+10more")
        assert re.search(r"-\+\d+more$", slug)
    assert run_names._value_text(1.0) == "1" and run_names._value_text(None) == "none"
    assert run_names.safe("a/b c") == "a_b_c"


# --- The README's commands, in its order and in reverse --------------------------------

_COMMAND = re.compile(r"python -m tffpipe\.train(.*)$")


def _readme_train_commands():
    """Every `python -m tffpipe.train` command in the code blocks of the README and the site's pages, in order.

    Each is named by its file and line (`docs/tasks.md:42`).
    """
    commands = []
    for path, text in documentation_pages():
        lines = text.split("\n")
        fenced, i = False, 0
        while i < len(lines):
            line = lines[i]
            if line.startswith("```"):
                fenced = not fenced
            elif fenced and _COMMAND.search(line) and not line.lstrip().startswith("#"):
                start = f"{path}:{i + 1}"
                while line.endswith("\\"):
                    i += 1
                    line = line[:-1] + " " + lines[i].strip()
                commands.append((start, shlex.split(_COMMAND.search(line).group(1))))
            i += 1
    return commands


def _readme_files(folder):
    """The files the documentation's commands read (`run.flags`, `my_task.py`, `my_vertical_task.py`), as it shows them."""
    readme = "\n".join(text for _, text in documentation_pages())
    flags_line = re.search(r'printf -- "(.*?)" > run\.flags', readme).group(1)
    (folder / "run.flags").write_text(flags_line.replace("\\n", "\n"))
    for name in ("my_task.py", "my_vertical_task.py"):
        code = re.search(rf"```python\n# {name}\n(.*?)```", readme, re.S).group(1)
        (folder / name).write_text(code)


@pytest.fixture
def readme_folder(tmp_path, monkeypatch):
    _readme_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))

    def no_lookups(*args, **kwargs):  # the README names hosts such as worker-1.example.org
        raise socket.gaierror(socket.EAI_NONAME, "not resolved in tests")

    monkeypatch.setattr(socket, "getaddrinfo", no_lookups)
    return tmp_path


def test_no_two_readme_commands_share_a_run_folder_in_either_order(readme_folder):
    commands = _readme_train_commands()
    assert len(commands) >= 25
    started = {}  # command -> (folder, fingerprint), or None when it is refused (and writes nothing)
    for line, argv in commands:
        try:
            cfg = cli.parse(["train", *argv])
        except (errors.UserError, flags.Error):
            started[line] = None
            continue
        started[line] = (cfg.output.experiment_name, cfg.fingerprint(), tuple(argv))
    assert sum(v is not None for v in started.values()) >= 20
    for order in (commands, commands[::-1]):
        holder = {}  # folder -> the first command that wrote it
        for line, _ in order:
            if started[line] is None:
                continue
            folder, fingerprint, argv = started[line]
            if folder in holder:
                first_line = holder[folder]
                _, first_fingerprint, first_argv = started[first_line]
                # The launcher would refuse this command or resume the other's run.
                assert config.fingerprint_differences(first_fingerprint, fingerprint) == [], (line, first_line)
                assert argv == first_argv, f"{first_line} and {line} share the folder {folder}"
            holder.setdefault(folder, line)


@pytest.mark.slow
def test_the_launcher_resumes_a_rerun_command_and_gives_another_command_its_own_folder(tmp_path):
    def launch(*args):
        done = subprocess.run(
            [sys.executable, "-m", "tffpipe.train", f"--root_dir={tmp_path}", "--rounds=1", "--eval_every=0", *args],
            cwd=REPO_ROOT,
            env=user_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    first = launch()
    folder = re.search(r"outputs in (\S+)", first).group(1)
    assert folder == str(tmp_path / "digits-eval_every=0-rounds=1-") + folder.rsplit("-", 1)[1]
    assert f"{folder} already holds 1 rounds" in launch()
    other = launch("--digits_alpha=0.1")
    assert "already holds" not in other and "done: 1 rounds" in other
    assert sorted(p.name for p in os.scandir(tmp_path) if p.is_dir()) == sorted(
        [os.path.basename(folder), re.search(r"outputs in (\S+)", other).group(1).rsplit("/", 1)[1]]
    )


def test_the_readmes_example_names_are_the_ones_given():
    with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as f:
        readme = " ".join(f.read().split())
    flags_given, folder = re.search(
        r"`(--digits_alpha=\S+ --rounds=\S+)` writes `/tmp/tffpipe/(\S+)/`", readme
    ).groups()
    assert cli.parse(["train", *flags_given.split()]).output.experiment_name == folder
    assert "the quick start writes `/tmp/tffpipe/digits/`" in readme and _name() == "digits"
