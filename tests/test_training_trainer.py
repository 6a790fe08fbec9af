import json
import logging
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import warnings
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from transformers import AutoModel, TrainerCallback, pipeline

from paka_hf import PaKAConfig, PaKATrainer
from paka_hf.testing import StopAt, tiny_dinov2_config, tiny_run_config, write_random_images
from paka_hf.training.checkpoints import CHECKPOINT_MARKER, complete_checkpoints
from paka_hf.utils.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    config = tiny_dinov2_config(registers=2)
    config.drop_path_rate = 0.0
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(root / "model")
    write_random_images(root / "images", 16, side_range=(40, 90))
    return root


def run_config(assets, output_dir, **overrides) -> PaKAConfig:
    return tiny_run_config(output_dir, assets / "model", assets / "images", **overrides)


def states(trainer):
    model = trainer.model
    return {k: v.clone() for k, v in model.student.state_dict().items()}, {
        k: v.clone() for k, v in model.teacher.state_dict().items()
    }


def test_ema_runs_once_per_optimizer_step_with_gradient_accumulation(assets, tmp_path):
    trainer = PaKATrainer(
        args=run_config(assets, tmp_path, max_steps=3, gradient_accumulation_steps=4, save_steps=100)
    )
    initial_teacher = {k: v.clone() for k, v in trainer.model.teacher.state_dict().items()}
    trainer.train()
    assert trainer.state.global_step == 3
    assert trainer.ema_callback.updates == 3
    assert trainer.stream_state.batches_consumed == 12
    teacher, student = trainer.model.teacher.state_dict(), trainer.model.student.state_dict()
    name = "model.encoder.layer.0.attention.q_proj.weight"
    assert not torch.equal(teacher[name], initial_teacher[name])  # the teacher moved ...
    assert not torch.equal(teacher[name], student[name])  # ... but trails the student
    assert all(not p.requires_grad for p in trainer.model.teacher.parameters())


def test_logs_and_parameter_groups(assets, tmp_path):
    trainer = PaKATrainer(args=run_config(assets, tmp_path, max_steps=4, save_steps=100))
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 2
    for key in (
        "cka",
        "teacher_momentum",
        "learning_rate",
        "learning_rate_head",
        "weight_decay",
        "images_per_second",
        "images_skipped",
    ):
        assert key in logged[-1], key
    assert 0.0 <= logged[-1]["cka"] <= 1.0
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert set(groups) == {"student/decay", "student/no_decay", "student_head/decay", "student_head/no_decay"}
    assert groups["student/no_decay"]["weight_decay"] == 0.0
    assert groups["student/decay"]["weight_decay"] > 0.04  # the cosine schedule has moved it up
    decayed = {id(p) for p in groups["student/decay"]["params"]}
    for name, param in trainer.model.student.named_parameters():
        if name.endswith(".bias") or "layernorm" in name or "norm" in name.split(".")[-2]:
            assert id(param) not in decayed, name
    assert all(p.ndim >= 2 for p in groups["student/decay"]["params"])
    assert all(not p.requires_grad for n, p in trainer.model.student.named_parameters() if n.endswith("mask_token"))


@pytest.mark.parametrize("export", ["student", "teacher"])
def test_export_loads_with_no_custom_code_and_matches(assets, tmp_path, export):
    trainer = PaKATrainer(args=run_config(assets, tmp_path / "run", max_steps=2, save_steps=100, export=export))
    trainer.train()
    out = trainer.export_backbone(tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "training_config.yaml",
        "training_summary.json",
    ]
    loaded = AutoModel.from_pretrained(out).eval()
    assert loaded.config.drop_path_rate == 0.0  # the training-time stochastic depth is not exported
    trained = (trainer.model.student if export == "student" else trainer.model.teacher).model.eval()
    pixels = torch.randn(2, 3, 56, 70)
    with torch.no_grad():
        assert torch.equal(
            loaded(pixel_values=pixels).last_hidden_state, trained(pixel_values=pixels).last_hidden_state
        )
    extractor = pipeline("image-feature-extraction", model=str(out), device="cpu")
    features = extractor(Image.new("RGB", (64, 48), (120, 30, 200)), return_tensors=True)
    assert features.shape[-1] == 32


def test_export_network_override_writes_the_other_network(assets, tmp_path):
    trainer = PaKATrainer(args=run_config(assets, tmp_path / "run", max_steps=2, save_steps=100, export="student"))
    trainer.train()
    student_dir = trainer.export_backbone(tmp_path / "student")
    teacher_dir = trainer.export_backbone(tmp_path / "teacher", network="teacher")
    pixels = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        for out, net in ((student_dir, trainer.model.student), (teacher_dir, trainer.model.teacher)):
            loaded = AutoModel.from_pretrained(out).eval()
            assert torch.equal(
                loaded(pixel_values=pixels).last_hidden_state, net.model.eval()(pixel_values=pixels).last_hidden_state
            )
            assert json.loads((out / "training_summary.json").read_text())["exported"] == out.name
        assert not torch.equal(  # two optimizer steps moved the student away from its EMA
            AutoModel.from_pretrained(student_dir)(pixel_values=pixels).last_hidden_state,
            AutoModel.from_pretrained(teacher_dir)(pixel_values=pixels).last_hidden_state,
        )
    with pytest.raises(ValueError, match="'student' or 'teacher'"):
        trainer.export_backbone(tmp_path / "x", network="head")


@pytest.mark.parametrize("workers, rendering", [(0, "cpu"), (2, "cpu"), (0, "device")])
def test_resume_is_bit_identical_to_an_uninterrupted_run(assets, tmp_path, workers, rendering):
    kwargs = dict(dataloader_num_workers=workers, view_rendering=rendering)
    straight = PaKATrainer(args=run_config(assets, tmp_path / "a", **kwargs))
    straight.train()
    student_a, teacher_a = states(straight)
    assert straight.view_transform.rendering == rendering

    first = PaKATrainer(args=run_config(assets, tmp_path / "b", **kwargs), callbacks=[StopAt(3)])
    first.train()
    assert first.state.global_step == 3
    resumed = PaKATrainer(args=run_config(assets, tmp_path / "b", **kwargs))
    resumed.train(resume_from_checkpoint="latest")
    assert resumed.state.global_step == 6
    student_b, teacher_b = states(resumed)
    for name in student_a:
        assert torch.equal(student_a[name], student_b[name]), f"student {name}"
    for name in teacher_a:
        assert torch.equal(teacher_a[name], teacher_b[name]), f"teacher {name}"


@pytest.mark.slow
def test_a_run_killed_while_checkpointing_never_leaves_a_resumable_broken_checkpoint(assets, tmp_path):
    output = tmp_path / "run"
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from paka_hf import PaKATrainer
        from paka_hf.testing import tiny_run_config
        from pathlib import Path

        class Killed(PaKATrainer):
            def _save_rng_state(self, output_dir):
                if self.state.global_step == 4:
                    os.kill(os.getpid(), signal.SIGKILL)  # model and optimizer written, marker not
                return super()._save_rng_state(output_dir)

        root = Path({str(tmp_path)!r})
        Killed(args=tiny_run_config({str(output)!r}, root / "model", root / "images", save_steps=2)).train()
        """
    )
    # the assets of this module live elsewhere: link them where the script looks
    (tmp_path / "model").symlink_to(assets / "model")
    (tmp_path / "images").symlink_to(assets / "images")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert (output / "checkpoint-4" / "model.safetensors").exists()
    assert not (output / "checkpoint-4" / CHECKPOINT_MARKER).exists()
    assert [p.name for p in complete_checkpoints(output)] == ["checkpoint-2"]

    trainer = PaKATrainer(args=run_config(tmp_path, output, save_steps=2))
    with pytest.raises(ValueError, match="not a complete PaKA checkpoint.*newest complete one is .*checkpoint-2"):
        trainer.train(resume_from_checkpoint=str(output / "checkpoint-4"))
    assert trainer.resolve_checkpoint("latest").endswith("checkpoint-2")
    trainer.train(resume_from_checkpoint="latest")
    assert trainer.state.global_step == 6


class InterruptInAFinalizer(TrainerCallback):
    """At step ``step``, SIGINT arrives while a finalizer runs: Python raises KeyboardInterrupt inside ``__del__``,
    prints "Exception ignored" and drops it, as it does when Ctrl-C lands in a DataLoader iterator's cleanup."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:

            class Finalized:
                def __del__(self):
                    signal.raise_signal(signal.SIGINT)  # the handler runs here, inside __del__

            Finalized()


def test_ctrl_c_that_a_finalizer_swallows_still_stops_training_at_the_next_step(assets, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: None)  # the drop's "Exception ignored" report
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, as a script starts with
    try:
        trainer = PaKATrainer(args=run_config(assets, tmp_path, max_steps=6, save_steps=100))
        trainer.add_callback(InterruptInAFinalizer(step=2))
        with pytest.raises(KeyboardInterrupt):
            trainer.train()
        assert trainer.state.global_step == 2  # stopped before step 3, not after the sixth
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the guard's handler is gone
    finally:
        signal.signal(signal.SIGINT, previous)


def test_config_errors_say_what_to_change(assets, tmp_path):
    with pytest.raises(ValueError, match=r"min_intersection must be in \[0, 1\]"):
        run_config(assets, tmp_path, min_intersection=1.2)
    with pytest.raises(ValueError, match="fraction of the teacher kept"):
        run_config(assets, tmp_path, teacher_momentum=1.5)
    with pytest.raises(ValueError, match="loss must be one of"):
        run_config(assets, tmp_path, loss="mse")
    with pytest.raises(ValueError, match=r"view_rendering must be one of \('cpu', 'device'\)"):
        run_config(assets, tmp_path, view_rendering="gpu")
    with pytest.raises(ValueError, match="set max_steps, or dataset_num_images"):
        run_config(assets, tmp_path, max_steps=-1)
    derived = run_config(assets, tmp_path, max_steps=-1, dataset_num_images=100, num_train_epochs=3)
    assert derived.max_steps == 150  # ceil(3 * 100 / 2)
    with pytest.raises(ValueError, match="local_size=30 is not a multiple of the model's patch size 14"):
        PaKATrainer(args=run_config(assets, tmp_path, local_size=30))
    with pytest.raises(ValueError, match="remove_unused_columns must be False"):
        run_config(assets, tmp_path, remove_unused_columns=True)


def load_train_script():
    from paka_hf.commands import train

    return train


def test_yaml_config_with_command_line_overrides(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text(
        "model_name_or_path: some/model\nmax_steps: 10\nglobal_scale: [0.3, 0.9]\nflip: true\nuse_cpu: true\n"
        f"output_dir: {tmp_path / 'out'}\n"
    )
    config = load_train_script().parse_config(
        ["--config", str(config_file), "--max_steps", "20", "--min_intersection", "0.5"]
    )
    assert config.model_name_or_path == "some/model"
    assert config.max_steps == 20 and config.min_intersection == 0.5
    assert config.global_scale == [0.3, 0.9] and config.flip is True
    assert config.learning_rate == 1e-5 and config.teacher_momentum == 0.9995  # paper defaults
    with pytest.raises(ConfigError, match="unknown option --no_such_field"):
        load_train_script().parse_config(["--config", str(config_file), "--no_such_field", "1"])


@pytest.mark.parametrize("name", ["dinov2r_s14_coco.yaml", "dinov2r_b14_coco.yaml", "demo.yaml"])
def test_shipped_configs_parse(name):
    config = load_train_script().parse_config(["--config", str(REPO_ROOT / "configs" / name), "--use_cpu", "true"])
    assert config.max_steps > 0


# transformers >= 5.20 names it activation_checkpointing (the old name warns); older versions know only gradient_checkpointing
CHECKPOINTING_FIELD = next(
    name
    for name in ("activation_checkpointing", "gradient_checkpointing")
    if name in {f.name for f in fields(PaKAConfig)}
)


def test_checkpointing_flag_under_either_name_reaches_the_installed_field(tmp_path):
    train = load_train_script()
    # both directions of the rename (the installed transformers exercises one of them below)
    assert train.to_installed_names(
        ["--gradient_checkpointing", "true", "--max_steps=3"], {"activation_checkpointing"}
    ) == ["--activation_checkpointing", "true", "--max_steps=3"]
    assert train.to_installed_names(
        ["--activation_checkpointing=true", "--gradient_checkpointing_kwargs", "{}"],
        {"gradient_checkpointing", "gradient_checkpointing_kwargs"},
    ) == ["--gradient_checkpointing=true", "--gradient_checkpointing_kwargs", "{}"]
    for name in ("gradient_checkpointing", "activation_checkpointing"):
        config_file = tmp_path / f"{name}.yaml"
        config_file.write_text(
            f"model_name_or_path: some/model\nmax_steps: 3\nuse_cpu: true\n{name}: true\n"
            f"output_dir: {tmp_path / 'out'}\n"
        )
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)  # the deprecated name is not passed on
            from_yaml = train.parse_config(["--config", str(config_file)])
            from_flag = train.parse_config(["--config", str(config_file), f"--{name}", "false"])
        assert getattr(from_yaml, CHECKPOINTING_FIELD) is True
        assert getattr(from_flag, CHECKPOINTING_FIELD) is False


def test_gradient_checkpointing_through_the_trainer(assets, tmp_path):
    trainer = PaKATrainer(
        args=run_config(assets, tmp_path, max_steps=2, save_steps=100, **{CHECKPOINTING_FIELD: True})
    )
    trainer.train()
    hf_model = trainer.model.student.model
    assert getattr(
        hf_model,
        "is_activation_checkpointing" if CHECKPOINTING_FIELD.startswith("activation") else "is_gradient_checkpointing",
    )
    assert trainer.state.global_step == 2


def test_an_fsdp_request_paka_does_not_honour_stops_the_trainer_before_anything_is_sharded(
    assets, tmp_path, monkeypatch
):
    """The trainer reads the FSDP request as it is built (paka_hf.training.fsdp): FSDP1 is refused there, in one
    line, before a process group or a mesh exists."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ConfigError, match="FSDP version 1 is not supported"):
        PaKATrainer(args=run_config(assets, tmp_path))
    assert not torch.distributed.is_initialized()


@pytest.mark.slow  # torch.compile: Inductor builds its kernels in compiler subprocesses (10-25 s of CPU)
def test_torch_compile_through_the_trainer_gives_the_eager_run(assets, tmp_path):
    """``torch_compile: true`` (Trainer compiles the whole PaKAModel through accelerate) trains to the eager
    run's losses, and the EMA, checkpoints and export see the plain module's parameter names. aot_eager:
    dynamo + AOTAutograd without code generation, which on this CPU would take minutes."""
    if not torch._dynamo.is_dynamo_supported():
        pytest.skip("torch.compile is not supported on this Python/platform")

    def losses(output_dir, **compile_args):
        torch._dynamo.reset()
        try:
            trainer = PaKATrainer(
                args=run_config(assets, output_dir, max_steps=3, logging_steps=1, save_steps=3, **compile_args)
            )
            trainer.train()
        finally:
            torch._dynamo.reset()
        return trainer, [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]

    eager, eager_losses = losses(tmp_path / "eager")
    compiled, compiled_losses = losses(tmp_path / "compiled", torch_compile=True, torch_compile_backend="aot_eager")
    assert type(compiled.model_wrapped).__name__ == "OptimizedModule"  # it did compile
    assert len(compiled_losses) == len(eager_losses) == 3
    assert compiled_losses == pytest.approx(eager_losses, abs=1e-5)
    student_compiled, teacher_compiled = states(compiled)
    student_eager, teacher_eager = states(eager)
    assert student_compiled.keys() == student_eager.keys()
    for name in teacher_eager:  # the EMA ran on the same parameters
        torch.testing.assert_close(teacher_compiled[name], teacher_eager[name], rtol=1e-4, atol=1e-5)
    from safetensors.torch import load_file

    checkpoint = load_file(tmp_path / "compiled" / "checkpoint-3" / "model.safetensors")
    assert checkpoint.keys() == load_file(tmp_path / "eager" / "checkpoint-3" / "model.safetensors").keys()
    exported = AutoModel.from_pretrained(compiled.export_backbone(tmp_path / "export"))  # a plain checkpoint
    torch.testing.assert_close(exported.state_dict(), compiled.model.student.model.state_dict())


# ---- checkpoints, resume, summary and secrets (docs/RELIABILITY.md) -------------------------------------


def checkpoint_names(output):
    return [p.name for p in complete_checkpoints(output)]


def test_a_fresh_run_never_mixes_with_the_checkpoints_of_an_earlier_one(assets, tmp_path):
    """Without --resume_from_checkpoint, checkpoints in output_dir stop the run at start-up with both ways on;
    --overwrite_output_dir removes those checkpoints and nothing else, and rotation keeps the new saves."""
    output = tmp_path / "run"
    PaKATrainer(args=run_config(assets, output, max_steps=4, save_steps=2)).train()
    assert checkpoint_names(output) == ["checkpoint-2", "checkpoint-4"]
    (output / "notes.txt").write_text("mine")

    again = PaKATrainer(args=run_config(assets, output, max_steps=2, save_steps=1, save_total_limit=2))
    with pytest.raises(
        ConfigError,
        match=r"already holds checkpoints.*checkpoint-2, checkpoint-4.*"
        r"--resume_from_checkpoint latest.*--overwrite_output_dir",
    ):
        again.train()
    assert checkpoint_names(output) == ["checkpoint-2", "checkpoint-4"]  # nothing touched

    fresh = PaKATrainer(
        args=run_config(assets, output, max_steps=2, save_steps=1, save_total_limit=2, overwrite_output_dir=True)
    )
    fresh.train()
    # before: the old checkpoint-4 outranked every new save, so rotation deleted checkpoint-1 as soon as written
    assert checkpoint_names(output) == ["checkpoint-1", "checkpoint-2"]
    assert json.loads((output / "checkpoint-2" / "trainer_state.json").read_text())["max_steps"] == 2  # the new run's
    assert (output / "notes.txt").read_text() == "mine"
    both = PaKATrainer(args=run_config(assets, output, overwrite_output_dir=True))
    with pytest.raises(
        ConfigError, match="--overwrite_output_dir would remove .*checkpoint-2, the checkpoint to resume"
    ):
        both.train(resume_from_checkpoint="latest")
    assert checkpoint_names(output) == ["checkpoint-1", "checkpoint-2"]


def test_resuming_from_an_older_checkpoint_removes_the_later_ones_and_keeps_every_new_save(assets, tmp_path, caplog):
    output = tmp_path / "run"
    PaKATrainer(args=run_config(assets, output, max_steps=6, save_steps=1, save_total_limit=None)).train()
    assert checkpoint_names(output) == [f"checkpoint-{step}" for step in range(1, 7)]

    resumed = PaKATrainer(
        args=run_config(assets, output, max_steps=6, save_steps=1, save_total_limit=2), callbacks=[StopAt(4)]
    )
    with caplog.at_level("WARNING", logger="paka_hf.training.trainer"):
        resumed.train(resume_from_checkpoint=str(output / "checkpoint-2"))
    assert (
        "removing the later checkpoints of the run it continues: checkpoint-3, checkpoint-4, checkpoint-5, "
        "checkpoint-6" in caplog.text
    )
    # before: rotation by step number kept the other run's checkpoint-5 and -6 and deleted each new save
    assert checkpoint_names(output) == ["checkpoint-3", "checkpoint-4"]
    assert PaKATrainer(args=run_config(assets, output)).resolve_checkpoint("latest").endswith("checkpoint-4")


def test_a_crash_while_rewriting_a_complete_checkpoint_leaves_it_unmarked(assets, tmp_path, monkeypatch):
    """The marker goes before any file is rewritten, and comes back only after every file is written and fsynced."""
    import paka_hf.training.trainer as trainer_module

    output = tmp_path / "run"
    trainer = PaKATrainer(args=run_config(assets, output, max_steps=4, save_steps=2))
    trainer.train()
    assert checkpoint_names(output) == ["checkpoint-2", "checkpoint-4"]

    def crash(output_dir):
        raise RuntimeError("power cut")

    with monkeypatch.context() as patched:
        patched.setattr(trainer, "_save_rng_state", crash)  # weights and optimizer rewritten, RNG state not
        with pytest.raises(RuntimeError, match="power cut"):
            trainer._save_checkpoint(trainer.model, None)  # global_step is 4: into the complete checkpoint-4
    assert (output / "checkpoint-4" / "model.safetensors").is_file()
    assert not (output / "checkpoint-4" / CHECKPOINT_MARKER).exists()  # before: still marked, with mixed files
    assert checkpoint_names(output) == ["checkpoint-2"]
    assert trainer.resolve_checkpoint("latest").endswith("checkpoint-2")

    synced = []  # what each fsync of the folder saw
    fsync_tree = trainer_module.fsync_tree
    monkeypatch.setattr(
        trainer_module,
        "fsync_tree",
        lambda folder: (synced.append(sorted(p.name for p in folder.iterdir())), fsync_tree(folder)),
    )
    trainer._save_checkpoint(trainer.model, None)  # the same save, uninterrupted
    assert checkpoint_names(output) == ["checkpoint-2", "checkpoint-4"]
    assert CHECKPOINT_MARKER not in synced[-1]  # the fsync came before the marker ...
    assert {
        "model.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
        "trainer_state.json",
        "paka_stream_rank0.json",
        "training_config.yaml",
        "training_summary.json",
    } <= set(synced[-1])  # ... of all


def test_summary_adds_up_across_resumes_and_config_is_written_with_its_weights(assets, tmp_path, monkeypatch):
    import paka_hf.training.trainer as trainer_module

    images = tmp_path / "images"
    shutil.copytree(assets / "images", images)
    for i in range(3):
        (images / f"00b{i}.jpg").write_bytes(b"not a jpeg at all")  # among the first rows read
    kwargs = dict(dataset_name=str(images))
    straight = PaKATrainer(args=run_config(assets, tmp_path / "a", **kwargs))
    straight.train()
    expected = json.loads((straight.export_backbone(tmp_path / "a") / "training_summary.json").read_text())
    assert expected["images_seen"] == 12 and expected["images_skipped"] > 0

    output = tmp_path / "b"
    PaKATrainer(args=run_config(assets, output, **kwargs), callbacks=[StopAt(3)]).train()
    assert not (output / "training_config.yaml").exists()  # no configuration without its weights
    first = json.loads((output / "checkpoint-3" / "training_summary.json").read_text())
    assert first["global_step"] == 3 and first["images_seen"] == 6
    assert yaml.safe_load((output / "checkpoint-3" / "training_config.yaml").read_text())["max_steps"] == 6
    resumed = PaKATrainer(args=run_config(assets, output, **kwargs))
    resumed.train(resume_from_checkpoint="latest")
    summary = json.loads((resumed.export_backbone() / "training_summary.json").read_text())
    # before: images_seen counted only the resumed session (6) and runtime restarted at zero
    assert summary["images_seen"] == expected["images_seen"] == 12
    assert summary["images_skipped"] == expected["images_skipped"]
    assert summary["train_runtime_s"] >= first["train_runtime_s"]
    assert (output / "training_config.yaml").is_file()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trainer_module, "save_backbone", full_disk)
    with pytest.raises(OSError):
        resumed.export_backbone(output)
    # before: the previous export's configuration and summary stayed beside weights they may not describe
    assert not (output / "training_config.yaml").exists() and not (output / "training_summary.json").exists()


def test_pickled_config_holds_no_token(assets, tmp_path):
    config = run_config(assets, tmp_path, hub_token="hf_FakeSecret0123456789")
    assert config.hub_token == "hf_FakeSecret0123456789"  # usable in this process ...
    restored = pickle.loads(pickle.dumps(config))
    assert restored.hub_token is None and restored.max_steps == config.max_steps  # ... never in a pickle
    assert b"hf_FakeSecret" not in pickle.dumps(config)


def test_resume_with_neco_restores_its_reference_queue_bit_exactly(assets, tmp_path):
    kwargs = dict(loss="neco", neco_queue_length=64, neco_queue_per_image=5)
    straight = PaKATrainer(args=run_config(assets, tmp_path / "a", **kwargs))
    straight.train()
    student_a, teacher_a = states(straight)
    queue = ("tokens", "filled", "next_row")
    queue_a = {name: getattr(straight.model.criterion.references, name).clone() for name in queue}
    assert queue_a["filled"].item() == 6 * 2 * 5  # 6 steps of 2 images, not yet full

    first = PaKATrainer(args=run_config(assets, tmp_path / "b", **kwargs), callbacks=[StopAt(3)])
    first.train()
    resumed = PaKATrainer(args=run_config(assets, tmp_path / "b", **kwargs))
    resumed.train(resume_from_checkpoint="latest")
    for name in queue:
        assert torch.equal(queue_a[name], getattr(resumed.model.criterion.references, name)), f"queue {name}"
    student_b, teacher_b = states(resumed)
    for name in student_a:
        assert torch.equal(student_a[name], student_b[name]), f"student {name}"
    for name in teacher_a:
        assert torch.equal(teacher_a[name], teacher_b[name]), f"teacher {name}"


def bad_images(folder: Path) -> dict[str, str]:
    """Unreadable files among the good ones of ``folder`` (names sorted between them), each with its reason."""
    import io

    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 60, 3), dtype=np.uint8)).save(png, format="PNG")
    bomb = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 120, np.uint8)).save(bomb, format="JPEG")
    bomb = bytearray(bomb.getvalue())
    sof = bomb.index(b"\xff\xc0")
    bomb[sof + 5 : sof + 9] = (8000).to_bytes(2, "big") + (12000).to_bytes(2, "big")  # 96 Mpx announced
    files = {
        "01b.jpg": (b"not a jpeg at all", "unknown format"),
        "04e.jpg": (b"", "empty file"),
        "06t.png": (png.getvalue()[:200], "truncated"),
        "09h.jpg": (bytes(bomb), "too many pixels"),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {name: reason for name, (_, reason) in files.items()}


def test_skipped_images_are_named_in_the_log_and_listed_once_across_a_resume(assets, tmp_path, caplog):
    images = tmp_path / "images"
    shutil.copytree(assets / "images", images)
    reasons = bad_images(images)
    # Source order, 20 images over 10 steps of 2: the stream wraps into a second epoch and meets 01b and 04e again.
    kwargs = dict(dataset_name=str(images), shuffle_buffer_size=0, max_steps=10)
    expected = [{"image": str(images / name), "reason": reason} for name, reason in reasons.items()]

    def listed(path):
        return [{key: record[key] for key in ("image", "reason")} for record in map(json.loads, path.open())]

    def warnings_naming(name):
        return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and f"{name} (" in r.getMessage()]

    with caplog.at_level("WARNING", logger="paka_hf.training.trainer"):
        PaKATrainer(args=run_config(assets, tmp_path / "a", **kwargs)).train()
    straight = (tmp_path / "a" / "skipped_images.jsonl").read_text()
    # each image once, though 01b was skipped in both epochs
    assert listed(tmp_path / "a" / "skipped_images.jsonl") == expected
    for name, reason in reasons.items():
        (message,) = warnings_naming(name)  # named in one warning line, when first skipped
        assert f"{images / name} ({reason})" in message
        assert message.startswith("skipped ") and str(tmp_path / "a" / "skipped_images.jsonl") in message
    assert "96,000,000 pixels" in json.loads(straight.splitlines()[3])["detail"]

    output = tmp_path / "b"
    PaKATrainer(args=run_config(assets, output, **kwargs), callbacks=[StopAt(5)]).train()
    assert listed(output / "checkpoint-3" / "skipped_images.jsonl") == expected[:2]
    assert listed(output / "skipped_images.jsonl") == expected[:3]  # 06t was skipped after checkpoint-3
    caplog.clear()
    with caplog.at_level("WARNING", logger="paka_hf.training.trainer"):
        PaKATrainer(args=run_config(assets, output, **kwargs)).train(resume_from_checkpoint="latest")
    assert (output / "skipped_images.jsonl").read_text() == straight  # 06t, skipped again, is listed once
    assert not warnings_naming("01b.jpg") and len(warnings_naming("06t.png")) == 1

    fresh = run_config(assets, output, overwrite_output_dir=True, dataset_name=str(assets / "images"))
    PaKATrainer(args=fresh).train()
    assert not (output / "skipped_images.jsonl").exists()  # a new run's list: none of an earlier run's images


def test_epoch_after_a_resume_equals_the_uninterrupted_runs(assets, tmp_path):
    straight = PaKATrainer(args=run_config(assets, tmp_path / "a"))
    metrics_a = straight.train().metrics
    PaKATrainer(args=run_config(assets, tmp_path / "b"), callbacks=[StopAt(3)]).train()
    resumed = PaKATrainer(args=run_config(assets, tmp_path / "b"))
    metrics_b = resumed.train(resume_from_checkpoint="latest").metrics
    assert metrics_a["epoch"] == metrics_b["epoch"] == straight.state.epoch == resumed.state.epoch == 1.0
    epochs_a = [entry["epoch"] for entry in straight.state.log_history]
    epochs_b = [entry["epoch"] for entry in resumed.state.log_history]
    assert epochs_b == epochs_a == [1 / 3, 2 / 3, 1.0, 1.0]  # logged at steps 2, 4, 6 and the final metrics
    saved = [json.loads((tmp_path / run / "checkpoint-6" / "trainer_state.json").read_text()) for run in "ab"]
    assert saved[0]["epoch"] == saved[1]["epoch"] == 1.0


def test_pushing_an_unfinished_runs_folder_says_where_its_configuration_is(assets, tmp_path):
    from paka_hf.hub.push import collect_upload_files
    from paka_hf.utils.errors import MissingPathError

    PaKATrainer(args=run_config(assets, tmp_path), callbacks=[StopAt(3)]).train()
    assert (tmp_path / "checkpoint-3" / "training_config.yaml").is_file()
    with pytest.raises(
        MissingPathError,
        match="training_config.yaml is written with the exported weights when "
        "training ends .* only in its checkpoint-N folders",
    ):
        collect_upload_files(tmp_path)


def test_every_run_logs_and_records_its_trainable_and_total_parameters(assets, tmp_path, caplog):
    """As peft's print_trainable_parameters: the student and its head; full post-training trains all but the frozen
    mask token, LoRA only the adapters and the head. The teacher (no optimizer sees it) is not counted."""
    pytest.importorskip("peft")
    counts = {}
    for name, extra in (("full", {}), ("lora", dict(use_lora=True, lora_rank=4))):
        with caplog.at_level(logging.INFO, logger="paka_hf.training.trainer"):
            trainer = PaKATrainer(args=run_config(assets, tmp_path / name, max_steps=1, **extra))
        model = trainer.model
        head = sum(p.numel() for p in model.student_head.parameters())
        mask = model.student.model.embeddings.mask_token.numel()
        backbone = sum(p.numel() for p in model.student.parameters())
        trainer.train()
        summary = json.loads((trainer.export_backbone() / "training_summary.json").read_text())
        counts[name] = (summary["trainable_parameters"], summary["total_parameters"])
        assert counts[name][1] == backbone + head
        total = f"{backbone + head:,}"
        assert any(f"trainable parameters: {counts[name][0]:,} of {total}" in r.getMessage() for r in caplog.records)
        if name == "full":
            assert counts[name][0] == backbone + head - mask
        else:
            adapters = sum(p.numel() for n, p in model.student.named_parameters() if ".lora_" in n)
            assert counts[name][0] == adapters + head
    assert counts["lora"][0] < counts["full"][0] and counts["lora"][1] > counts["full"][1]  # adapters add weights
