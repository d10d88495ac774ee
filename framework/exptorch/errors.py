"""The one exception type for user mistakes."""


class ExptError(Exception):
    """A mistake the user can fix: the CLI prints the message as one sentence and exits 1.

    Raise it from plugins too (a missing file, an unavailable device, a bad option value);
    anything else that escapes is treated as a bug and reported as such.
    """
