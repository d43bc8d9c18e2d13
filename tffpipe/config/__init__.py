"""The settings of a run, split by job. Imports no TensorFlow.

- `schema`: the frozen `RunConfig` and its groups, each setting declared once
  (`tffpipe.settings`), and `validate`; the groups built from the registries
  are declared for type checkers in the generated `groups.pyi`.
- `plugin_options`: the options of a task, aggregator or algorithm plug-in.
- `values`: `from_values`, a `RunConfig` from flag-named values.
- `fingerprint`: what must match on resume, and how two fingerprints differ.

Library code only ever sees a `RunConfig`, never `FLAGS`.
"""

from tffpipe.config.fingerprint import OPTION_DEFAULTS, fingerprint_differences, fingerprint_to_json
from tffpipe.config.plugin_options import PROGRAM_ARGUMENTS, plugin_options, plugin_path
from tffpipe.config.schema import (
    CLIENT_WEIGHTINGS,
    DEFAULT_CLIENTS_PER_ROUND,
    DEFAULT_DATA_DIR,
    MAX_NAME_BYTES,
    MAX_ROUNDS,
    OPTIMIZERS,
    AggregationConfig,
    AlgorithmConfig,
    AttackConfig,
    ClientConfig,
    ClientOptimizerConfig,
    ClockConfig,
    OutputConfig,
    PersonalizationConfig,
    PrivacyConfig,
    RunConfig,
    RuntimeConfig,
    ScheduleConfig,
    ServerOptimizerConfig,
    TaskConfig,
    VerticalConfig,
    validate,
)
from tffpipe.config.values import from_values
from tffpipe.errors import ConfigError, TaskError

__all__ = [
    "CLIENT_WEIGHTINGS",
    "DEFAULT_CLIENTS_PER_ROUND",
    "DEFAULT_DATA_DIR",
    "MAX_NAME_BYTES",
    "MAX_ROUNDS",
    "OPTIMIZERS",
    "OPTION_DEFAULTS",
    "PROGRAM_ARGUMENTS",
    "AggregationConfig",
    "AlgorithmConfig",
    "AttackConfig",
    "ClientConfig",
    "ClientOptimizerConfig",
    "ClockConfig",
    "ConfigError",
    "OutputConfig",
    "PersonalizationConfig",
    "PrivacyConfig",
    "RunConfig",
    "RuntimeConfig",
    "ScheduleConfig",
    "ServerOptimizerConfig",
    "TaskConfig",
    "TaskError",
    "VerticalConfig",
    "fingerprint_differences",
    "fingerprint_to_json",
    "from_values",
    "plugin_options",
    "plugin_path",
    "validate",
]
