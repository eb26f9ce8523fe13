"""The project's user-error type: a problem the user can fix, reported without a traceback.

``ernie-cpt`` prints such an error as one ``ernie-cpt: error: ...`` line (exit status 2);
any other exception is a bug and keeps its traceback. ``schedules`` and ``pretrain_tasks``
cannot import this package, so their ``schedules.options.OptionsError`` is the other type
``cli.main`` treats as the user's.
"""

from __future__ import annotations


class ErnieCptError(Exception):
    """A problem with the user's configuration, files or command line (message for the user)."""


class InputError(ErnieCptError, ValueError):
    """A user-given value or file content that cannot be used (still a ValueError)."""


class MissingInputError(ErnieCptError, FileNotFoundError):
    """A user-given path that does not exist or is not what it should be."""
