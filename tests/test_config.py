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
        (dict(client_optimizer=config.OptimizerConfig("rmsprop", 0.1)), "--client_optimizer='rmsprop' is not one of: sgd, sgdm, adam"),
        (dict(server_optimizer=config.OptimizerConfig("sgd", 0.0)), "--server_learning_rate must be positive"),
        (dict(output=config.OutputConfig(experiment_name="a/b")), "--experiment_name must be a single folder name"),
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
