"""How a name the user passes is read: a local path, or a Hub id.

``transformers`` and ``datasets`` treat any name that is not an existing local path as a Hub id: a
mistyped folder becomes a repo-id validation error, or a network wait and a "repository not found".
A name that *looks like a path* is therefore checked here first, and a missing one is reported as
what it is (:class:`~paka_hf.utils.errors.MissingPathError`, "no such folder"), with no network call.

A name looks like a path when it starts with ``.``, ``/`` or ``~``, or holds the path separator twice
(a Hub id is ``name`` or ``org/name``: at most one ``/``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from paka_hf.utils.errors import MissingPathError

#: A Hub repository id, ``namespace/name``.
REPO_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_local_path(name: str) -> bool:
    """``True`` for ``./x``, ``../x``, ``/x``, ``~/x`` and ``a/b/c``; ``False`` for ``name`` and ``org/name``.

    Args:
        name: a name the user passed (a folder, a file or a Hub id).

    Returns:
        Whether the name can only be a local path (see the module docstring for the rule).
    """
    separators = {os.sep, os.altsep} - {None}
    return name.startswith((".", "/", "~", *separators)) or sum(name.count(s) for s in separators) >= 2


def missing_path_message(name: str, option: str, origin: str | None = None) -> str:
    """``--option 'name': no such folder (or file): /abs/path ...``, saying from where a relative path was resolved.

    ``origin`` is where the value was written (e.g. ``"configs/run.yaml"``) when it was not the command line.

    Args:
        name: the path as the user passed it.
        option: the option or setting that took it, e.g. ``"--model_name_or_path"``.
        origin: where the value was written, or None for the command line.

    Returns:
        The one-line message.
    """
    path = Path(name).expanduser()
    message = f"{option} {name!r}: no such folder (or file): {path.absolute()}"
    set_in = f", set in {origin}" if origin else ""
    if not path.is_absolute():
        resolved_from = f"resolved from the current directory {os.getcwd()}"
        if origin:
            resolved_from += ", not from the folder of the config file"
        message += f" ({resolved_from}{set_in})"
    elif origin:
        message += f" ({set_in[2:]})"
    return message


def check_local_path(
    name: str | os.PathLike | None, option: str, origin: str | None = None, *, always: bool = False
) -> None:
    """Raise :class:`MissingPathError` if ``name`` names a local path that does not exist.

    Only names that :func:`looks_like_local_path` are checked (others may be Hub ids), unless ``always``
    (an argument that can only be a local path).

    Args:
        name: the name the user passed; None is never checked.
        option: the option or setting that took it, shown in the message.
        origin: where the value was written, or None for the command line.
        always: check ``name`` even when it does not look like a path.

    Raises:
        MissingPathError: the path does not exist.
    """
    if name is None:
        return
    name = os.fspath(name)
    if not (always or looks_like_local_path(name)):
        return
    if not Path(name).expanduser().exists():
        raise MissingPathError(missing_path_message(name, option, origin))


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path``, with every symlink followed, lies inside ``folder`` (also resolved).

    Args:
        path: the path to test.
        folder: the folder it should lie in.

    Returns:
        ``True`` when the resolved ``path`` is ``folder`` or below it.
    """
    return Path(path).resolve().is_relative_to(Path(folder).resolve())
