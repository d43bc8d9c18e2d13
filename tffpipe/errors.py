"""How an exception is named in a one-line message."""


def first_line(error: BaseException) -> str:
    """The first line of `error`'s message, or its type's name if it has none.

    TFF and TensorFlow errors often carry pages of detail (graphs, protos,
    stack dumps) after a first line that says what went wrong.
    """
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
