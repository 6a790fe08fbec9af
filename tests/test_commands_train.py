"""How ``scripts/train.py`` ends when it does not finish: Ctrl-C prints one line (where training stopped, the last
complete checkpoint, the resume command) with exit status 130 and no traceback, a checkpoint cut short is removed,
and a run that fails before it has written anything leaves no folder it created (never one that was there before).

The in-process tests interrupt the program at chosen points (a ``KeyboardInterrupt`` raised from the trainer);
the slow one sends a real SIGINT to the process group of ``scripts/train.py``, as Ctrl-C in a terminal does.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from paka_hf import PaKAConfig, PaKATrainer
from paka_hf.commands import train as train_command
from paka_hf.commands.cli import INTERRUPTED_STATUS, USER_ERROR_STATUS, run_script
from paka_hf.commands.train import RunFolder, interrupted_message, program_name, resume_command
from paka_hf.testing import TINY_RUN, tiny_run_config, write_tiny_run_assets
from paka_hf.training.checkpoints import CHECKPOINT_MARKER, complete_checkpoints, mark_checkpoint_complete
from paka_hf.training.trainer import ignore_interrupts_in_worker

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_assets")
    write_tiny_run_assets(root, (48, 64))
    return root


def _argv(assets, output_dir, *extra) -> list[str]:
    flags = dict(zip(TINY_RUN[::2], TINY_RUN[1::2]))
    flags.update({"--max_steps": "6", "--save_steps": "2"})
    args = [token for pair in flags.items() for token in pair]
    return [
        "--model_name_or_path",
        str(assets / "model"),
        "--dataset_name",
        str(assets / "images"),
        "--output_dir",
        str(output_dir),
        *args,
        *extra,
    ]


def _last_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    return err.strip().splitlines()[-1]


# ---------------------------------------------------------------------------------------------
# the command that resumes
# ---------------------------------------------------------------------------------------------


def test_resume_command_replaces_any_resume_option_and_never_overwrites():
    assert resume_command(["--config", "a b.yaml", "--max_steps", "5"], program="python scripts/train.py") == (
        "python scripts/train.py --config 'a b.yaml' --max_steps 5 --resume_from_checkpoint latest"
    )
    argv = ["--resume_from_checkpoint", "out/checkpoint-3", "--overwrite_output_dir", "--lr", "1"]
    assert resume_command(argv, program="paka-train") == "paka-train --lr 1 --resume_from_checkpoint latest"
    argv = ["--resume-from-checkpoint=x", "--overwrite_output_dir", "true", "--seed", "2"]
    assert resume_command(argv, overwrite_output_dir=True, program="paka-train") == (
        "paka-train --seed 2 --overwrite_output_dir false --resume_from_checkpoint latest"
    )


def test_program_name_is_what_reruns_it_from_here():
    assert program_name("scripts/train.py", launched=False) == "python scripts/train.py"
    assert program_name("/my dir/train.py", launched=False) == "python '/my dir/train.py'"
    assert program_name(train_command.__file__, launched=False) == "python -m paka_hf.commands.train"
    assert program_name("scripts/train.py", launched=True) == "accelerate launch <its options> scripts/train.py"
    assert program_name("/venv/bin/paka-train") == "paka-train"
    assert program_name("-c") == program_name("-") == "paka-train"


def test_interrupted_message_names_the_newest_complete_checkpoint_or_says_to_rerun(tmp_path):
    common = dict(
        output_dir=tmp_path, command="paka-train --resume_from_checkpoint latest", rerun_command="paka-train"
    )
    message = interrupted_message(global_step=0, max_steps=6, started=True, exporting=False, **common)
    assert (
        message
        == "training stopped before the first step of 6; no complete checkpoint yet: rerun the same command (paka-train)"
    )
    for step in (2, 4, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
    for step in (2, 4):  # checkpoint-6 was cut short: no marker
        mark_checkpoint_complete(tmp_path / f"checkpoint-{step}", global_step=step, world_size=1, num_workers=0)
    message = interrupted_message(global_step=5, max_steps=6, started=True, exporting=False, **common)
    assert message == (
        f"training stopped after step 5 of 6; last complete checkpoint: {tmp_path / 'checkpoint-4'}; "
        "resume with: paka-train --resume_from_checkpoint latest"
    )
    message = interrupted_message(global_step=6, max_steps=6, started=True, exporting=True, **common)
    assert message.startswith(
        f"training stopped after the last step (6 of 6), while exporting the backbone to {tmp_path};"
    )
    message = interrupted_message(global_step=0, max_steps=0, started=False, exporting=False, **common)
    assert message.startswith("training stopped before training started (loading the model or data);")


# ---------------------------------------------------------------------------------------------
# what a stopped run leaves behind
# ---------------------------------------------------------------------------------------------


def test_clean_up_removes_only_unfinished_folders_of_this_run(tmp_path):
    output = tmp_path / "out"
    (output / "checkpoint-1").mkdir(parents=True)  # an earlier run's torn save: not this run's to remove
    run = RunFolder(output)
    assert run.existed
    for step in (2, 4):
        (output / f"checkpoint-{step}").mkdir()
        (output / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"x")
    mark_checkpoint_complete(output / "checkpoint-2", global_step=2, world_size=1, num_workers=0)
    assert run.clean_up() == [output / "checkpoint-4"]
    assert sorted(path.name for path in output.iterdir()) == ["checkpoint-1", "checkpoint-2"]

    fresh = tmp_path / "fresh"
    run = RunFolder(fresh)
    (fresh / "checkpoint-2").mkdir(parents=True)
    (fresh / "runs" / "empty").mkdir(parents=True)
    (fresh / "checkpoint-2" / "optimizer.pt").write_bytes(b"x")
    assert run.clean_up() == [fresh / "checkpoint-2", fresh]
    assert not fresh.exists()

    kept = tmp_path / "kept"
    (kept / "empty").mkdir(parents=True)
    assert RunFolder(kept).clean_up() == []
    assert (kept / "empty").is_dir()

    with_file = tmp_path / "with_file"
    run = RunFolder(with_file)
    (with_file / "sub").mkdir(parents=True)
    (with_file / "sub" / "trainer_state.json").write_text("{}")
    assert run.clean_up() == []
    assert (with_file / "sub" / "trainer_state.json").is_file()


def test_resume_with_no_checkpoint_leaves_no_new_folder_and_keeps_an_old_one(assets, tmp_path, capsys):
    output = tmp_path / "never"
    status = run_script(train_command.main, _argv(assets, output, "--resume_from_checkpoint", "latest"))
    assert status == USER_ERROR_STATUS
    assert "no complete checkpoint" in _last_line(capsys)
    assert not output.exists()

    existing = tmp_path / "existing"
    (existing / "logs").mkdir(parents=True)
    status = run_script(train_command.main, _argv(assets, existing, "--resume_from_checkpoint", "latest"))
    assert status == USER_ERROR_STATUS
    assert (existing / "logs").is_dir()


# ---------------------------------------------------------------------------------------------
# Ctrl-C in process
# ---------------------------------------------------------------------------------------------


class InterruptedWhileSaving(PaKATrainer):
    """Ctrl-C lands in the middle of the step-4 checkpoint: weights and optimizer written, no marker."""

    def _save_rng_state(self, output_dir):
        if self.state.global_step == 4:
            raise KeyboardInterrupt
        return super()._save_rng_state(output_dir)


class InterruptedBeforeTheFirstStep(PaKATrainer):
    def training_step(self, *args, **kwargs):
        raise KeyboardInterrupt


def test_ctrl_c_while_saving_removes_the_torn_checkpoint_and_names_the_last_complete_one(
    assets, tmp_path, capsys, monkeypatch
):
    output = tmp_path / "run"
    argv = _argv(assets, output)
    monkeypatch.setattr(train_command, "PaKATrainer", InterruptedWhileSaving)
    assert run_script(train_command.main, argv) == INTERRUPTED_STATUS
    line = _last_line(capsys)
    assert line.startswith(
        f"interrupted: training stopped after step 4 of 6; last complete checkpoint: {output / 'checkpoint-2'}; "
        "resume with: "
    ), line
    assert line.endswith(" " + shlex.join([*argv, "--resume_from_checkpoint", "latest"])), line
    assert [path.name for path in complete_checkpoints(output)] == ["checkpoint-2"]
    assert not (output / "checkpoint-4").exists()

    monkeypatch.setattr(train_command, "PaKATrainer", PaKATrainer)
    assert run_script(train_command.main, [*argv, "--resume_from_checkpoint", "latest"]) == 0
    assert json.loads((output / "trainer_state.json").read_text())["global_step"] == 6
    assert (output / "model.safetensors").is_file()


def test_ctrl_c_before_the_first_step_leaves_no_new_folder(assets, tmp_path, capsys, monkeypatch):
    output = tmp_path / "run"
    argv = _argv(assets, output)
    monkeypatch.setattr(train_command, "PaKATrainer", InterruptedBeforeTheFirstStep)
    assert run_script(train_command.main, argv) == INTERRUPTED_STATUS
    assert _last_line(capsys) == (
        "interrupted: training stopped before the first step of 6; no complete checkpoint yet: rerun the same "
        f"command ({program_name()} {shlex.join(argv)})"
    )
    assert not output.exists()


class InterruptedWhileExporting(PaKATrainer):
    def export_backbone(self, output_dir=None, network=None):
        raise KeyboardInterrupt


def test_ctrl_c_while_exporting_resumes_from_the_last_checkpoint_to_the_export(assets, tmp_path, capsys, monkeypatch):
    output = tmp_path / "run"
    argv = _argv(assets, output)
    monkeypatch.setattr(train_command, "PaKATrainer", InterruptedWhileExporting)
    assert run_script(train_command.main, argv) == INTERRUPTED_STATUS
    assert _last_line(capsys).startswith(
        f"interrupted: training stopped after the last step (6 of 6), while exporting the backbone to {output}; "
        f"last complete checkpoint: {output / 'checkpoint-6'}; resume with: "
    )
    assert not (output / "model.safetensors").exists()

    monkeypatch.setattr(train_command, "PaKATrainer", PaKATrainer)
    assert run_script(train_command.main, [*argv, "--resume_from_checkpoint", "latest"]) == 0
    assert (output / "model.safetensors").is_file() and (output / "training_config.yaml").is_file()


def test_ctrl_c_on_a_process_other_than_zero_exits_130_silently(assets, tmp_path, capsys, monkeypatch):
    def interrupted_at_start(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(PaKAConfig, "process_index", property(lambda self: 1))
    monkeypatch.setattr(train_command, "PaKATrainer", interrupted_at_start)
    with pytest.raises(SystemExit) as exit_info:
        run_script(train_command.main, _argv(assets, tmp_path / "run"))
    assert exit_info.value.code == INTERRUPTED_STATUS
    assert "interrupted" not in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# data loader workers
# ---------------------------------------------------------------------------------------------


class _SigintDisposition(IterableDataset):
    def __iter__(self):
        yield torch.tensor(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)


def test_the_training_loader_s_workers_ignore_ctrl_c(assets, tmp_path):
    config = tiny_run_config(tmp_path / "out", assets / "model", assets / "images", dataloader_num_workers=1)
    loader = PaKATrainer(args=config).get_train_dataloader()
    assert loader.worker_init_fn is ignore_interrupts_in_worker
    in_worker = list(DataLoader(_SigintDisposition(), num_workers=1, worker_init_fn=ignore_interrupts_in_worker))
    assert [bool(flag) for flag in in_worker] == [True]
    assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN  # the main process still handles it


_READER_VANISHES = """
import os, socket, sys, time
from multiprocessing import resource_sharer
from paka_hf.training.trainer import ignore_interrupts_in_worker
if sys.argv[1] == "worker":
    ignore_interrupts_in_worker(0)
read_end, _ = os.pipe()
shared = resource_sharer.DupFd(read_end)  # what a worker does to hand a batch's storage to the main process
reader = socket.socket(socket.AF_UNIX)
reader.connect(shared._id[0])
reader.close()  # the main process, interrupted before the handshake
time.sleep(0.5)
sys.excepthook(ValueError, ValueError("still reported"), None)
"""


@pytest.mark.parametrize("process", ["plain", "worker"])
def test_a_worker_stays_silent_when_the_interrupted_main_process_drops_a_batch_transfer(process):
    """The resource sharer's serving thread reports a reader gone mid-handshake as a traceback; a training
    worker does not, and still reports any other error."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", _READER_VANISHES, process], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "ValueError: still reported" in done.stderr
    assert ("resource_sharer.py" in done.stderr) == (process == "plain"), done.stderr


# ---------------------------------------------------------------------------------------------
# a real SIGINT
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigint_to_the_training_script_ends_in_one_line_and_its_command_resumes(assets, tmp_path):
    """Ctrl-C as a terminal sends it (SIGINT to the whole process group, the loader's worker included) once a
    checkpoint is complete: exit status 130, the last line of stderr names that checkpoint and the resume command,
    no traceback; the resume command then finishes the run."""
    (tmp_path / "run.yaml").write_text(
        f"model_name_or_path: {assets / 'model'}\ndataset_name: {assets / 'images'}\noutput_dir: out\n"
    )
    flags = dict(zip(TINY_RUN[::2], TINY_RUN[1::2]))
    flags.update({"--max_steps": "40", "--save_steps": "2", "--dataloader_num_workers": "1"})
    argv = [str(REPO_ROOT / "scripts" / "train.py"), "--config", "run.yaml"]
    argv += [token for pair in flags.items() for token in pair]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("PAKA_DEBUG", None)
    process = subprocess.Popen(
        [sys.executable, *argv],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, to signal as a terminal does
    )
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "out" / "checkpoint-2" / CHECKPOINT_MARKER).exists():
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == INTERRUPTED_STATUS, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    newest = complete_checkpoints(tmp_path / "out")[-1]
    prefix = "interrupted: training stopped after step "
    assert last.startswith(prefix) and f" of 40; last complete checkpoint: out/{newest.name}; resume with: " in last
    command = last.split("; resume with: ", 1)[1]
    assert command == shlex.join(["python", *argv[:1]]) + " " + shlex.join(
        [*argv[1:], "--resume_from_checkpoint", "latest"]
    )
    assert all(CHECKPOINT_MARKER in os.listdir(path) for path in (tmp_path / "out").glob("checkpoint-*"))

    resumed = subprocess.run(
        [sys.executable, *shlex.split(command)[1:]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "trainer_state.json").read_text())["global_step"] == 40
    assert (tmp_path / "out" / "model.safetensors").is_file()
