"""Checkpoint folders on disk (paka_hf.training.checkpoints), without a Trainer: which folders are complete and in
which order, what a resume resolves to, what a run removes from output_dir, rotation, the summary's totals and
the durable writes. The trainer's use of them, with real saves and resumes, is in test_training_trainer.py."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

import paka_hf.training.checkpoints as checkpoints
from paka_hf.training.checkpoints import (
    CHECKPOINT_FORMAT_VERSION,
    CHECKPOINT_MARKER,
    RunTotals,
    check_checkpoint_format,
    checkpoint_folders,
    checkpoint_step,
    complete_checkpoints,
    folder_names,
    fsync_tree,
    mark_checkpoint_complete,
    remove_checkpoint,
    resolve_checkpoint,
    rotate_checkpoints,
    stale_checkpoints,
    write_text_atomic,
    write_training_summary,
)
from paka_hf.utils.errors import ConfigError, MissingPathError
from paka_hf.utils.files import TRAINING_SUMMARY_FILE


def make_checkpoint(output: Path, step: int, complete: bool = True) -> Path:
    folder = output / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    if complete:
        mark_checkpoint_complete(folder, global_step=step, world_size=1, num_workers=0)
    return folder


def names(paths) -> list[str]:
    return [path.name for path in paths]


# ---- the folders ---------------------------------------------------------------------------------------------


def test_folders_are_listed_by_step_number_and_only_marked_ones_are_complete(tmp_path):
    for step in (10, 9, 2):
        make_checkpoint(tmp_path, step)
    make_checkpoint(tmp_path, 11, complete=False)  # a save interrupted before its marker
    (tmp_path / "checkpoint-12").write_text("a file, not a folder")
    (tmp_path / "checkpoint-best").mkdir()
    (tmp_path / "runs").mkdir()

    assert [(n, path.name) for n, path in checkpoint_folders(tmp_path)] == [
        (2, "checkpoint-2"),
        (9, "checkpoint-9"),
        (10, "checkpoint-10"),  # by number, not by name
        (11, "checkpoint-11"),
    ]
    assert names(complete_checkpoints(tmp_path)) == ["checkpoint-2", "checkpoint-9", "checkpoint-10"]
    assert folder_names(checkpoint_folders(tmp_path)[:2]) == "checkpoint-2, checkpoint-9"
    assert checkpoint_folders(tmp_path / "missing") == [] and complete_checkpoints(tmp_path / "missing") == []


def test_the_marker_records_the_save_and_its_step_wins_over_the_name(tmp_path):
    folder = make_checkpoint(tmp_path, 4)
    assert json.loads((folder / CHECKPOINT_MARKER).read_text()) == {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "global_step": 4,
        "world_size": 1,
        "num_workers": 0,
        "sharding": "none",  # whole parameters on every process (FSDP2 runs write "FSDP2")
    }
    renamed = folder.rename(tmp_path / "checkpoint-40")
    assert checkpoint_step(renamed) == 4  # the marker's step
    assert checkpoint_step(make_checkpoint(tmp_path, 7, complete=False)) == 7  # no marker: the name's


def test_removal_unmarks_before_it_deletes(tmp_path, monkeypatch):
    folder = make_checkpoint(tmp_path, 3)
    monkeypatch.setattr(checkpoints.shutil, "rmtree", lambda path, ignore_errors=False: None)  # interrupted
    remove_checkpoint(folder)
    assert (folder / "model.safetensors").is_file() and not (folder / CHECKPOINT_MARKER).exists()
    assert complete_checkpoints(tmp_path) == []  # what is left is never resumed
    monkeypatch.undo()
    remove_checkpoint(folder)
    assert not folder.exists()
    remove_checkpoint(folder)  # already gone: nothing to do


# ---- resume, output_dir, rotation ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, False, "", "false", "False", "none", "None"])
def test_no_resume_values_start_fresh(tmp_path, value):
    make_checkpoint(tmp_path, 2)
    assert resolve_checkpoint(tmp_path, value) is None


@pytest.mark.parametrize("value", [True, "true", "True", "latest"])
def test_latest_is_the_newest_complete_checkpoint(tmp_path, value):
    make_checkpoint(tmp_path, 2)
    make_checkpoint(tmp_path, 10)
    make_checkpoint(tmp_path, 12, complete=False)
    assert resolve_checkpoint(tmp_path, value) == str(tmp_path / "checkpoint-10")


def test_resolving_a_checkpoint_that_cannot_be_resumed_says_why(tmp_path):
    with pytest.raises(ConfigError, match="latest: no complete checkpoint in .* start without"):
        resolve_checkpoint(tmp_path, "latest")
    with pytest.raises(MissingPathError, match="no such folder"):
        resolve_checkpoint(tmp_path, str(tmp_path / "checkpoint-5"))
    torn = make_checkpoint(tmp_path, 6, complete=False)
    with pytest.raises(ConfigError, match=rf"not a complete PaKA checkpoint \(no {CHECKPOINT_MARKER}.*\)$"):
        resolve_checkpoint(tmp_path, str(torn))
    make_checkpoint(tmp_path, 4)
    with pytest.raises(ConfigError, match="the newest complete one is .*checkpoint-4$"):
        resolve_checkpoint(tmp_path, str(torn))
    assert resolve_checkpoint(tmp_path, str(tmp_path / "checkpoint-4")) == str(tmp_path / "checkpoint-4")


def set_marker_version(folder: Path, version) -> None:
    marker = json.loads((folder / CHECKPOINT_MARKER).read_text())
    if version is None:
        del marker["format_version"]
    else:
        marker["format_version"] = version
    (folder / CHECKPOINT_MARKER).write_text(json.dumps(marker))


def test_a_checkpoint_of_a_newer_format_is_refused_and_one_without_a_version_resumes(tmp_path):
    """A marker without format_version (written before the key existed) is format 1 and resumes; a newer format,
    given by path or found by ``latest``, stops with one line asking for an upgrade; a malformed one is refused."""
    assert CHECKPOINT_FORMAT_VERSION == 1
    old = make_checkpoint(tmp_path, 2)
    set_marker_version(old, None)
    assert check_checkpoint_format(old) == 1
    assert resolve_checkpoint(tmp_path, "latest") == resolve_checkpoint(tmp_path, str(old)) == str(old)
    newer = make_checkpoint(tmp_path, 4)
    assert check_checkpoint_format(newer) == CHECKPOINT_FORMAT_VERSION
    set_marker_version(newer, CHECKPOINT_FORMAT_VERSION + 1)
    for value in ("latest", str(newer)):
        with pytest.raises(ConfigError, match=r"checkpoint-4 is a checkpoint of format 2, newer than") as info:
            resolve_checkpoint(tmp_path, value)
        assert str(info.value).endswith("upgrade paka_hf to resume from it") and "\n" not in str(info.value)
    for bad in ("1", 0, 1.5, True):
        set_marker_version(newer, bad)
        with pytest.raises(ConfigError, match="has no valid format_version"):
            resolve_checkpoint(tmp_path, str(newer))


def test_a_fresh_run_removes_earlier_checkpoints_only_when_told_to(tmp_path):
    assert stale_checkpoints(tmp_path / "new", None, overwrite_output_dir=False)[0] == []
    make_checkpoint(tmp_path, 2)
    make_checkpoint(tmp_path, 4, complete=False)
    with pytest.raises(
        ConfigError, match=r"already holds checkpoints of an earlier run \(checkpoint-2, checkpoint-4\)"
    ):
        stale_checkpoints(tmp_path, None, overwrite_output_dir=False)
    doomed, why = stale_checkpoints(tmp_path, None, overwrite_output_dir=True)
    assert folder_names(doomed) == "checkpoint-2, checkpoint-4" and why.startswith("overwrite_output_dir")
    assert len(checkpoint_folders(tmp_path)) == 2  # it names them; the trainer removes them


def test_a_resume_removes_the_later_checkpoints_of_the_run_it_continues(tmp_path):
    for step in (1, 2, 3):
        make_checkpoint(tmp_path, step)
    make_checkpoint(tmp_path, 5, complete=False)
    resumed = str(tmp_path / "checkpoint-2")
    doomed, why = stale_checkpoints(tmp_path, resumed, overwrite_output_dir=False)
    assert folder_names(doomed) == "checkpoint-3, checkpoint-5"
    assert why == f"resuming from {resumed}: removing the later checkpoints of the run it continues"
    with pytest.raises(ConfigError, match="--overwrite_output_dir would remove .*checkpoint-2, the checkpoint to"):
        stale_checkpoints(tmp_path, resumed, overwrite_output_dir=True)
    elsewhere = make_checkpoint(tmp_path / "other_run", 9)  # resuming another run's checkpoint into this folder
    doomed, _ = stale_checkpoints(tmp_path, str(elsewhere), overwrite_output_dir=True)
    assert folder_names(doomed) == "checkpoint-1, checkpoint-2, checkpoint-3, checkpoint-5"


def test_rotation_keeps_the_newest_complete_checkpoints_and_the_one_just_written(tmp_path):
    for step in (1, 2, 3, 4):
        make_checkpoint(tmp_path, step)
    torn = make_checkpoint(tmp_path, 5, complete=False)
    assert rotate_checkpoints(tmp_path / "checkpoint-4", None) == []
    assert rotate_checkpoints(tmp_path / "checkpoint-4", 0) == []
    assert len(complete_checkpoints(tmp_path)) == 4

    removed = rotate_checkpoints(tmp_path / "checkpoint-4", 2)
    assert names(removed) == ["checkpoint-1", "checkpoint-2"]
    assert names(complete_checkpoints(tmp_path)) == ["checkpoint-3", "checkpoint-4"]
    assert not (tmp_path / "checkpoint-1").exists() and torn.is_dir()  # an unmarked folder is not rotated
    assert names(rotate_checkpoints(tmp_path / "checkpoint-4", 1)) == ["checkpoint-3"]
    assert names(complete_checkpoints(tmp_path)) == ["checkpoint-4"]


# ---- the summary ---------------------------------------------------------------------------------------------


def test_summary_totals_round_trip_and_missing_totals_read_as_zero(tmp_path, caplog):
    totals = RunTotals(images_seen=12, images_skipped=3, train_runtime_s=41.26)
    write_training_summary(tmp_path, totals, global_step=6, device="cpu (2 cores)", num_processes=1)
    summary = json.loads((tmp_path / TRAINING_SUMMARY_FILE).read_text())
    assert summary == {
        "train_runtime_s": 41.3,
        "global_step": 6,
        "images_seen": 12,
        "images_skipped": 3,
        "device": "cpu (2 cores)",
        "num_processes": 1,
    }
    assert RunTotals.read(tmp_path / TRAINING_SUMMARY_FILE) == RunTotals(12, 3, 41.3)

    write_training_summary(tmp_path, None, global_step=0, device="cpu", num_processes=2, exported="teacher")
    summary = json.loads((tmp_path / TRAINING_SUMMARY_FILE).read_text())
    assert summary["images_seen"] is None and summary["exported"] == "teacher"
    assert RunTotals.read(tmp_path / TRAINING_SUMMARY_FILE) == RunTotals()
    with caplog.at_level(logging.WARNING, logger="paka_hf.training.checkpoints"):
        assert RunTotals.read(tmp_path / "missing.json") == RunTotals()
    assert "missing.json is missing" in caplog.text


# ---- durable writes ------------------------------------------------------------------------------------------


def test_atomic_write_replaces_the_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "training_config.yaml"
    write_text_atomic(path, "old: 1\n")
    write_text_atomic(path, "new: ünïcode\n")
    assert path.read_text(encoding="utf-8") == "new: ünïcode\n"
    assert os.listdir(tmp_path) == ["training_config.yaml"]


def test_an_interrupted_atomic_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "training_summary.json"
    write_text_atomic(path, "old")

    def power_cut(source, target):
        raise OSError("power cut")

    monkeypatch.setattr(checkpoints.os, "replace", power_cut)
    with pytest.raises(OSError, match="power cut"):
        write_text_atomic(path, "new")
    assert path.read_text() == "old"


def test_fsync_tree_syncs_every_file_then_the_folders_deepest_first(tmp_path, monkeypatch):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("x", "a/y", "a/b/z"):
        (tmp_path / name).write_text(name)
    opened, synced, synced_folders = {}, [], []
    real_open, real_fsync = os.open, os.fsync

    def open_file(path, flags):
        descriptor = real_open(path, flags)
        opened[descriptor] = Path(path)
        return descriptor

    monkeypatch.setattr(checkpoints.os, "open", open_file)
    monkeypatch.setattr(checkpoints.os, "fsync", lambda fd: (synced.append(opened[fd]), real_fsync(fd)))
    monkeypatch.setattr(checkpoints, "fsync_directory", lambda folder: synced_folders.append(folder))
    fsync_tree(tmp_path)
    assert sorted(synced) == sorted(tmp_path / name for name in ("x", "a/y", "a/b/z"))
    assert synced_folders == [tmp_path / "a" / "b", tmp_path / "a", tmp_path]
