"""What every script under ``scripts/`` does with an error: a user error is one line, a bug keeps its traceback.

Each script ends with::

    if __name__ == "__main__":
        sys.exit(run_script(main))

:func:`run_script` calls ``main(argv)``. A :class:`~paka_hf.utils.errors.PaKAUserError` (a bad config value, a
path that does not exist, an empty dataset, no checkpoint to resume, refused credentials) is printed as
``error: <message>`` on one line of stderr and the exit status is :data:`USER_ERROR_STATUS` (2, as
``argparse`` uses for a bad command line). Any other exception is a bug: it propagates with its traceback.
``--debug`` (a bare flag anywhere on the command line) or ``PAKA_DEBUG=1`` in the environment lets user
errors propagate with their traceback too.

Ctrl-C (``KeyboardInterrupt``) ends the same way: one line, ``interrupted: <what was interrupted and how to go
on>`` (a :class:`~paka_hf.utils.errors.Interrupted` raised by the program carries that text; a bare
``KeyboardInterrupt`` prints ``interrupted``), and exit status :data:`INTERRUPTED_STATUS` (130, the shell's
128 + SIGINT), never the traceback of whatever was running.

``--debug`` is taken out of ``argv`` only when it stands alone (no value after it), because
``TrainingArguments`` has a ``debug`` field of its own (``--debug underflow_overflow``).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from paka_hf.utils.errors import Interrupted, PaKAUserError

#: Exit status of a script stopped by a user error.
USER_ERROR_STATUS = 2
#: Exit status of a script stopped by Ctrl-C (SIGINT): 128 + 2, as a shell reports it.
INTERRUPTED_STATUS = 130
DEBUG_FLAG = "--debug"
DEBUG_ENVIRONMENT_VARIABLE = "PAKA_DEBUG"
#: The HTTP clients under ``huggingface_hub``: at INFO they log one line per request (16 for a push), so they are
#: shown only with ``--debug``.
HTTP_LOGGERS = ("httpx", "httpcore", "urllib3")
# Set by run_script from the command line, for configure_logging; None when a program's main is called directly.
_debug_requested: bool | None = None


def debug_from_environment() -> bool:
    """Whether ``PAKA_DEBUG`` is set to a true value (``1``, ``true``, ``yes``, ``on``).

    Returns:
        ``True`` when it is set to one of those (any case, surrounding spaces ignored).
    """
    return os.environ.get(DEBUG_ENVIRONMENT_VARIABLE, "").strip().lower() in ("1", "true", "yes", "on")


def configure_logging(log_format: str = "%(levelname)s %(name)s: %(message)s", level: int = logging.INFO) -> bool:
    """The log set-up every program starts with: ``logging.basicConfig`` at ``level``, and the HTTP clients'
    request lines off unless debugging was asked for (``--debug`` through :func:`run_script`, or ``PAKA_DEBUG``).

    Args:
        log_format: the root handler's format.
        level: the root logger's level.

    Returns:
        Whether debugging was asked for.
    """
    logging.basicConfig(level=level, format=log_format)
    debug = _debug_requested if _debug_requested is not None else debug_from_environment()
    for name in HTTP_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.WARNING)
    return debug


def split_debug_flag(argv: Sequence[str]) -> tuple[list[str], bool]:
    """``argv`` without a bare ``--debug``, and whether it was there (or ``PAKA_DEBUG`` is set to a true value).

    ``--debug VALUE`` (``TrainingArguments.debug``) is left in place.

    Args:
        argv: the command-line arguments.

    Returns:
        ``(kept, debug)``: the arguments without the bare ``--debug``, and whether debugging was asked for.
    """
    argv = list(argv)
    debug = debug_from_environment()
    kept = []
    for index, token in enumerate(argv):
        following = argv[index + 1] if index + 1 < len(argv) else None
        if token == DEBUG_FLAG and (following is None or following.startswith("-")):
            debug = True
            continue
        kept.append(token)
    return kept, debug


def one_line(error: BaseException) -> str:
    """The error's message on one line (newlines and runs of spaces collapsed).

    Args:
        error: the exception to describe.

    Returns:
        Its message on one line (a ``KeyError``'s key without the quotes ``str`` adds); the exception's class name
        when the message is empty.
    """
    text = str(error)
    if isinstance(error, KeyError) and len(error.args) == 1:  # str(KeyError) adds quotes
        text = str(error.args[0])
    return " ".join(text.split()) or type(error).__name__


def run_script(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)`` and return the exit status.

    Args:
        main: the program, called with the arguments (a bare ``--debug`` taken out).
        argv: the arguments; ``sys.argv[1:]`` when ``None``.

    Returns:
        ``main``'s own integer, 0 for anything else it returns, :data:`USER_ERROR_STATUS` after printing
        ``error: ...`` for a :class:`PaKAUserError`, :data:`INTERRUPTED_STATUS` after printing
        ``interrupted...`` for Ctrl-C.
    """
    global _debug_requested
    argv, debug = split_debug_flag(sys.argv[1:] if argv is None else argv)
    _debug_requested = debug
    try:
        status = main(argv)
    except KeyboardInterrupt as interrupt:  # Interrupted is one too, with the text of where and how to resume
        if debug:
            raise
        detail = one_line(interrupt) if isinstance(interrupt, Interrupted) else ""
        print(f"interrupted: {detail}" if detail else "interrupted", file=sys.stderr, flush=True)
        return INTERRUPTED_STATUS
    except PaKAUserError as error:
        if debug:
            raise
        print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
        return USER_ERROR_STATUS
    return status if isinstance(status, int) and not isinstance(status, bool) else 0
