"""User-facing errors: the ones a user can fix by changing what they passed.

Every error that means "your input is wrong" (a bad config value, a path that does not exist, an
empty dataset, no checkpoint to resume, missing class names, refused credentials) derives from
``PaKAUserError``. The scripts under ``scripts/`` catch exactly this class and print
``error: <message>`` with exit status 2; anything else is a bug and keeps its traceback.

So a message must be one line that names the real problem and says what to do, e.g.::

    raise PaKAUserError(f"--model_name_or_path {path!r}: no such folder (resolved from {os.getcwd()})")

Subclasses may also derive from the built-in type callers already catch (``ValueError``,
``FileNotFoundError``, ``PermissionError``), so existing ``except`` clauses keep working.
"""

from __future__ import annotations


class PaKAUserError(Exception):
    """An error in what the user passed; scripts print its message as ``error: ...`` and exit with status 2."""


class ConfigError(PaKAUserError, ValueError):
    """A configuration value is invalid or inconsistent with another one."""


class MissingPathError(PaKAUserError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class EmptyDatasetError(PaKAUserError, ValueError):
    """A dataset yields no usable image (or too few for one batch per process)."""
