"""Declaring a setting once: its flag, type, default, help, choices and checks.

A setting is a field of a frozen config dataclass declared with `setting(...)`.
Everything else is derived from that one declaration: the absl flags of
`python -m tffpipe.train` (`tffpipe.flags`), the keyword arguments of
`tffpipe.run`, the value checks, the "applies only to" checks, the `--helpshort`
groups, and which settings the checkpoint fingerprint compares on resume.

This module imports no TensorFlow, so settings are checked in a fraction of a
second.
"""

import dataclasses
import math
import numbers
import sys
import typing
from typing import Any
from collections.abc import Callable, Iterator, Mapping

from tffpipe.errors import ConfigError

# What a resume does when a setting differs from the checkpoint's.
MUST_MATCH = "must match"  # refused, with the setting named
MAY_CHANGE = "may change"  # the new value is used from the resumed round on
NOT_APPLICABLE = "not applicable"  # does not reach the saved state (where, how)

# `--helpshort` groups, in the order it prints them.
GROUPS = (
    "run",
    "clients",
    "clock",
    "algorithm",
    "aggregation",
    "privacy",
    "attacks",
    "personalization",
    "runtime",
    "vertical",
    "outputs",
)

_SPEC = "tffpipe.setting"


@dataclasses.dataclass(frozen=True)
class Spec:
    """How one config field is exposed and checked.

    Attributes:
      flag: the flag name (and the keyword of `tffpipe.run`).
      help: one sentence for `--help`.
      group: one of `GROUPS`.
      choices: the allowed values, if a fixed set (a callable is called when
        the flags are defined, for choices that come from a registry).
      check: returns why a value is invalid ("must be at least 1"), or None.
      applies: (selector flag, values): the setting only means something when
        the selector has one of these values; giving it otherwise is refused.
      resume: `MUST_MATCH`, `MAY_CHANGE` or `NOT_APPLICABLE`.
      short: listed by `--helpshort`.
      default_text: how `--help` shows a default of None ("auto", "TFF's").
      effective: maps (the run's `components.Selection`, value) to the value in effect, for settings
        whose default depends on others; the fingerprint compares that.
    """

    flag: str
    help: str
    group: str
    choices: tuple[Any, ...] | Callable[[], tuple[Any, ...]] | None = None
    check: Callable[[Any], str | None] | None = None
    applies: tuple[str, tuple[Any, ...] | Callable[[], tuple[Any, ...]]] | None = None
    resume: str = MAY_CHANGE
    short: bool = False
    default_text: str | None = None
    effective: Callable[[Any, Any], Any] | None = None

    def allowed(self) -> tuple[Any, ...] | None:
        return self.choices() if callable(self.choices) else self.choices

    def applies_to(self) -> tuple[str, tuple[Any, ...]] | None:
        if self.applies is None:
            return None
        selector, values = self.applies
        return selector, tuple(values() if callable(values) else values)


def setting(default: Any, help: str, *, flag: str, group: str, **spec: Any) -> Any:
    """A dataclass field declared as a setting (see `Spec` for the keywords)."""
    if group not in GROUPS:
        raise ValueError(f"unknown settings group {group!r}")
    return dataclasses.field(default=default, metadata={_SPEC: Spec(flag=flag, help=help, group=group, **spec)})


def group(cls: type) -> Any:
    """A dataclass field holding a nested group of settings, default-constructed."""
    return dataclasses.field(default_factory=cls)


# --- Value checks: each returns the reason a value is invalid, or None. ------
def at_least(low: float) -> Callable[[Any], str | None]:
    return lambda v: None if v is None or v >= low else f"must be at least {low:g}"


def at_most(high: float) -> Callable[[Any], str | None]:
    shown = f"{high:,}" if isinstance(high, int) else f"{high:g}"
    return lambda v: None if v is None or v <= high else f"must be at most {shown}"


def all_of(*checks: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    """The first reason any of `checks` gives."""
    return lambda v: next((reason for reason in (check(v) for check in checks) if reason), None)


def positive(v: Any) -> str | None:
    return None if v is None or v > 0 else "must be positive"


def in_range(low: float, high: float, *, closed_high: bool = True, why: str = "") -> Callable[[Any], str | None]:
    """`low <= v <= high` (or `< high`), written as the math does."""
    bracket = "]" if closed_high else ")"

    def check(v):
        if v is None or (low <= v <= high if closed_high else low <= v < high):
            return None
        return f"must be in [{low:g}, {high:g}{bracket}{why}"

    return check


def open_interval(low: float, high: float) -> Callable[[Any], str | None]:
    return lambda v: None if v is None or low < v < high else f"must be in ({low:g}, {high:g})"


def integer_range(low: int, high: int, why: str = "") -> Callable[[Any], str | None]:
    return lambda v: None if v is None or low <= v <= high else f"must be in {low}..{high}{why}"


# --- Walking the declarations -------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Declared:
    """One declared setting: where it sits in the config and how it is exposed."""

    path: tuple[str, ...]
    spec: Spec
    default: Any
    type: Any


def declared(config_cls: type) -> Iterator[Declared]:
    """Every setting of a config dataclass, nested groups included, in order."""
    hints = typing.get_type_hints(config_cls)
    for field in dataclasses.fields(config_cls):
        if _SPEC in field.metadata:
            yield Declared((field.name,), field.metadata[_SPEC], field.default, hints[field.name])
        elif dataclasses.is_dataclass(hints.get(field.name)):
            for inner in declared(hints[field.name]):
                yield dataclasses.replace(inner, path=(field.name, *inner.path))


def by_flag(config_cls: type) -> dict[str, Declared]:
    """Flag name -> declaration; a flag declared twice is a programming error."""
    table: dict[str, Declared] = {}
    for item in declared(config_cls):
        if item.spec.flag in table:
            raise ValueError(f"setting --{item.spec.flag} is declared twice")
        table[item.spec.flag] = item
    return table


def get(config: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        config = getattr(config, name)
    return config


def effective(config: Any, item: Declared, run: Any) -> Any:
    """The value of a setting in effect (its `effective` hook applied to the run's `components.Selection`)."""
    value = get(config, item.path)
    return item.spec.effective(run, value) if item.spec.effective else value


def check_values(config: Any) -> None:
    """Runs every declared value check and choice list of a built config.

    Raises:
      ConfigError: naming the flag, the rule and the value.
    """
    for item in declared(type(config)):
        value = get(config, item.path)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--{item.spec.flag} must be a finite number, got {value}")
        choices = item.spec.allowed()
        if choices is not None and value not in choices:
            raise ConfigError(f"--{item.spec.flag}={value!r} is not one of: {', '.join(map(str, choices))}")
        reason = item.spec.check(value) if item.spec.check else None
        if reason:
            shown = (
                f"{value:g}" if isinstance(value, float) else _short_repr(value) if isinstance(value, str) else value
            )
            raise ConfigError(f"--{item.spec.flag} {reason}, got {shown}")


def _short_repr(text: str, limit: int = 60) -> str:
    return repr(text) if len(text) <= limit else repr(text[: limit - 3] + "...")


def check_applies(config: Any, given: frozenset[str] | set[str]) -> None:
    """Refuses a setting given for a selector value it does not apply to.

    Args:
      config: the built config.
      given: the flags the user set explicitly.

    Raises:
      ConfigError: `--dp_target_quantile applies to --dp=adaptive, not --dp=fixed`.
    """
    table = by_flag(type(config))
    for flag in sorted(given):
        item = table.get(flag)
        rule = item.spec.applies_to() if item else None
        if rule is None:
            continue
        selector, values = rule
        current = get(config, table[selector].path)
        if current not in values:
            raise ConfigError(
                f"--{flag} applies to --{selector}={'|'.join(map(str, values))}, not --{selector}={current}"
            )


def build(config_cls: type, values: Mapping[str, Any]) -> Any:
    """A config dataclass from flag-named values; absent ones take their default.

    Unknown names are refused (with the closest known one, if any).
    """
    table = by_flag(config_cls)
    unknown = sorted(set(values) - set(table))
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}{_closest(unknown[0], table)}")
    return _build(config_cls, (), values, table)


def _build(cls: type, prefix: tuple[str, ...], values, table) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for field in dataclasses.fields(cls):
        spec = field.metadata.get(_SPEC)
        if spec is not None:
            if spec.flag in values:
                kwargs[field.name] = coerce(values[spec.flag], hints[field.name], spec.flag)
        elif dataclasses.is_dataclass(hints.get(field.name)):
            kwargs[field.name] = _build(hints[field.name], (*prefix, field.name), values, table)
    return cls(**kwargs)


def coerce(value: Any, hint: Any, flag: str = "") -> Any:
    """`value` as the declared type `hint`, or a `ConfigError` naming the flag.

    `tffpipe.run` callers pass Python values, which absl's parsers never see:
    `rounds="3"`, `rounds=2.5` or `rounds=True` are refused here in the same
    one-line form as a bad flag. An int is accepted for a float; a list or a
    comma-separated string for a list.
    """
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    origin = typing.get_origin(hint)
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if isinstance(items, (list, tuple)) and all(isinstance(v, str) for v in items):
            return tuple(v for v in (i.strip() for i in items) if v)
        raise _type_error(flag, value, "a list of strings")
    return coerce_scalar(value, hint, flag)


def coerce_scalar(value: Any, kind: type, flag: str) -> Any:
    """`value` as a bool, int, float or str (`kind`), or a `ConfigError` naming `--flag`."""
    if kind is bool:
        if isinstance(value, (bool, np_bool_types())):
            return bool(value)
        raise _type_error(flag, value, "True or False")
    if kind is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np_bool_types())):
            return int(value)
        raise _type_error(flag, value, "a whole number")
    if kind is float:
        if isinstance(value, numbers.Real) and not isinstance(value, (bool, np_bool_types())):
            return float(value)
        raise _type_error(flag, value, "a number")
    if kind is str:
        if isinstance(value, str):
            return value
        raise _type_error(flag, value, "a string")
    return value


def np_bool_types() -> tuple[type, ...]:
    """NumPy's bool type when NumPy is loaded (it is not an `int`, nor a Python `bool`)."""
    numpy = sys.modules.get("numpy")
    return (numpy.bool_,) if numpy is not None else ()


def _type_error(flag: str, value: Any, wanted: str) -> ConfigError:
    return ConfigError(f"--{flag} must be {wanted}, got {value!r} ({type(value).__name__})")


def _closest(name: str, table: Mapping[str, Any]) -> str:
    import difflib

    match = difflib.get_close_matches(name, list(table), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""
