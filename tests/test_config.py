"""Settings: declared once, checked with one-line reasons, flags generated from them."""

import dataclasses
import inspect
import subprocess
import sys

from absl import flags
import pytest

from conftest import REPO_ROOT, make_config
from tffpipe import cli
from tffpipe import config
from tffpipe import settings


def test_defaults_are_valid_and_frozen():
    cfg = config.RunConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.schedule = config.ScheduleConfig(rounds=3)
    assert cfg.to_dict()["schedule"]["rounds"] == 50
    assert cfg.runtime.name == "auto"


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(rounds=-1), "--rounds must be at least 1, got -1"),
        (dict(clients_per_round=0), "--clients_per_round must be at least 1, got 0"),
        (dict(checkpoint_every=0), "--checkpoint_every must be at least 1, got 0"),
        (dict(client_batch_size=0), "--client_batch_size must be at least 1, got 0"),
        (
            dict(client_optimizer="rmsprop"),
            "--client_optimizer='rmsprop' is not one of: sgd, sgdm, adam, yogi, adagrad",
        ),
        (dict(server_learning_rate=0.0), "--server_learning_rate must be positive, got 0"),
        (dict(experiment_name="a/b"), "--experiment_name must be a single folder name, got 'a/b'"),
        (dict(experiment_name="."), "--experiment_name must be a single folder name, got '.'"),
        (dict(runtime="tpu"), "--runtime='tpu' is not one of: auto, cpp, inprocess, ray, remote"),
        (dict(clients_per_gpu=0), "--clients_per_gpu must be at least 1, got 0"),
        (dict(cpu_devices=0), "--cpu_devices must be at least 1, got 0"),
        (dict(prefetch_clients="always"), "--prefetch_clients='always' is not one of: auto, on, off"),
        (dict(runtime="remote"), "--runtime=remote needs --workers=HOST:PORT,HOST:PORT,..."),
        (dict(runtime="cpp", workers=["a:1"]), "--workers applies to --runtime=remote, not --runtime=cpp"),
        (dict(runtime="remote", workers=["w0:8000", "w1"]), "--workers: 'w1' is not HOST:PORT"),
        (dict(runtime="remote", workers=["w0:70000"]), "--workers: 'w0:70000' is not HOST:PORT"),
        (dict(runtime="remote", workers=["w0:1", "w0:1"]), "--workers lists a worker twice"),
        (dict(runtime="remote", workers=["w0:1"], worker_wait_sec=-1), "--worker_wait_sec must be at least 0, got -1"),
        (
            dict(runtime="remote", workers=["w0:1"]),
            "--runtime=remote needs --tls_dir (this launcher's folder from `python -m tffpipe.certs issue DIR NAME "
            "--role=launcher`), or --insecure_workers to send everything in plaintext",
        ),
        (
            dict(runtime="remote", workers=["w0:1"], tls_dir="t", insecure_workers=True),
            "--tls_dir and --insecure_workers exclude each other",
        ),
        (dict(runtime="cpp", tls_dir="t"), "--tls_dir applies to --runtime=remote, not --runtime=cpp"),
        (dict(roundz=3), "unknown setting 'roundz' (did you mean 'rounds'?)"),
    ],
)
def test_invalid_settings_name_the_flag(values, message):
    with pytest.raises(config.ConfigError) as info:
        make_config(**values)
    assert str(info.value) == message


# Each combination that makes no sense, and the reason the user is given.
NONSENSE = [
    (
        dict(dp_noise_multiplier=1.0),
        "--dp_noise_multiplier applies to --dp=fixed|adaptive|tree|distributed, not --dp=none",
    ),
    (dict(dp_max_epsilon=3.0), "--dp_max_epsilon applies to --dp=fixed|adaptive|tree|distributed, not --dp=none"),
    (
        dict(dp="fixed", dp_noise_multiplier=1.0, client_weighting="num_examples"),
        "--dp=fixed needs --client_weighting=uniform",
    ),
    (dict(dp="fixed"), "--dp=fixed needs exactly one of --dp_noise_multiplier and --dp_target_epsilon"),
    (
        dict(dp="fixed", dp_noise_multiplier=1.0, dp_target_epsilon=2.0),
        "needs exactly one of --dp_noise_multiplier and --dp_target_epsilon",
    ),
    (
        dict(compression="uniform_quantization", compression_bits=0),
        "--compression_bits must be in 1..16 (TFF's uniform quantization rounds in float32",
    ),
    (dict(compression="uniform_quantization", compression_bits=32), "--compression_bits must be in 1..16"),
    (
        dict(compression_bits=8),
        "--compression_bits applies to --compression=uniform_quantization, not --compression=none",
    ),
    (
        dict(secure_aggregation=True, compression="uniform_quantization"),
        "--secure_aggregation cannot be combined with --compression",
    ),
    (
        dict(secure_aggregation=True, dp="adaptive", dp_noise_multiplier=0.1),
        "--dp=adaptive cannot be combined with --secure_aggregation",
    ),
    (
        dict(compression="uniform_quantization", dp="fixed", dp_noise_multiplier=1.0),
        "--dp cannot be combined with --compression",
    ),
    (
        dict(dp="fixed", dp_noise_multiplier=1.0, algorithm="mime_lite"),
        "--dp cannot be used with --algorithm=mime_lite",
    ),
    (
        dict(dp="adaptive", dp_noise_multiplier=1.0, clients_per_round=10),
        "--dp=adaptive needs a noise multiplier below 0.1 x --clients_per_round = 1",
    ),
    (
        dict(dp="fixed", dp_noise_multiplier=1.0, dp_target_quantile=0.5),
        "--dp_target_quantile applies to --dp=adaptive, not --dp=fixed",
    ),
    (
        dict(dp="distributed", dp_noise_multiplier=1.0, dp_distributed_bits=3, clients_per_round=10),
        "--dp_distributed_bits=3 is too small for 10 clients per round",
    ),
    (dict(dp="distributed", dp_noise_multiplier=1.0, dp_distributed_bits=30), "--dp_distributed_bits must be in 1..22"),
    (dict(dp="fixed", dp_noise_multiplier=1.0, dp_delta=1.0), "--dp_delta must be in (0, 1), got 1"),
    (dict(proximal_strength=0.1), "--proximal_strength applies to --algorithm=fedprox, not --algorithm=fedavg"),
    (dict(algorithm="fedprox", proximal_strength=-1.0), "--proximal_strength must be positive"),
    (dict(server_beta_1=0.9), "--server_beta_1 applies to --server_optimizer=adam|yogi, not --server_optimizer=sgd"),
    (
        dict(server_optimizer="adam", server_momentum=0.9),
        "--server_momentum applies to --server_optimizer=sgdm, not --server_optimizer=adam",
    ),
    (dict(server_optimizer="yogi", server_beta_2=1.0), "--server_beta_2 must be in [0, 1)"),
    (
        dict(algorithm="fedma"),
        "--algorithm must be one of: fedavg, fedprox, fedsgd, mime_lite, fedrecon, fedbuff (or a builder path such as my_pkg.my_module:build), got 'fedma'",
    ),
    (dict(algorithm="fedsgd", client_optimizer="adam"), "--client_optimizer has no effect with --algorithm=fedsgd"),
]


@pytest.mark.parametrize("values, message", NONSENSE)
def test_nonsense_combinations_are_refused_with_the_reason(values, message):
    with pytest.raises(config.ConfigError) as info:
        make_config(**values)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_dp_defaults_to_uniform_weighting_and_the_mechanisms_clip():
    cfg = make_config(dp="adaptive", dp_noise_multiplier=0.1)
    assert cfg.client_weighting == "uniform"
    assert make_config().client_weighting == "num_examples"
    assert (cfg.fingerprint()["dp_clip_norm"], cfg.privacy.delta, cfg.aggregation.dp_adaptive.target_quantile) == (
        0.1,
        1e-5,
        0.5,
    )
    assert make_config(dp="fixed", dp_noise_multiplier=1.0).fingerprint()["dp_clip_norm"] == 1.0
    assert make_config(dp="distributed", dp_noise_multiplier=1.0).fingerprint()["secure_aggregation"] is True


def test_fingerprint_differences_name_the_setting():
    a = make_config(digits_alpha=0.5)
    b = make_config(digits_alpha=0.1, server_optimizer="adam", server_learning_rate=0.01, rounds=99)
    assert config.fingerprint_differences(a.fingerprint(), b.fingerprint()) == [
        "server_optimizer: 'sgd' -> 'adam'",
        "task_options.alpha: 0.5 -> 0.1",
    ]
    # Rounds and learning rates may change across a resume.
    assert config.fingerprint_differences(a.fingerprint(), make_config(rounds=7).fingerprint()) == []


def test_an_explicit_default_never_changes_the_fingerprint():
    # A run started without a setting resumes with that setting's default given.
    pairs = [
        (dict(dp="fixed", dp_noise_multiplier=1.0), dict(dp="fixed", dp_noise_multiplier=1.0, dp_clip_norm=1.0)),
        (dict(dp="adaptive", dp_noise_multiplier=0.1), dict(dp="adaptive", dp_noise_multiplier=0.1, dp_clip_norm=0.1)),
        (dict(), dict(digits_alpha=0.5, digits_num_clients=50, zeroing=True, seed=0, dp="none")),
        (
            dict(dp="distributed", dp_noise_multiplier=1.0),
            dict(dp="distributed", dp_noise_multiplier=1.0, secure_aggregation=True),
        ),
    ]
    for omitted, explicit in pairs:
        assert make_config(**omitted).fingerprint() == make_config(**explicit).fingerprint()


def test_a_setting_added_after_a_checkpoint_is_equal_at_its_default():
    current = make_config().fingerprint()
    older = {k: v for k, v in current.items() if k != "aggregator"}
    assert config.fingerprint_differences(older, current) == []
    changed = make_config(aggregator="examples.norm_bound:norm_bound").fingerprint()
    # (Its options, an entry only a user layer adds, are compared once both sides have one.)
    assert config.fingerprint_differences(older, changed) == [
        "aggregator: None -> 'examples.norm_bound:norm_bound'",
    ]


def test_fingerprint_covers_the_aggregation_stack():
    diffs = config.fingerprint_differences(
        make_config().fingerprint(), make_config(dp="fixed", dp_noise_multiplier=1.0).fingerprint()
    )
    assert "dp: 'none' -> 'fixed'" in diffs
    assert "dp_noise_multiplier: None -> 1.0" in diffs


def test_every_setting_becomes_a_flag_with_its_default():
    fv = flags.FlagValues()
    cli.define_setting_flags(fv)
    cfg = config.RunConfig()
    for flag, item in settings.by_flag(config.RunConfig).items():
        value = fv[flag].value
        if flag == "experiment_name":  # empty: named when the config is built
            assert value == "" and cfg.output.experiment_name == "digits"
            continue
        assert (tuple(value) if isinstance(value, list) else value) == settings.get(cfg, item.path), flag
    # Parsing flags and building from keyword arguments give the same config.
    argv = ["--rounds=7", "--dp=fixed", "--dp_noise_multiplier=0.5", "--digits_alpha=0.1", "--nozeroing"]
    assert cli.parse(["train", *argv]) == make_config(
        rounds=7, dp="fixed", dp_noise_multiplier=0.5, digits_alpha=0.1, zeroing=False
    )


def test_optimizer_hyperparameters_follow_tffs_builder_signatures():
    # config/schema.py restates which optimizer takes which hyperparameter (to check
    # flags before TFF loads); TFF's builders are the truth.
    from tffpipe.learning import optimizers

    table = settings.by_flag(config.RunConfig)
    for field in ("momentum", "beta_1", "beta_2", "epsilon"):
        _, allowed = table[f"client_{field}"].spec.applies_to()
        takes = sorted(
            name
            for name, build in optimizers.builders().items()
            if name != "sgd" and field in inspect.signature(build).parameters
        )
        assert sorted(allowed) == takes, field


def test_settings_flags_and_registries_load_without_tensorflow():
    # What a flag error and `tffpipe.worker` need must not import TensorFlow
    # (8 s here): every layer, algorithm and runtime module is read for its
    # settings when the flags are defined.
    code = (
        "import sys\n"
        "import tffpipe.worker, tffpipe.cli, tffpipe.config\n"
        "from tffpipe.aggregation import registry as a; a.layers()\n"
        "from tffpipe.learning import registry as l; l.algorithms()\n"
        "from tffpipe.runtimes import registry as r; r.runtimes()\n"
        "tffpipe.cli.parse(['train', '--dp=fixed', '--dp_noise_multiplier=1'])\n"
        "print(sorted(m for m in sys.modules if m.startswith(('tensorflow', 'keras'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_task_options_are_read_when_another_thread_trips_cpythons_ast_builder(monkeypatch):
    # python/cpython#106905: on 3.11 a parse in another thread can make ours
    # fail once with a SystemError; CI met it in cli.parse.
    import ast
    from tffpipe import plugins

    real_parse = ast.parse
    failures = []

    def parse_failing_once(source, filename="<unknown>", *args, **kwargs):
        if not failures:
            failures.append(filename)
            raise SystemError("AST constructor recursion depth mismatch (before=153, after=201)")
        return real_parse(source, filename, *args, **kwargs)

    monkeypatch.setattr(ast, "parse", parse_failing_once)
    options = config.plugin_options("task", "digits")
    assert failures and failures[0].endswith("digits.py")
    assert "alpha" in options

    def parse_failing_otherwise(source, filename="<unknown>", *args, **kwargs):
        raise SystemError("some other failure")

    monkeypatch.setattr(ast, "parse", parse_failing_otherwise)
    with pytest.raises(SystemError, match="some other failure"):
        plugins.parse_source("x = 1", "x.py")
