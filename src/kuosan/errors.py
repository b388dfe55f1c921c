"""The one exception type for a user's mistake.

The CLI turns a `KuosanError` into a one-line message and exit status 2; anything else is a bug
and keeps its traceback.
"""


class KuosanError(Exception):
    """A user's mistake (bad file, bad value, bad flag): the message names what is at fault."""


def is_int(value: object) -> bool:
    """Whether ``value`` is an integer and not a bool (Python's ``True`` is the int 1, which no
    count, size or seed of a user's should be taken for)."""
    return isinstance(value, int) and not isinstance(value, bool)
