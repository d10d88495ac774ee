"""The one exception type for user mistakes."""


class ExptError(Exception):
    """A mistake the user can fix: the CLI prints the message as one sentence and exits 1.

    Raise it from plugins too (a missing file, an unavailable device, a bad option value);
    anything else that escapes is treated as a bug and reported as such.
    """


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def describe(exc: BaseException) -> str:
    """``Type: first line of the message``, for reports that name what went wrong."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {first_line(exc)}" if text else type(exc).__name__
