"""The errors that are the user's to fix, which the CLI prints as one line (exit code 2).

A UserError is a mistake in what the user gave (arguments, configs, paths, data, checkpoints)
or what their machine refuses (a folder that cannot be written): its message says what is
wrong, as is. An OSError naming a file (missing, not allowed, disk full) counts too. Anything
else is a bug, here or in a library (torch), and the CLI shows its traceback (exit code 1);
`--debug` or MOCOLAB_DEBUG=1 shows the traceback of any error.
"""

from __future__ import annotations


class UserError(Exception):
    """Base of the one-line errors; the message is meant for the user."""


class UsageError(UserError, ValueError):
    """A bad command-line argument, or arguments that do not go together."""


class PathError(UserError, OSError):
    """A file or folder the user named that cannot be read or written."""


def is_user_error(e: BaseException) -> bool:
    """Whether the CLI reports `e` as one line: a UserError, or an OSError about a named file."""
    return isinstance(e, UserError) or (isinstance(e, OSError) and e.filename is not None)
