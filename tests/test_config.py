import dataclasses

import pytest

from tffpipe import config


def test_defaults_are_valid_and_frozen():
    cfg = config.RunConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.schedule = config.ScheduleConfig(rounds=3)
    assert cfg.to_dict()["schedule"]["rounds"] == 50


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(schedule=config.ScheduleConfig(rounds=-1)), "--rounds must be at least 1, got -1"),
        (dict(schedule=config.ScheduleConfig(clients_per_round=0)), "--clients_per_round must be at least 1"),
        (dict(schedule=config.ScheduleConfig(checkpoint_every=0)), "--checkpoint_every must be at least 1"),
        (dict(client=config.ClientConfig(batch_size=0)), "--client_batch_size must be at least 1"),
        (dict(client_optimizer=config.OptimizerConfig("rmsprop", 0.1)), "--client_optimizer='rmsprop' is not one of: sgd, sgdm, adam, yogi, adagrad"),
        (dict(server_optimizer=config.OptimizerConfig("sgd", 0.0)), "--server_learning_rate must be positive"),
        (dict(output=config.OutputConfig(experiment_name="a/b")), "--experiment_name must be a single folder name"),
        (dict(runtime=config.RuntimeConfig(name="tpu")), "--runtime='tpu' is not one of: cpp, inprocess, remote"),
        (dict(runtime=config.RuntimeConfig(clients_per_gpu=0)), "--clients_per_gpu must be at least 1, got 0"),
        (dict(runtime=config.RuntimeConfig(cpu_devices=0)), "--cpu_devices must be at least 1, got 0"),
        (dict(runtime=config.RuntimeConfig(prefetch_clients="always")), "--prefetch_clients='always' is not one of: auto, on, off"),
        (dict(runtime=config.RuntimeConfig(name="remote")), "--runtime=remote needs --workers=HOST:PORT,HOST:PORT,..."),
        (dict(runtime=config.RuntimeConfig(workers=("a:1",))), "--workers applies to --runtime=remote, not --runtime=cpp"),
        (dict(runtime=config.RuntimeConfig(name="remote", workers=("w0:8000", "w1"))), "--workers: 'w1' is not HOST:PORT"),
        (dict(runtime=config.RuntimeConfig(name="remote", workers=("w0:70000",))), "--workers: 'w0:70000' is not HOST:PORT"),
        (dict(runtime=config.RuntimeConfig(name="remote", workers=("w0:1", "w0:1"))), "--workers lists a worker twice"),
        (dict(runtime=config.RuntimeConfig(name="remote", workers=("w0:1",), worker_wait_sec=-1)), "--worker_wait_sec must be at least 0, got -1"),
    ],
)
def test_invalid_settings_name_the_flag(kwargs, message):
    with pytest.raises(config.ConfigError) as info:
        config.RunConfig(**kwargs)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_fingerprint_differences_name_the_setting():
    a = config.RunConfig(task=config.TaskConfig("digits", {"alpha": 0.5}))
    b = config.RunConfig(
        task=config.TaskConfig("digits", {"alpha": 0.1}),
        server_optimizer=config.OptimizerConfig("adam", 0.01),
        schedule=config.ScheduleConfig(rounds=99),
    )
    diffs = config.fingerprint_differences(a.fingerprint(), b.fingerprint())
    assert diffs == ["server_optimizer: 'sgd' -> 'adam'", "task_options.alpha: 0.5 -> 0.1"]
    # Rounds and learning rates may change across a resume.
    assert config.fingerprint_differences(a.fingerprint(), config.RunConfig(
        task=config.TaskConfig("digits", {"alpha": 0.5}),
        schedule=config.ScheduleConfig(rounds=7)).fingerprint()) == []


def _dp(mechanism="fixed", **kwargs):
    return config.PrivacyConfig(mechanism, **kwargs)


def _agg(**kwargs):
    return config.AggregationConfig(**kwargs)


# Each combination that makes no sense, and the reason the user is given.
NONSENSE = [
    (dict(aggregation=_agg(dp=config.PrivacyConfig(noise_multiplier=1.0))),
     "--dp_noise_multiplier has no effect without differential privacy"),
    (dict(aggregation=_agg(dp=config.PrivacyConfig(max_epsilon=3.0))),
     "--dp_max_epsilon has no effect without differential privacy"),
    (dict(aggregation=_agg(dp=_dp(noise_multiplier=1.0)),
          algorithm=config.AlgorithmConfig(client_weighting="num_examples")),
     "--dp=fixed needs --client_weighting=uniform"),
    (dict(aggregation=_agg(dp=_dp())),
     "--dp=fixed needs exactly one of --dp_noise_multiplier and --dp_target_epsilon"),
    (dict(aggregation=_agg(dp=_dp(noise_multiplier=1.0, target_epsilon=2.0))),
     "needs exactly one of --dp_noise_multiplier and --dp_target_epsilon"),
    (dict(aggregation=_agg(compression="uniform_quantization", compression_bits=0)),
     "--compression_bits=0 is outside 1..16"),
    (dict(aggregation=_agg(compression="uniform_quantization", compression_bits=32)),
     "--compression_bits=32 is outside 1..16"),
    (dict(aggregation=_agg(compression_bits=8)),
     "--compression_bits applies to --compression=uniform_quantization"),
    (dict(aggregation=_agg(secure=True, compression="uniform_quantization")),
     "--secure_aggregation cannot be combined with --compression"),
    (dict(aggregation=_agg(secure=True, dp=_dp("adaptive", noise_multiplier=0.1))),
     "--dp=adaptive cannot be combined with --secure_aggregation"),
    (dict(aggregation=_agg(compression="uniform_quantization", dp=_dp(noise_multiplier=1.0))),
     "--dp cannot be combined with --compression"),
    (dict(aggregation=_agg(dp=_dp(noise_multiplier=1.0)),
          algorithm=config.AlgorithmConfig("mime_lite")),
     "--dp cannot be used with --algorithm=mime_lite"),
    (dict(aggregation=_agg(dp=_dp("adaptive", noise_multiplier=1.0)),
          schedule=config.ScheduleConfig(clients_per_round=10)),
     "--dp=adaptive needs a noise multiplier below 0.1 x --clients_per_round = 1"),
    (dict(aggregation=_agg(dp=_dp(noise_multiplier=1.0, target_quantile=0.5))),
     "--dp_target_quantile applies to --dp=adaptive, not --dp=fixed"),
    (dict(aggregation=_agg(dp=_dp("distributed", noise_multiplier=1.0, distributed_bits=3)),
          schedule=config.ScheduleConfig(clients_per_round=10)),
     "--dp_distributed_bits=3 is too small for 10 clients per round"),
    (dict(aggregation=_agg(dp=_dp("distributed", noise_multiplier=1.0, distributed_bits=30))),
     "--dp_distributed_bits must be in 1..22"),
    (dict(aggregation=_agg(dp=_dp(noise_multiplier=1.0, delta=1.0))),
     "--dp_delta must be in (0, 1)"),
    (dict(algorithm=config.AlgorithmConfig("fedavg", proximal_strength=0.1)),
     "--proximal_strength applies to --algorithm=fedprox, not fedavg"),
    (dict(algorithm=config.AlgorithmConfig("fedprox", proximal_strength=-1.0)),
     "--proximal_strength must be positive"),
    (dict(server_optimizer=config.OptimizerConfig("sgd", 1.0, beta_1=0.9)),
     "--server_beta_1 applies to --server_optimizer=adam|yogi, not sgd"),
    (dict(server_optimizer=config.OptimizerConfig("adam", 0.01, momentum=0.9)),
     "--server_momentum applies to --server_optimizer=sgdm, not adam"),
    (dict(server_optimizer=config.OptimizerConfig("yogi", 0.01, beta_2=1.0)),
     "--server_beta_2 must be in [0, 1)"),
    (dict(algorithm=config.AlgorithmConfig("fedma")),
     "--algorithm='fedma' is not one of: fedavg, fedprox, fedsgd, mime_lite"),
]


@pytest.mark.parametrize("kwargs, message", NONSENSE)
def test_nonsense_combinations_are_refused_with_the_reason(kwargs, message):
    with pytest.raises(config.ConfigError) as info:
        config.RunConfig(**kwargs)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_dp_defaults_to_uniform_weighting_and_sensible_parameters():
    cfg = config.RunConfig(aggregation=_agg(dp=_dp("adaptive", noise_multiplier=0.1)))
    assert cfg.client_weighting == "uniform"
    assert config.RunConfig().client_weighting == "num_examples"
    dp = cfg.aggregation.dp
    assert (dp.resolved_clip_norm, dp.resolved_delta, dp.resolved_target_quantile) == (0.1, 1e-5, 0.5)
    assert _dp(noise_multiplier=1.0).resolved_clip_norm == 1.0
    assert _agg(dp=_dp("distributed", noise_multiplier=1.0)).uses_secure_sum


def test_fingerprint_covers_the_aggregation_stack():
    plain = config.RunConfig()
    private = config.RunConfig(aggregation=_agg(dp=_dp(noise_multiplier=1.0)))
    diffs = config.fingerprint_differences(plain.fingerprint(), private.fingerprint())
    assert "dp: 'none' -> 'fixed'" in diffs
    assert "dp_noise_multiplier: None -> 1.0" in diffs
