"""The command-line programs, importable: ``paka-train``, ``paka-evaluate``, ``paka-push``, ``paka-visualize``,
``paka-explore``.

Each module has ``main(argv)`` (raises :class:`~paka_hf.utils.errors.PaKAUserError` for a user error) and
``cli_main()``, the console entry point of ``setup.py``, which runs ``main`` through
:func:`paka_hf.commands.cli.run_script` (a user error is one line ``error: ...`` and exit status 2). The files under
``scripts/`` call the same ``main``, so ``accelerate launch scripts/train.py --config X.yaml`` and
``paka-train --config X.yaml`` are one program. ``paka-explore`` (:mod:`paka_hf.commands.explore`) serves the
explorer of :mod:`paka_hf.apps.explorer`.

This package is the top layer: it may import every other layer, and no other layer imports it. Its ``__init__`` holds the
strict argument parsers the programs share (no abbreviations, an unknown option names the closest one).

Example::

    from paka_hf.commands import train
    train.main(["--config", "configs/demo.yaml", "--max_steps", "5"])
"""

from __future__ import annotations

import argparse
import copy
import difflib
from collections.abc import Iterable, Sequence

from transformers import HfArgumentParser

from paka_hf.utils.errors import ConfigError


def closest_name(name: str, valid: Iterable[str]) -> str | None:
    """The valid name most like ``name`` (``difflib``), or ``None`` when none is close.

    Args:
        name: the name as typed, e.g. ``--learning_rat``.
        valid: the names to choose from (duplicates are ignored).

    Returns:
        The closest valid name (similarity at least 0.6), or ``None``.
    """
    matches = difflib.get_close_matches(name, sorted(set(valid)), n=1, cutoff=0.6)
    return matches[0] if matches else None


def unknown_arguments_error(remaining: Sequence[str], parser: argparse.ArgumentParser) -> ConfigError:
    """One line for what ``parser.parse_known_args`` left over: the first unknown option and the closest
    option the parser has (``--learning_rat`` → did you mean ``--learning_rate``?).

    Args:
        remaining: the tokens ``parse_known_args`` did not consume.
        parser: the parser, for its ``--`` options and its ``prog``.

    Returns:
        The error to raise (it is returned, not raised, so the caller's ``raise`` shows in its traceback).
    """
    options = [option for action in parser._actions for option in action.option_strings if option.startswith("--")]
    for token in remaining:
        if token.startswith("--"):
            name = token.partition("=")[0]
            suggestion = closest_name(name, options)
            hint = f"; did you mean {suggestion}?" if suggestion else f"; {parser.prog} --help lists the options"
            return ConfigError(f"unknown option {name}{hint}")
    return ConfigError(f"unexpected argument(s): {' '.join(remaining)}")


class StrictParserMixin:
    """An ``argparse`` parser that takes no abbreviation (``--max_step`` is not ``--max_steps``) and raises
    :class:`~paka_hf.utils.errors.ConfigError` instead of printing its usage, so a bad command line is one line
    ``error: ...`` with exit status 2 like every other user error.

    Args:
        *args: passed on to the parser class it is mixed into.
        **kwargs: passed on likewise; ``allow_abbrev`` is always set to ``False``.
    """

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        """Raise argparse's message instead of printing the usage and exiting.

        Args:
            message: argparse's description of the problem.

        Raises:
            ConfigError: always, with ``message``.
        """
        raise ConfigError(message)

    def parse_known_args(self, args=None, namespace=None):
        """Parse ``args``, refusing any token the parser does not know.

        Args:
            args: the arguments; ``sys.argv[1:]`` when ``None``.
            namespace: the namespace to fill; a new one when ``None``.

        Returns:
            ``(namespace, [])``: the parsed options and an empty list of leftovers, as ``argparse`` returns them.

        Raises:
            ConfigError: for an unknown option (naming the closest known one) or an unexpected argument, checked
                before required options, and for any other problem ``argparse`` reports.
        """
        # An unknown option is reported before a missing required one: ``--repo org/x`` says "did you mean
        # --repo_id?", not "--repo_id is required".
        required = [item for item in (*self._actions, *self._mutually_exclusive_groups) if item.required]
        for item in required:
            item.required = False
        try:
            _, remaining = super().parse_known_args(args, copy.copy(namespace))
        finally:
            for item in required:
                item.required = True
        if remaining:
            raise unknown_arguments_error(remaining, self)
        return super().parse_known_args(args, namespace)

    def parse_args(self, args=None, namespace=None):
        """Parse ``args`` with :meth:`parse_known_args`'s rules.

        Args:
            args: the arguments; ``sys.argv[1:]`` when ``None``.
            namespace: the namespace to fill; a new one when ``None``.

        Returns:
            The parsed options.

        Raises:
            ConfigError: as :meth:`parse_known_args`.
        """
        return self.parse_known_args(args, namespace)[0]


class StrictArgumentParser(StrictParserMixin, argparse.ArgumentParser):
    """:class:`argparse.ArgumentParser` with :class:`StrictParserMixin`'s rules."""


class StrictHfArgumentParser(StrictParserMixin, HfArgumentParser):
    """:class:`transformers.HfArgumentParser` (one option per dataclass field) with :class:`StrictParserMixin`'s
    rules."""
