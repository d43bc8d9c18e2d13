"""TFF's private names are imported in tffpipe/compat.py only, after a check of TFF's version."""

import ast
import glob
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, user_env
from tffpipe import compat
from tffpipe import errors

PRIVATE_PREFIXES = ("tensorflow_federated.python", "tensorflow_federated.proto")
PRIVATE_ATTRIBUTES = ("__wrapped__", "_async_runner", "_event_loop")


def _private_uses(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PRIVATE_PREFIXES):
            found.append(f"{node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Import):
            found += [f"{node.lineno}: import {a.name}" for a in node.names if a.name.startswith(PRIVATE_PREFIXES)]
        elif isinstance(node, ast.Attribute) and node.attr in PRIVATE_ATTRIBUTES:
            found.append(f"{node.lineno}: .{node.attr}")
    return found


def test_no_module_but_compat_imports_a_private_tff_name_tasks_benchmarks_and_examples_included():
    uses = {}
    paths = glob.glob(os.path.join(REPO_ROOT, "tffpipe", "**", "*.py"), recursive=True)
    for folder in ("tasks", "benchmarks", "examples"):
        paths += glob.glob(os.path.join(REPO_ROOT, folder, "*.py"))
    for path in paths:
        if os.path.basename(path) != "compat.py":
            found = _private_uses(path)
            if found:
                uses[os.path.relpath(path, REPO_ROOT)] = found
    assert uses == {}
    assert _private_uses(os.path.join(REPO_ROOT, "tffpipe", "compat.py"))  # the scan sees them where they are


def test_another_tff_version_is_refused_in_one_line_naming_both_versions():
    compat.check_tff_version(compat.SUPPORTED_TFF)
    with pytest.raises(compat.UnsupportedTFF) as raised:
        compat.check_tff_version("0.88.0")
    message = str(raised.value)
    assert "\n" not in message and "0.87.0" in message and "0.88.0" in message and "uv sync --locked" in message
    assert isinstance(raised.value, errors.UserError)  # the launcher prints it as one line


def test_the_training_path_ties_tffs_workers_to_the_process_on_import(tmp_path):
    # api.train imports the loop before it builds the task or runs anything.
    code = (
        "from tffpipe.runtimes import processes\n"
        "assert not processes._installed\n"
        "from tffpipe.program import loop\n"
        "from tffpipe.compat import executor_factory\n"
        "print(processes._installed, executor_factory.subprocess.Popen is processes.WorkerPopen)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=user_env(), capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "True"]
