"""Errors meant for the user, and how an exception is named in one line.

Every error the launcher reports as `error: <one line>` derives from
`UserError`; anything else is a defect and keeps its traceback.
"""


class UserError(Exception):
    """An error whose message is one line meant for the user."""


class ConfigError(UserError, ValueError):
    """A setting, or a combination of settings, is invalid."""


class TaskError(UserError, ValueError):
    """A task cannot be found or built."""


class Terminated(BaseException):
    """The process got SIGTERM (a `BaseException`, like `KeyboardInterrupt`,
    so that no `except Exception` on the way swallows it)."""


def first_line(error: BaseException) -> str:
    """The first line of `error`'s message, or its type's name if it has none.

    TFF and TensorFlow errors often carry pages of detail (graphs, protos,
    stack dumps) after a first line that says what went wrong.
    """
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
