"""PaKA post-training of a supported ViT checkpoint (DINOv2, DINOv2 with registers, DINOv3, SigLIP / SigLIP 2, CLIP).

    accelerate launch scripts/train.py --config configs/dinov2r_s14_coco.yaml [--any_field value ...]
    paka-train --config configs/demo.yaml          # the same program, one process

Every field of ``paka_hf.PaKAConfig`` (the method's settings and all of ``TrainingArguments``)
can be set in the YAML file and overridden on the command line; ``--help`` lists them. The file's
values are typed (``global_scale: [0.25, 1.0]``, ``flip: true``, ``null``); a key or option that is not
a field, abbreviations included, stops with the closest field's name. At the end ``output_dir`` holds
the adapted backbone as a plain ``transformers`` model folder, and ``train_results.json``,
``all_results.json`` and ``trainer_state.json`` as the ``transformers`` example scripts write them. Resume an
interrupted run with ``--resume_from_checkpoint latest`` (or a checkpoint folder); a new run into an
``output_dir`` that holds checkpoints stops unless ``--overwrite_output_dir true`` (which removes them).

Pushing to the Hub (``--push_to_hub true --hub_model_id org/name``) uses the token of ``hf auth login``
or the ``HF_TOKEN`` environment variable. ``--hub_token`` still works but warns: a command line is visible
to every user of the machine (``ps``). A user error (bad value, missing path, no checkpoint to resume)
prints one line ``error: ...`` and exits with status 2; ``--debug`` shows its traceback.

Ctrl-C prints one line, ``interrupted: ...``: the step training stopped at, the last complete checkpoint and the
command that resumes from it (:func:`interrupted_message`), and exits with status 130. A checkpoint folder the
run was writing is removed, as is an ``output_dir`` the run created and left without a file (so a failed start,
such as ``--resume_from_checkpoint latest`` with nothing to resume, leaves no empty folder behind); a folder that
existed before the run is never removed.

Example::

    from paka_hf.commands.train import parse_config
    config = parse_config(["--config", "configs/demo.yaml", "--max_steps", "5"])
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from paka_hf import PaKAConfig, PaKATrainer
from paka_hf.commands import StrictHfArgumentParser, closest_name, unknown_arguments_error
from paka_hf.commands.cli import INTERRUPTED_STATUS, configure_logging, run_script
from paka_hf.training.checkpoints import CHECKPOINT_MARKER, checkpoint_folders, complete_checkpoints
from paka_hf.training.config import secret_fields
from paka_hf.utils.errors import ConfigError, Interrupted
from paka_hf.utils.files import EVAL_RESULTS_GLOB
from paka_hf.utils.paths import check_local_path

logger = logging.getLogger("train")

# transformers 5.20 renamed ``gradient_checkpointing[_kwargs]`` to ``activation_checkpointing[_kwargs]``: the old
# names warn and go in v6, and versions before 5.20 know only them. A config may use either name; it is passed on
# under the one the installed transformers has.
CHECKPOINTING_RENAMES = {
    "gradient_checkpointing": "activation_checkpointing",
    "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs",
}


def installed_name(key: str, field_names: set[str]) -> str:
    """``gradient_checkpointing`` → ``activation_checkpointing`` where ``field_names`` has the new name, the
    reverse where it has only the old one; any other key as is.

    Args:
        key: a field name, as written in a config file or an option.
        field_names: the field names of the installed ``PaKAConfig``.

    Returns:
        The name the installed ``PaKAConfig`` knows.
    """
    for old, new in CHECKPOINTING_RENAMES.items():
        if key == old and new in field_names:
            return new
        if key == new and new not in field_names:
            return old
    return key


def to_installed_names(argv: list[str], field_names: set[str]) -> list[str]:
    """``--gradient_checkpointing true`` → ``--activation_checkpointing true`` where ``field_names`` has the new
    name, and the reverse where it has only the old one; every other argument as is.

    Args:
        argv: the command-line arguments.
        field_names: the field names of the installed ``PaKAConfig``.

    Returns:
        A new list, each ``--key`` or ``--key=value`` under :func:`installed_name`.
    """
    out = []
    for token in argv:
        if token.startswith("--"):
            key, equals, value = token[2:].partition("=")
            token = f"--{installed_name(key, field_names)}{equals}{value}"
        out.append(token)
    return out


def build_parser() -> StrictHfArgumentParser:
    """One option per ``PaKAConfig`` field, and ``--config``; no abbreviations, errors raised as ``ConfigError``.

    Returns:
        The parser; its description is this module's docstring.
    """
    parser = StrictHfArgumentParser(
        PaKAConfig, prog="train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", type=Path, default=None, help="YAML file of PaKAConfig fields; command-line flags override it"
    )
    return parser


def _typed(action: argparse.Action, value: Any) -> Any:
    """A YAML value as the option would have parsed it: strings through the option's type, ints widened to
    float for a float field, each element of a list for a list field; a value outside the option's choices is
    refused. Everything else (bools, dicts, ``None``, lists of the right type) as YAML typed it."""

    def one(item: Any) -> Any:
        if action.type is not None:
            if isinstance(item, str):
                item = action.type(item)
            elif action.type is float and isinstance(item, int) and not isinstance(item, bool):
                item = float(item)
        if action.choices is not None and item is not None and item not in action.choices:
            raise ValueError(f"{item!r} is not one of {', '.join(map(repr, action.choices))}")
        return item

    if value is None:
        return None
    if isinstance(value, (list, tuple)) and action.nargs in ("+", "*"):
        return [one(item) for item in value]
    return one(value)


def read_config_file(config_file: str | Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The file's ``field: value`` mapping under the installed field names, each value typed as its option
    would parse it. A key that is no field (an abbreviation included) is an error naming the closest field.

    Args:
        config_file: the YAML file given to ``--config``.
        parser: the parser of :func:`build_parser`, whose options give each value's type and choices.

    Returns:
        ``{field name: typed value}``.

    Raises:
        MissingPathError: when the file does not exist.
        ConfigError: when it is not valid YAML or no mapping, when a key is no ``PaKAConfig`` field (naming the
            closest), or when a value does not fit its field's type or choices.
    """
    check_local_path(config_file, "--config", always=True)
    config_file = Path(config_file)
    try:
        values = yaml.safe_load(config_file.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{config_file} is not valid YAML: {error}") from error
    if not isinstance(values, dict):
        raise ConfigError(f"{config_file} must hold a mapping of field: value, got {type(values).__name__}")
    field_names = {field.name for field in dataclasses.fields(PaKAConfig)}
    actions = {action.dest: action for action in parser._actions if action.option_strings}
    typed = {}
    for key, value in values.items():
        name = installed_name(str(key), field_names)
        if name not in field_names:
            suggestion = closest_name(str(key), field_names | set(CHECKPOINTING_RENAMES))
            hint = f"; did you mean {suggestion!r}?" if suggestion else "; train.py --help lists the fields"
            raise ConfigError(f"{config_file}: {key!r} is not a PaKAConfig field{hint}")
        try:
            typed[name] = _typed(actions[name], value)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
            raise ConfigError(f"{key} in {config_file}: {error}") from error
    return typed


def parse_config(argv: list[str]) -> PaKAConfig:
    """The config from ``--config FILE`` and the command line (:func:`parse_config_and_origins` without origins).

    Args:
        argv: the command-line arguments.

    Returns:
        The config.

    Raises:
        PaKAUserError: as :func:`parse_config_and_origins`.
    """
    return parse_config_and_origins(argv)[0]


def parse_config_and_origins(argv: list[str]) -> tuple[PaKAConfig, dict[str, str]]:
    """The config from ``--config FILE`` and the command line (which wins), and for each field set in the
    file and not on the command line, the file's name (for messages about the value).

    The file's values become the parser's defaults (as TRL's ``TrlParser`` does), so they keep their YAML
    types and every command-line option still overrides them.

    A token (``hub_token``) given on the command line or in a file is logged as a warning.

    Args:
        argv: the command-line arguments, ``--config FILE`` among them or not.

    Returns:
        ``(config, origins)``: the config, and ``{field name: config file}`` for the fields the file set.

    Raises:
        ConfigError: for an unknown option (naming the closest) or a file :func:`read_config_file` refuses, and
            for values ``PaKAConfig`` refuses.
        MissingPathError: when the ``--config`` file does not exist.
    """
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    parser = build_parser()
    field_names = {field.name for field in dataclasses.fields(PaKAConfig)}
    values = read_config_file(known.config, parser) if known.config is not None else {}
    parser.set_defaults(**values)
    for action in parser._actions:
        if action.dest in values:
            action.required = False  # set in the file
    args = to_installed_names(list(argv), field_names)
    namespace, remaining = parser.parse_known_args(args)
    if remaining:  # before PaKAConfig checks its values: the unknown option is the error to report
        raise unknown_arguments_error(remaining, parser)
    config = PaKAConfig(
        **{field.name: getattr(namespace, field.name) for field in dataclasses.fields(PaKAConfig) if field.init}
    )
    on_command_line = {token[2:].partition("=")[0].replace("-", "_") for token in args if token.startswith("--")}
    origins = {key: str(known.config) for key in values if key not in on_command_line}
    for name in secret_fields(on_command_line):
        logger.warning(
            "--%s on the command line is visible to every user of this machine (ps, shell history); run "
            "`hf auth login` once or set the HF_TOKEN environment variable instead",
            name,
        )
    for name in secret_fields(origins):
        logger.warning(
            "%s in %s: a token in a config file travels with the file; run `hf auth login` once or set the "
            "HF_TOKEN environment variable instead",
            name,
            origins[name],
        )
    return config, origins


def main(argv: list[str] | None = None) -> None:
    """Train, export the backbone to ``output_dir``, write the run's metrics and state there, push if asked, then
    leave the process group (every process of a multi-process run).

    A run that fails or is interrupted before anything worth keeping removes what it created
    (:class:`RunFolder`).

    Args:
        argv: the command-line arguments; ``sys.argv[1:]`` when ``None``.

    Raises:
        PaKAUserError: for a bad option or config file, a missing local path, or a setting or data the trainer
            refuses.
        Interrupted: on Ctrl-C, with where training stopped, its last complete checkpoint and the resume command
            (:func:`interrupted_message`); on every process but process zero, ``SystemExit(130)`` instead, so that
            a multi-process run prints that line once.
    """
    configure_logging("%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    config, origins = parse_config_and_origins(argv)
    logging.getLogger().setLevel(logging.INFO if config.should_log else logging.WARNING)
    config.check_local_paths(origins)  # before anything is loaded: a mistyped folder never reaches the Hub
    run = RunFolder(config.output_dir)  # before the trainer creates output_dir
    trainer = None
    exporting = False
    try:
        trainer = PaKATrainer(args=config)
        train_result = trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
        exporting = True
        output = trainer.export_backbone(config.output_dir)
    except BaseException as error:
        if config.should_save:  # process zero: the one that writes and removes
            run.clean_up()
        if not isinstance(error, KeyboardInterrupt) or isinstance(error, Interrupted):
            raise
        if config.process_index != 0:
            raise SystemExit(INTERRUPTED_STATUS) from None
        state = trainer.state if trainer is not None else None
        raise Interrupted(
            interrupted_message(
                global_step=state.global_step if state is not None else 0,
                max_steps=(state.max_steps if state is not None else 0) or config.max_steps,
                started=trainer is not None,
                exporting=exporting,
                output_dir=config.output_dir,
                command=resume_command(argv, overwrite_output_dir=config.overwrite_output_dir),
                rerun_command=f"{program_name()} {shlex.join(argv)}".rstrip(),
            )
        ) from None
    # As the transformers example scripts: train_results.json, all_results.json and trainer_state.json in
    # output_dir (process zero writes them). The Hub push uploads none of them (paka_hf.hub.collect_upload_files).
    metrics = train_result.metrics
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    if config.should_save:
        print(
            f"adapted backbone ({config.export}) written to {output}; load it with "
            f"AutoModel.from_pretrained({str(output)!r})"
        )
    if config.push_to_hub:
        # One commit with the backbone, a regenerated model card and the training configuration; evaluation
        # results written as output_dir/eval_results*.json by then are included in the card.
        results = sorted(Path(config.output_dir).glob(EVAL_RESULTS_GLOB))
        info = trainer.push_to_hub(eval_results=results)
        if info is not None:
            print(f"pushed to {config.hub_model_id}: {getattr(info, 'commit_url', info)}")
    # Every process leaves its process group before it exits. One that exits with the group alive can abort while
    # the interpreter shuts down (gloo's pending work objects hold tensors: SIGABRT, "terminate called without an
    # active exception"), and the launcher then stops the processes still at work: process zero in the middle of
    # the final push. Only here, after the last collective: on an error or Ctrl-C a process may have stopped inside
    # one, and tearing the group down then could block.
    trainer.accelerator.end_training()


# ---------------------------------------------------------------------------------------------
# a run that stops: what it leaves behind, what it says
# ---------------------------------------------------------------------------------------------


class RunFolder:
    """What a run found in ``output_dir`` before it started, so that when it stops early it removes only what it
    created itself and left unfinished.

    Args:
        output_dir: the run's output folder, looked at now (before the trainer creates it).
    """

    def __init__(self, output_dir: str | os.PathLike):
        self.output_dir = Path(output_dir)
        self.existed = self.output_dir.exists()
        self.checkpoints_before = {path.name for _, path in checkpoint_folders(self.output_dir)}

    def clean_up(self) -> list[Path]:
        """Remove the unfinished leftovers of this run: each checkpoint folder it created that has no completion
        marker (a save that Ctrl-C or an error cut short; never resumable, and it would stop the next fresh run
        into this folder), then ``output_dir`` itself if this run created it and it holds no file.

        Checkpoint folders that were there before the run started, complete or not, are left alone, and so is an
        ``output_dir`` that existed before.

        Returns:
            The folders removed.
        """
        removed = []
        for _, path in checkpoint_folders(self.output_dir):
            if path.name not in self.checkpoints_before and not (path / CHECKPOINT_MARKER).exists():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        if not self.existed and self.output_dir.is_dir() and not any(p.is_file() for p in self.output_dir.rglob("*")):
            shutil.rmtree(self.output_dir, ignore_errors=True)
            removed.append(self.output_dir)
        for path in removed:
            logger.info("removed %s: the run stopped before it held anything", path)
        return removed


def program_name(argv0: str | None = None, launched: bool | None = None) -> str:
    """How to run this program again from the current folder, for a message: ``python scripts/train.py`` for a
    script, ``python -m paka_hf.commands.train`` for the module, ``paka-train`` for the console command; under a
    launcher (``accelerate launch``, ``torchrun``), ``accelerate launch <its options> scripts/train.py``, since a
    process cannot see the launcher's own options.

    Args:
        argv0: the program as started (``sys.argv[0]`` when ``None``).
        launched: whether a launcher started this process (``LOCAL_RANK`` set, when ``None``).

    Returns:
        The command's first words, quoted for a POSIX shell (but for the launcher's placeholder).
    """
    argv0 = sys.argv[0] if argv0 is None else argv0
    launched = "LOCAL_RANK" in os.environ if launched is None else launched
    path = Path(argv0)
    if path.suffix == ".py":
        module = path.resolve() == Path(__file__).resolve()
        if launched:
            return f"accelerate launch <its options> {'-m paka_hf.commands.train' if module else shlex.quote(argv0)}"
        return "python -m paka_hf.commands.train" if module else f"python {shlex.quote(argv0)}"
    if path.name and argv0 not in ("-c", "-m", "-"):
        return shlex.quote(path.name)  # a console command on PATH
    return "paka-train"


def _without_option(argv: list[str], name: str) -> list[str]:
    """``argv`` without ``--name VALUE``, ``--name=VALUE`` or a bare ``--name`` (``-`` and ``_`` alike)."""
    out = []
    skip_value = False
    for token in argv:
        if skip_value:
            skip_value = False
            if not token.startswith("-"):
                continue
        key, equals, _ = token.partition("=")
        if key.startswith("--") and key[2:].replace("-", "_") == name:
            skip_value = not equals
            continue
        out.append(token)
    return out


def resume_command(argv: list[str], overwrite_output_dir: bool = False, program: str | None = None) -> str:
    """The command line that resumes this run from its newest complete checkpoint: the same program and
    arguments, with ``--resume_from_checkpoint latest`` in place of any ``--resume_from_checkpoint`` given.

    ``--overwrite_output_dir`` goes (set to ``false`` where the run had it on): a resume keeps the checkpoints
    that an overwrite would remove.

    Args:
        argv: the arguments the run was started with (after the program name).
        overwrite_output_dir: the run's ``overwrite_output_dir``, from wherever it was set.
        program: the program's first words (:func:`program_name` when ``None``).

    Returns:
        The command, quoted for a POSIX shell.
    """
    args = _without_option(_without_option(argv, "resume_from_checkpoint"), "overwrite_output_dir")
    if overwrite_output_dir:
        args += ["--overwrite_output_dir", "false"]
    args += ["--resume_from_checkpoint", "latest"]
    return f"{program or program_name()} {shlex.join(args)}"


def interrupted_message(
    *,
    global_step: int,
    max_steps: int,
    started: bool,
    exporting: bool,
    output_dir: str | os.PathLike,
    command: str,
    rerun_command: str,
) -> str:
    """The one line Ctrl-C prints (after ``interrupted: ``): where the run stopped, its last complete checkpoint
    and how to go on.

    Args:
        global_step: optimizer steps done.
        max_steps: the run's total, ``<= 0`` when unknown.
        started: whether the trainer was built (``False``: stopped while loading the model or data).
        exporting: whether training had finished and the export of the backbone was under way.
        output_dir: the run's output folder (where its checkpoints are).
        command: the resume command (:func:`resume_command`).
        rerun_command: the command as it was run, for a run without a complete checkpoint.

    Returns:
        The message, one line.
    """
    of = f" of {max_steps}" if max_steps > 0 else ""
    if not started:
        where = "before training started (loading the model or data)"
    elif exporting:
        where = f"after the last step ({global_step}{of}), while exporting the backbone to {output_dir}"
    elif global_step == 0:
        where = f"before the first step{of}"
    else:
        where = f"after step {global_step}{of}"
    complete = complete_checkpoints(output_dir)
    if not complete:
        return f"training stopped {where}; no complete checkpoint yet: rerun the same command ({rerun_command})"
    return f"training stopped {where}; last complete checkpoint: {complete[-1]}; resume with: {command}"


def cli_main() -> int:
    """The ``paka-train`` console command: :func:`main` with user errors as one line ``error: ...``, exit 2.

    Returns:
        The exit status (:func:`~paka_hf.commands.cli.run_script`).
    """
    return run_script(main)
