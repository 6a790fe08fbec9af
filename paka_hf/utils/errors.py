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


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what was interrupted and how to go on (where training stopped, its last complete checkpoint
    and the resume command); scripts print it as ``interrupted: ...`` and exit with status 130."""


# The rules more than one module checks, each written once (one place, one wording).


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices`` (an enumerated setting).

    Args:
        name: the setting's name, as the message shows it.
        value: the value passed.
        choices: the values allowed.

    Raises:
        ConfigError: ``value`` is not in ``choices``.
    """
    if value not in choices:
        raise ConfigError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_patch_multiple(name: str, size: int, patch_size: int) -> None:
    """Raise :class:`ConfigError` unless the view side ``size`` is a multiple of the backbone's ``patch_size``,
    with the nearest multiple as a suggestion.

    Args:
        name: the setting's name, as the message shows it.
        size: the view side in pixels.
        patch_size: the backbone's patch side in pixels.

    Raises:
        ConfigError: ``size`` is not a multiple of ``patch_size``.
    """
    if size % patch_size:
        suggestion = max(patch_size, round(size / patch_size) * patch_size)
        raise ConfigError(
            f"{name}={size} is not a multiple of the model's patch size {patch_size}; use for example "
            f"{name}={suggestion}"
        )


#: The smallest RoIAlign grid side: a kernel (CKA, Gram) needs at least two tokens per pair.
MIN_ROI_SIZE = 2


def check_positive_int(name: str, value: int) -> None:
    """Raise :class:`ConfigError` unless ``value >= 1`` (a count or a size).

    Args:
        name: the setting's name, as the message shows it.
        value: the value passed.

    Raises:
        ConfigError: ``value < 1``.
    """
    if value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value}")


def check_fraction(name: str, value: float, meaning: str) -> None:
    """Raise :class:`ConfigError` unless ``0 <= value <= 1``; ``meaning`` says what the fraction is.

    Args:
        name: the setting's name, as the message shows it.
        value: the value passed.
        meaning: what the fraction is, shown in the message.

    Raises:
        ConfigError: ``value`` lies outside ``[0, 1]``.
    """
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be in [0, 1] ({meaning}), got {value}")


def check_roi_size(roi_size: int) -> None:
    """Raise :class:`ConfigError` unless ``roi_size >= MIN_ROI_SIZE``.

    Args:
        roi_size: the side of the RoIAlign grid, in tokens.

    Raises:
        ConfigError: ``roi_size < MIN_ROI_SIZE``.
    """
    if roi_size < MIN_ROI_SIZE:
        raise ConfigError(f"roi_size must be >= {MIN_ROI_SIZE} (a kernel needs two tokens), got {roi_size}")
