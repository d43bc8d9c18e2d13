"""What the wheel installs: tffpipe and the built-in tasks under names of their own, no test tools."""

import glob
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile

from conftest import REPO_ROOT

TEST_AND_LINT_TOOLS = {"pytest", "pytest-xdist", "ruff", "mypy", "pre-commit", "playwright", "mkdocs"}


def _uv() -> str:
    uv = os.environ.get("UV") or shutil.which("uv")  # `uv run` names itself in $UV
    assert uv, "uv is not on PATH"
    return uv


def test_the_package_list_names_every_folder_of_tffpipe():
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
        listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    on_disk = {
        os.path.relpath(os.path.dirname(path), REPO_ROOT).replace(os.sep, ".")
        for path in glob.glob(os.path.join(REPO_ROOT, "tffpipe", "**", "__init__.py"), recursive=True)
    }
    assert listed == on_disk | {"tffpipe_tasks"}


def test_the_wheel_installs_tffpipe_and_tffpipe_tasks_and_requires_no_test_tool(tmp_path):
    subprocess.run(
        [_uv(), "build", "--wheel", "--out-dir", str(tmp_path), REPO_ROOT], check=True, capture_output=True, text=True
    )
    (wheel,) = glob.glob(str(tmp_path / "*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        requires = [
            line.split(":", 1)[1].strip()
            for line in archive.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist:")
        ]
    top_level = {name.split("/", 1)[0] for name in names if not name.split("/", 1)[0].endswith(".dist-info")}
    assert top_level == {"tffpipe", "tffpipe_tasks"}
    built_in_tasks = {os.path.basename(p) for p in glob.glob(os.path.join(REPO_ROOT, "tasks", "*.py"))}
    assert {n.split("/", 1)[1] for n in names if n.startswith("tffpipe_tasks/")} == built_in_tasks
    required = {r.split(";")[0].split("[")[0].split("=")[0].split("<")[0].split(">")[0].strip() for r in requires}
    assert "tensorflow-federated" in required
    assert not required & TEST_AND_LINT_TOOLS


def test_built_in_tasks_load_outside_the_repository_and_no_top_level_tasks_is_installed(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = (
        "import importlib.util\n"
        "from tffpipe import config\n"
        "from tffpipe.tasks import registry\n"
        "print(registry.factory_path('vertical_breast_cancer'))\n"
        "print(sorted(config.plugin_options('task', 'digits'))[:1])\n"
        "print(registry.load_factory('vertical_breast_cancer').__module__)\n"
        "print(importlib.util.find_spec('tasks'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, check=True, capture_output=True, text=True
    ).stdout.splitlines()
    assert out[0] == "tffpipe_tasks.vertical_breast_cancer:create_task"
    assert out[1] != "[]"
    assert out[2] == "tffpipe_tasks.vertical_breast_cancer"
    assert out[3] == "None"
