"""The one exception type for a user's mistake.

The CLI turns a `KuosanError` into a one-line message and exit status 2; anything else is a bug
and keeps its traceback.
"""


class KuosanError(Exception):
    """A user's mistake (bad file, bad value, bad flag): the message names what is at fault."""
