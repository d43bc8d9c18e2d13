"""`python -m tffpipe.doctor`: its checks, and the command as a user runs it."""

import importlib.metadata
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, processes_with_marker
from tffpipe import doctor
from tffpipe.tasks import public_data


def test_python_outside_the_supported_range_fails():
    assert doctor.check_python(">=3.11,<3.12").status == (doctor.OK if sys.version_info[:2] == (3, 11) else doctor.FAIL)
    check = doctor.check_python(">=3.12")
    assert check.status == doctor.FAIL
    assert check.detail.endswith("but tffpipe needs >=3.12")


def test_package_checks_compare_installed_versions_with_the_pins():
    versions = {"tensorflow": "2.14.1", "absl-py": "2.1.0"}

    def installed(name):
        if name not in versions:
            raise importlib.metadata.PackageNotFoundError(name)
        return versions[name]

    checks = list(
        doctor.check_packages(
            ["tensorflow==2.14.1", "absl-py<2,>=1.4", "packaging>=22", "nvidia-cudnn-cu11==8.7.0.84; extra == 'gpu'"],
            installed,
        )
    )
    assert [c.line() for c in checks] == [
        "ok    tensorflow: 2.14.1",
        "FAIL  absl-py: 2.1.0 installed, but tffpipe needs <2,>=1.4; run `uv sync`",
        "FAIL  packaging: not installed (needs >=22); run `uv sync`",
    ]


def test_robust_server_memory_is_cohort_times_model_size():
    from tffpipe.aggregation import robust

    assert robust.server_memory_bytes(50, 1_206_590) == 50 * 1_206_590 * 4  # EMNIST cnn_dropout: 241 MB
    check = doctor.check_memory(300 * 2**20, 200 * 2**20, "--robust", name="memory under --robust")
    assert check.status == doctor.FAIL and check.name == "memory under --robust"


def test_memory_check_compares_free_memory_with_the_estimate():
    mib = 1 << 20
    # EMNIST cnn_dropout, 50 clients: 1,536 MiB + 50 x 1,206,590 x 16 bytes.
    needed = doctor.estimate_memory_bytes(1_206_590, 50)
    assert round(needed / mib) == 1536 + round(50 * 1_206_590 * 16 / mib)
    assert doctor.check_memory(needed, 10 * needed, "50 clients a round").status == doctor.OK
    assert doctor.check_memory(needed, int(1.2 * needed), "x").status == doctor.WARN
    low = doctor.check_memory(needed, needed // 2, "50 clients a round")
    assert low.status == doctor.FAIL
    assert low.detail.endswith("; lower --clients_per_round or free memory")


def test_worker_binary_check(tmp_path):
    missing = doctor.check_worker_binary(str(tmp_path / "worker_binary"))
    assert missing.status == doctor.FAIL and "missing at" in missing.detail
    plain = tmp_path / "worker_binary"
    plain.write_text("")
    assert doctor.check_worker_binary(str(plain)).status == doctor.FAIL
    plain.chmod(0o755)
    assert doctor.check_worker_binary(str(plain)).status == doctor.OK


def test_gpus_the_driver_shows_but_tensorflow_cannot_use_get_the_fix():
    hint = doctor.check_gpu_libraries(tensorflow_gpus=0, driver_gpus=2)
    assert hint.status == doctor.WARN
    assert hint.detail.startswith("nvidia-smi shows 2 GPU(s) but TensorFlow sees none")
    assert "`uv sync --extra gpu`" in hint.detail
    assert doctor.check_gpu_libraries(tensorflow_gpus=2, driver_gpus=2) is None
    assert doctor.check_gpu_libraries(tensorflow_gpus=0, driver_gpus=0) is None


def _lines(checks):
    lines = [check.line() for check in checks]
    failed = any(check.status == doctor.FAIL for check in checks)
    return lines + ["some checks failed: see the FAIL lines" if failed else "all checks passed"]


@pytest.mark.slow  # smoke rounds on both runtimes (35 s)
def test_doctor_passes_here_and_smoke_tests_both_runtimes():
    configs = {name: doctor.runtime_config(name) for name in ("cpp", "inprocess")}
    lines = _lines(list(doctor.run_checks("digits", public_data.DEFAULT_DATA_DIR, 10, configs, smoke=True)))
    names = [line[6:].split(":")[0] for line in lines[:-1]]
    for name in (
        "python",
        "tensorflow-federated",
        "tensorflow",
        "tensorflow devices",
        "runtime cpp",
        "runtime inprocess",
        "worker binary",
        "task digits",
        "memory",
        "smoke round cpp",
        "smoke round inprocess",
    ):
        assert name in names, name
    assert all(line.startswith(("ok ", "warn ")) for line in lines[:-1]), lines
    assert "ok    runtime inprocess: 2 client slot(s) on /device:CPU:0" in lines
    assert "ok    task digits: 40 training clients, model of 85,066 parameters" in lines
    # --robust gathers the cohort's updates at the server: 10 x 85,066 x 4 bytes.
    assert any(
        line.startswith("ok    memory under --robust: ") and "(the server holds all 10 updates, 3.2 MiB more)" in line
        for line in lines
    ), lines
    smoke = [line for line in lines if line.startswith("ok    smoke round")]
    assert len(smoke) == 2 and all(" 45 examples trained in " in line for line in smoke), smoke
    assert lines[-1] == "all checks passed"


def test_doctor_fails_on_a_task_it_cannot_load(tmp_path, monkeypatch):
    monkeypatch.setenv(public_data.MIRROR_ENV, "http://127.0.0.1:9/")  # nothing listens
    configs = {"cpp": doctor.runtime_config("cpp")}
    lines = _lines(list(doctor.run_checks("emnist", str(tmp_path), 10, configs, smoke=False)))
    failed = [line for line in lines if line.startswith("FAIL")]
    assert len(failed) == 1 and failed[0].startswith(
        f"FAIL  task emnist: dataset file {tmp_path}/emnist_all.sqlite is missing"
    )
    assert lines[-1] == "some checks failed: see the FAIL lines"


def test_the_doctor_command_exits_0_and_leaves_no_worker(marker_env):
    # The command as a user runs it, without the smoke rounds the test above runs.
    env, marker = marker_env
    result = subprocess.run(
        [sys.executable, "-m", "tffpipe.doctor", "--nosmoke"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == "all checks passed"
    assert not [p for p in processes_with_marker(marker) if "worker_binary" in p[1]]
