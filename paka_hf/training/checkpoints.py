"""Checkpoint folders on disk: which are complete, which a run resumes from, which it removes.

A ``checkpoint-N`` folder of ``output_dir`` is resumable only while it holds :data:`CHECKPOINT_MARKER`, and
:class:`~paka_hf.training.trainer.PaKATrainer` writes the marker last (:func:`mark_checkpoint_complete`): after
every process has written its files (weights, optimizer, scheduler, RNG, stream state, ``training_config.yaml``,
``training_summary.json``) and fsynced them and the folder (:func:`fsync_tree`). Before a folder is (re)written
or deleted its marker is removed durably (:func:`remove_checkpoint`), so a crash at any point leaves the previous
complete state or no marker. The rules, each in one function:

- :func:`complete_checkpoints` lists the resumable folders, oldest first; :func:`resolve_checkpoint` turns
  ``--resume_from_checkpoint`` into one of them, of a format this package reads (:func:`check_checkpoint_format`);
- :func:`stale_checkpoints` names what ``output_dir`` must lose before a run's first save: every checkpoint of an
  earlier run (a fresh run with ``overwrite_output_dir``; without it, an error), or, on a resume from
  ``checkpoint-N``, the ones numbered above N (an abandoned future);
- :func:`rotate_checkpoints` keeps the ``save_total_limit`` newest complete checkpoints, the one just written
  always among them, so rotation only ever removes older saves;
- :class:`RunTotals` is what ``training_summary.json`` (:func:`write_training_summary`) carries into the run that
  resumes from a checkpoint.

Every text file of a checkpoint or an export is written with :func:`write_text_atomic`. Nothing here needs the
``Trainer``: the trainer adds the barriers between processes and decides which process writes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from paka_hf import __version__
from paka_hf.utils.errors import ConfigError, MissingPathError
from paka_hf.utils.files import CHECKPOINT_MARKER, FEATURE_HEALTH_KEY, TRAINING_SUMMARY_FILE

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "CHECKPOINT_MARKER",
    "RunTotals",
    "UNSHARDED",
    "check_checkpoint_format",
    "check_checkpoint_layout",
    "checkpoint_folders",
    "checkpoint_step",
    "complete_checkpoints",
    "folder_names",
    "fsync_directory",
    "fsync_tree",
    "mark_checkpoint_complete",
    "remove_checkpoint",
    "resolve_checkpoint",
    "rotate_checkpoints",
    "stale_checkpoints",
    "write_text_atomic",
    "write_training_summary",
]

logger = logging.getLogger(__name__)

#: ``--resume_from_checkpoint`` values that mean "start fresh" and "the newest complete checkpoint".
NO_RESUME = (None, False, "", "false", "False", "none", "None")
RESUME_LATEST = (True, "true", "True", "latest")

#: The version of the checkpoint layout (the folder's files and the marker's keys) this package writes into every
#: marker and the newest it resumes; a change an older reader would misresume raises it (and CHANGELOG.md's
#: "File formats" records it). A marker without ``format_version`` (written before the key existed) is format 1.
CHECKPOINT_FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------
# the folders
# ---------------------------------------------------------------------------------------------


def checkpoint_folders(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Every ``checkpoint-N`` folder of ``output_dir``, complete or not.

    Args:
        output_dir: the run's output folder; a missing one holds no checkpoints.

    Returns:
        ``(N, path)`` pairs by increasing ``N`` (numerically: ``checkpoint-10`` after ``checkpoint-9``). Files and
        folders named otherwise (``checkpoint-best``, ``checkpoint-3.tmp``) are left out.
    """
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def complete_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The checkpoint folders of ``output_dir`` marked complete (holding :data:`CHECKPOINT_MARKER`).

    Args:
        output_dir: the run's output folder.

    Returns:
        Their paths, oldest (lowest step) first: the last one is what ``--resume_from_checkpoint latest`` resumes.
    """
    return [path for _, path in checkpoint_folders(output_dir) if (path / CHECKPOINT_MARKER).is_file()]


def checkpoint_step(folder: Path) -> int:
    """The global step a checkpoint folder was saved at.

    Args:
        folder: a ``checkpoint-N`` folder.

    Returns:
        The ``global_step`` of its marker, or ``N`` from its name when it has no marker.

    Raises:
        ValueError: it has no marker and its name does not end in ``-<number>``.
    """
    marker = folder / CHECKPOINT_MARKER
    if marker.is_file():
        return int(json.loads(marker.read_text())["global_step"])
    return int(folder.name.rsplit("-", 1)[-1])


def folder_names(folders: list[tuple[int, Path]]) -> str:
    """``"checkpoint-2, checkpoint-4"``: the names of ``(N, path)`` pairs, for messages.

    Args:
        folders: pairs as :func:`checkpoint_folders` returns them.

    Returns:
        Their folder names, comma-separated, in the given order.
    """
    return ", ".join(path.name for _, path in folders)


#: The marker's ``sharding`` of a checkpoint whose processes each hold whole parameters (one process, or DDP);
#: a sharded run writes ``"FSDP2"`` (:mod:`paka_hf.training.fsdp`). A marker without the key is unsharded.
UNSHARDED = "none"


def mark_checkpoint_complete(
    folder: Path, *, global_step: int, world_size: int, num_workers: int, sharding: str = UNSHARDED
) -> None:
    """Write :data:`CHECKPOINT_MARKER` into ``folder`` (atomically): from now on it can be resumed.

    Call it only once every file of every process is in ``folder`` and fsynced (:func:`fsync_tree`). The marker
    also records the layout's :data:`CHECKPOINT_FORMAT_VERSION` (``format_version``).

    Args:
        folder: the checkpoint folder just written.
        global_step: the step it was saved at (what :func:`checkpoint_step` reads back).
        world_size: the number of processes that wrote it (one stream state file each).
        num_workers: data loader workers per process when it was written.
        sharding: :data:`UNSHARDED`, or ``"FSDP2"`` when every process wrote its shards of the model and optimizer.
    """
    write_text_atomic(
        folder / CHECKPOINT_MARKER,
        json.dumps(
            {
                "format_version": CHECKPOINT_FORMAT_VERSION,
                "global_step": global_step,
                "world_size": world_size,
                "num_workers": num_workers,
                "sharding": sharding,
            }
        ),
    )


def check_checkpoint_layout(folder: str | os.PathLike, *, world_size: int, sharding: str) -> None:
    """Stop before anything loads when a checkpoint was written by another number of processes or another sharding.

    Each process resumes its own data stream position, so the number of processes must be the same; a sharded
    checkpoint holds shards where an unsharded one holds whole tensors, so the sharding must be the same too.

    Args:
        folder: a complete ``checkpoint-N`` folder.
        world_size: this run's number of processes.
        sharding: this run's sharding (:data:`UNSHARDED` or ``"FSDP2"``).

    Raises:
        ConfigError: either differs; the message says how to launch the resume.
    """
    marker = json.loads((Path(folder) / CHECKPOINT_MARKER).read_text())
    written_by, written_sharding = int(marker.get("world_size", 1)), marker.get("sharding", UNSHARDED)
    if written_by != world_size:
        raise ConfigError(
            f"{folder} was written by {written_by} process(es) and this run has {world_size}: each process resumes its "
            f"own data stream, so resume with {written_by} process(es) (accelerate launch --num_processes {written_by})"
        )
    if written_sharding != sharding:

        def how(name: str) -> str:
            return "without FSDP" if name == UNSHARDED else f"under {name}"

        raise ConfigError(
            f"{folder} was written {how(written_sharding)} and this run is launched {how(sharding)}: resume it "
            "launched as the run that wrote it (the same Accelerate config)"
        )


def check_checkpoint_format(folder: Path) -> int:
    """The format version of a complete checkpoint, checked to be one this package resumes.

    Args:
        folder: a ``checkpoint-N`` folder holding :data:`CHECKPOINT_MARKER`.

    Returns:
        Its marker's ``format_version``; 1 for a marker without one (written before the key existed).

    Raises:
        ConfigError: the version is not a positive integer, or is newer than :data:`CHECKPOINT_FORMAT_VERSION`
            (written by a newer paka_hf: the message asks for an upgrade).
    """
    marker = json.loads((Path(folder) / CHECKPOINT_MARKER).read_text())
    version = marker.get("format_version", 1) if isinstance(marker, dict) else None
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(f"{folder}: {CHECKPOINT_MARKER} has no valid format_version (got {version!r})")
    if version > CHECKPOINT_FORMAT_VERSION:
        raise ConfigError(
            f"{folder} is a checkpoint of format {version}, newer than this paka_hf {__version__} resumes "
            f"(format {CHECKPOINT_FORMAT_VERSION}): upgrade paka_hf to resume from it"
        )
    return version


def remove_checkpoint(folder: Path) -> None:
    """Unmark ``folder`` durably (marker gone, folder fsynced), then delete it.

    An interrupted removal leaves an unmarked folder, which is never resumed, never a marked partial one.

    Args:
        folder: a checkpoint folder; a missing one is left missing.
    """
    _unmark_checkpoint(folder)
    shutil.rmtree(folder, ignore_errors=True)


def _unmark_checkpoint(folder: Path) -> None:
    marker = folder / CHECKPOINT_MARKER
    if marker.exists():
        marker.unlink()
        fsync_directory(folder)


# ---------------------------------------------------------------------------------------------
# resume, output_dir, rotation
# ---------------------------------------------------------------------------------------------


def resolve_checkpoint(output_dir: str | os.PathLike, resume_from_checkpoint: str | bool | None) -> str | None:
    """The checkpoint a run resumes from, given ``--resume_from_checkpoint``.

    Args:
        output_dir: the run's output folder (where ``latest`` looks).
        resume_from_checkpoint: ``None``/``False``/``"false"``/``"none"``/``""`` (start fresh),
            ``True``/``"true"``/``"latest"`` (the newest complete checkpoint of ``output_dir``), or the path of a
            checkpoint folder.

    Returns:
        The checkpoint folder as a string, or ``None`` to start fresh.

    Raises:
        ConfigError: ``latest`` and ``output_dir`` holds no complete checkpoint, or the path is not a complete
            checkpoint (the message names the newest complete one beside it, if any), or the checkpoint is of a
            newer format than this package resumes (:func:`check_checkpoint_format`).
        MissingPathError: the path does not exist.
    """
    if resume_from_checkpoint in NO_RESUME:
        return None
    if resume_from_checkpoint in RESUME_LATEST:
        complete = complete_checkpoints(output_dir)
        if not complete:
            raise ConfigError(
                f"--resume_from_checkpoint latest: no complete checkpoint in {output_dir} to resume "
                "from; start without --resume_from_checkpoint"
            )
        check_checkpoint_format(complete[-1])
        return str(complete[-1])
    path = Path(resume_from_checkpoint)
    if not path.exists():
        raise MissingPathError(f"--resume_from_checkpoint {str(path)!r}: no such folder: {path.absolute()}")
    if not (path / CHECKPOINT_MARKER).is_file():
        newest = complete_checkpoints(path.parent)
        hint = f"; the newest complete one is {newest[-1]}" if newest else ""
        raise ConfigError(
            f"{path} is not a complete PaKA checkpoint (no {CHECKPOINT_MARKER}: the run was interrupted while "
            f"saving it, or it is not a checkpoint){hint}"
        )
    check_checkpoint_format(path)
    return str(path)


def stale_checkpoints(
    output_dir: str | os.PathLike, checkpoint: str | None, overwrite_output_dir: bool
) -> tuple[list[tuple[int, Path]], str]:
    """The checkpoints of ``output_dir`` that are not this run's, which it removes before its first save.

    - a fresh run (``checkpoint`` is ``None``) into a folder with ``checkpoint-*`` folders: an error, unless
      ``overwrite_output_dir``, which removes those folders (nothing else);
    - a resume from ``checkpoint-N``: the checkpoints numbered above N are an abandoned future (this run writes its
      own at those steps); with ``overwrite_output_dir``, every checkpoint, which must not include the one resumed.

    Args:
        output_dir: the run's output folder.
        checkpoint: the checkpoint resumed (:func:`resolve_checkpoint`), or ``None``.
        overwrite_output_dir: the config's ``overwrite_output_dir``.

    Returns:
        ``(doomed, why)``: the ``(N, path)`` pairs to remove, oldest first, and why, for the warning that names them.

    Raises:
        ConfigError: a fresh run into a folder with checkpoints without ``overwrite_output_dir``, or
            ``overwrite_output_dir`` would remove the checkpoint resumed.
    """
    output_dir = Path(output_dir)
    existing = checkpoint_folders(output_dir)
    overwrite = "overwrite_output_dir: removing the checkpoints of an earlier run"
    if checkpoint is None:
        if existing and not overwrite_output_dir:
            raise ConfigError(
                f"output_dir {output_dir} already holds checkpoints of an earlier run "
                f"({folder_names(existing)}): continue that run with --resume_from_checkpoint latest, or start a new "
                "one with --overwrite_output_dir true (removes those checkpoints), or choose another --output_dir"
            )
        return existing, overwrite
    resumed = Path(checkpoint).resolve()
    if overwrite_output_dir:
        if resumed.parent == output_dir.resolve():
            raise ConfigError(
                f"--overwrite_output_dir would remove {checkpoint}, the checkpoint to resume from: drop one of "
                "--overwrite_output_dir and --resume_from_checkpoint"
            )
        return existing, overwrite
    step = checkpoint_step(resumed)
    doomed = [(n, path) for n, path in existing if n > step]
    return doomed, f"resuming from {checkpoint}: removing the later checkpoints of the run it continues"


def rotate_checkpoints(keep: Path, limit: int | None) -> list[Path]:
    """Keep the ``limit`` newest complete checkpoints beside ``keep``, ``keep`` always among them; remove the rest.

    Only complete folders other than ``keep`` go, oldest first; the trainer removed every higher-numbered one
    (:func:`stale_checkpoints`) when training started, so these are older than ``keep``.

    Args:
        keep: the checkpoint folder just written and marked complete.
        limit: ``save_total_limit``; ``None`` or ``<= 0`` keeps every checkpoint.

    Returns:
        The folders removed, oldest first.
    """
    if not limit or limit <= 0:
        return []
    older = [path for path in complete_checkpoints(keep.parent) if path != keep]
    stale = older[: max(0, len(older) + 1 - limit)]
    for path in stale:
        logger.info("deleting older checkpoint %s (save_total_limit=%d)", path, limit)
        remove_checkpoint(path)
    return stale


# ---------------------------------------------------------------------------------------------
# the summary
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RunTotals:
    """What a run has done so far, over every process; a checkpoint's ``training_summary.json`` carries it
    into the run that resumes from it.

    Args:
        images_seen: images trained on, over every process and every resume.
        images_skipped: images the data streams skipped (undecodable, too large).
        train_runtime_s: wall-clock seconds of training, over every resume.
    """

    images_seen: int = 0
    images_skipped: int = 0
    train_runtime_s: float = 0.0

    @classmethod
    def read(cls, summary_file: Path) -> RunTotals:
        """The totals of a checkpoint's summary.

        Args:
            summary_file: a ``training_summary.json``.

        Returns:
            Its totals; zeros (with a warning) for a checkpoint written without one, and for totals it left
            ``null``.
        """
        if not summary_file.is_file():
            logger.warning("%s is missing: images seen and runtime count from this resume on", summary_file)
            return cls()
        data = json.loads(summary_file.read_text())
        return cls(
            images_seen=int(data.get("images_seen") or 0),
            images_skipped=int(data.get("images_skipped") or 0),
            train_runtime_s=float(data.get("train_runtime_s") or 0.0),
        )


def feature_health_start(summary_file: Path) -> tuple[float | None, float | None]:
    """The mean patch cosine and effective rank a run had on its first batch, from a checkpoint's summary.

    Args:
        summary_file: a ``training_summary.json``.

    Returns:
        ``(mean patch cosine, effective rank)`` at the start of the run; ``(None, None)`` when the file or the
        values are missing (a checkpoint written before the guard measured them).
    """
    if not summary_file.is_file():
        return None, None
    health = json.loads(summary_file.read_text()).get(FEATURE_HEALTH_KEY) or {}
    return (health.get("mean_patch_cosine") or {}).get("start"), (health.get("effective_rank") or {}).get("start")


def write_training_summary(
    output_dir: Path,
    totals: RunTotals | None,
    *,
    global_step: int,
    device: str,
    num_processes: int,
    exported: str | None = None,
    feature_health: dict[str, dict[str, float | None]] | None = None,
    parallelism: dict[str, object] | None = None,
    parameters: dict[str, int] | None = None,
) -> None:
    """Write ``training_summary.json`` (atomically): compute and data totals of the run so far.

    Args:
        output_dir: a checkpoint or export folder.
        totals: the run's totals over every process, or ``None`` where not gathered (written as ``null``).
        global_step: optimizer steps done.
        device: the device trained on, in words (``"NVIDIA H100 80GB HBM3"``, ``"cpu (8 cores)"``).
        num_processes: processes that trained.
        exported: for an export, which network it holds (``"student"`` or ``"teacher"``); left out otherwise.
        feature_health: the collapse guard's measures at the start and now
            (:meth:`paka_hf.training.collapse_guard.CollapseGuard.summary`); left out when ``None``.
        parallelism: how the processes shared the work (``{"strategy": "DDP" | "FSDP2" | "single process", ...}``,
            with the FSDP mesh); left out when ``None``.
        parameters: ``{"trainable_parameters": ..., "total_parameters": ...}`` of the trained network (student and
            its head), written at the top level; left out when ``None``.
    """
    summary = {
        "train_runtime_s": round(totals.train_runtime_s, 1) if totals else None,
        "global_step": global_step,
        "images_seen": totals.images_seen if totals else None,
        "images_skipped": totals.images_skipped if totals else None,
        "device": device,
        "num_processes": num_processes,
    }
    if parameters is not None:
        summary.update(parameters)
    if parallelism is not None:
        summary["parallelism"] = parallelism
    if exported is not None:
        summary["exported"] = exported
    if feature_health is not None:
        summary[FEATURE_HEALTH_KEY] = {
            measure: {key: None if value is None else round(value, 4) for key, value in ends.items()}
            for measure, ends in feature_health.items()
        }
    write_text_atomic(Path(output_dir) / TRAINING_SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# durable writes
# ---------------------------------------------------------------------------------------------


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that it is either the old file or the whole new one, also after a power loss.

    Through ``<name>.tmp`` beside it: write, fsync, ``os.replace``, then an fsync of the folder.

    Args:
        path: the file to (re)write; its folder must exist.
        text: its new content, written as UTF-8.
    """
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_directory(path.parent)


def fsync_directory(folder: Path) -> None:
    """Make the folder's entries (created, renamed, removed files) durable.

    Args:
        folder: an existing folder.
    """
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder``, then every folder (deepest first), ``folder`` itself last.

    Args:
        folder: an existing folder.
    """
    folders = []
    for root, _, files in os.walk(folder):
        folders.append(Path(root))
        for name in files:
            descriptor = os.open(Path(root) / name, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
    for path in reversed(folders):
        fsync_directory(path)
