"""The one exception type the library raises for bad input.

The CLI turns a ``DelitError`` into a single ``error: ...`` line and exit code 2;
anything else is a bug and keeps its traceback.
"""


class DelitError(Exception):
    """Bad user input: a missing or malformed file, a wrong argument, an unusable checkpoint."""
