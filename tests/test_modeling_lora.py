"""LoRA post-training (paka_hf.modeling.lora): shared-base teacher, merged + adapter export, resume, errors."""

import json
import sys

import pytest
import torch
from transformers import AutoModel

pytest.importorskip("peft")
import test_training_trainer as test_trainer  # noqa: E402
from peft import PeftModel  # noqa: E402
from test_training_trainer import run_config, states  # noqa: E402

from paka_hf.testing import StopAt, tiny_dinov2_config  # noqa: E402

assets = test_trainer.assets  # the tiny model and images of the trainer's tests (a module-scoped fixture)

from paka_hf import PaKATrainer  # noqa: E402
from paka_hf.hub import collect_upload_files, render_model_card  # noqa: E402
from paka_hf.modeling.backbones import PatchBackbone  # noqa: E402
from paka_hf.modeling.lora import LoRASettings, LoRATeacher, adapter_parameters, add_lora, base_parameters  # noqa: E402
from paka_hf.modeling.model import PaKAModel  # noqa: E402
from paka_hf.utils.errors import ConfigError  # noqa: E402

LORA = dict(use_lora=True, lora_rank=4, lora_alpha=8.0, learning_rate=1e-2)


def tiny_backbone(registers: int = 0, layers: int = 2) -> PatchBackbone:
    torch.manual_seed(0)
    return PatchBackbone.from_config(tiny_dinov2_config(registers=registers, layers=layers))


def test_only_adapters_train_and_the_teacher_shares_the_base_weights(assets, tmp_path):
    trainer = PaKATrainer(args=run_config(assets, tmp_path, max_steps=1, save_steps=100, use_head=False, **LORA))
    model = trainer.model
    assert isinstance(model.teacher, LoRATeacher)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    adapters = adapter_parameters(model.student)
    assert trainable == {f"student.{name}" for name in adapters}
    # 2 blocks × 6 projections (q, k, v, o, fc1, fc2), each with lora_A and lora_B
    assert len(adapters) == 2 * 6 * 2
    # The teacher holds copies of the adapters only: no tensor of the base is stored twice.
    student_ptrs = {p.data_ptr() for p in model.student.parameters()}
    teacher_tensors = list(model.teacher.parameters())
    assert len(teacher_tensors) == len(adapters)
    assert not student_ptrs & {p.data_ptr() for p in teacher_tensors}
    stored = sum(p.numel() for p in model.parameters())  # named once each
    full_pair = 2 * sum(p.numel() for p in base_parameters(model.student).values())
    assert stored < 0.6 * full_pair
    # the state dict names every base tensor once (the checkpoint is strict-loaded)
    keys = list(model.state_dict())
    assert sum(k.endswith("q_proj.base_layer.weight") for k in keys) == 2


def test_adding_lora_warns_nothing():
    """peft 0.21.2 reads transformers' deprecated ``is_gradient_checkpointing`` in get_peft_model: add_lora filters
    that FutureWarning at its call, and nothing else of the setup warns."""
    import warnings

    backbone = tiny_backbone()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        add_lora(backbone, LoRASettings(rank=4, alpha=8.0))
        PaKAModel(backbone)
    assert [str(w.message) for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))] == []
    assert adapter_parameters(backbone)  # the adapters are in


def test_the_teacher_is_the_student_with_the_ema_adapters_in_eval_mode():
    backbone = tiny_backbone()
    add_lora(backbone, LoRASettings(rank=4, alpha=8.0, dropout=0.5))
    model = PaKAModel(backbone)
    model.train()
    with torch.no_grad():
        for param in adapter_parameters(backbone).values():
            param.normal_(std=0.2)
    pixels = torch.randn(2, 3, 56, 42)
    # At build time the teacher's adapters are the student's (B = 0): identical outputs in eval mode.
    with torch.no_grad():
        reference = backbone.eval()(pixels)
    backbone.train()
    assert not torch.equal(model.teacher(pixels), reference)  # it ran B = 0 adapters: the base
    model.update_teacher(0.0)  # m = 0 copies the student's adapters
    assert backbone.training  # the teacher's forward leaves the student's mode as it was
    torch.testing.assert_close(model.teacher(pixels), reference, rtol=0, atol=0)
    assert backbone.training
    # m = 0.5: every teacher adapter tensor is halfway, and only adapter tensors are touched.
    before = {n: p.clone() for n, p in base_parameters(backbone).items()}
    with torch.no_grad():
        for param in adapter_parameters(backbone).values():
            param.add_(1.0)
    old = {name: t.clone() for name, t in model.teacher.trained_state().items()}
    model.update_teacher(0.5)
    for name, tensor in model.teacher.trained_state().items():
        torch.testing.assert_close(tensor, old[name] + 0.5)
    assert all(torch.equal(before[n], p) for n, p in base_parameters(backbone).items())


def test_training_leaves_the_base_bit_identical_and_exports_merged_model_and_adapter(assets, tmp_path):
    trainer = PaKATrainer(args=run_config(assets, tmp_path / "run", max_steps=3, save_steps=100, **LORA))
    base_before = {n: p.clone() for n, p in base_parameters(trainer.model.student).items()}
    adapters_before = {n: p.clone() for n, p in adapter_parameters(trainer.model.student).items()}
    trainer.train()
    student = trainer.model.student
    for name, param in base_parameters(student).items():
        assert torch.equal(param, base_before[name]), name
    assert any(not torch.equal(p, adapters_before[n]) for n, p in adapter_parameters(student).items())
    # and the teacher's adapters moved too, but trail the student's
    name = next(n for n in adapters_before if ".lora_B." in n)
    teacher_b = trainer.model.teacher.trained_state()[name]
    assert not torch.equal(teacher_b, adapters_before[name]) and not torch.equal(teacher_b, student.state_dict()[name])

    out = trainer.export_backbone(tmp_path / "export")
    assert sorted(p.name for p in (out / "adapter").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    merged = AutoModel.from_pretrained(out).eval()  # no peft needed
    assert not any("lora" in n or "base_layer" in n for n, _ in merged.named_parameters())
    pixels = torch.randn(2, 3, 56, 70)
    with torch.no_grad():
        trained = student.eval().model(pixel_values=pixels).last_hidden_state
        torch.testing.assert_close(merged(pixel_values=pixels).last_hidden_state, trained, rtol=0, atol=1e-5)
        base = AutoModel.from_pretrained(assets / "model")
        adapted = PeftModel.from_pretrained(base, str(out), subfolder="adapter").eval()
        torch.testing.assert_close(adapted(pixel_values=pixels).last_hidden_state, trained, rtol=0, atol=1e-5)
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8.0
    assert config["base_model_name_or_path"] == str(assets / "model")
    # the in-memory student is untouched by the export's merge
    for name, param in base_parameters(student).items():
        assert torch.equal(param, base_before[name]), name

    # the teacher's export merges the teacher's adapters
    teacher_out = trainer.export_backbone(tmp_path / "teacher", network="teacher")
    with torch.no_grad():
        expected = trainer.model.teacher(pixels)
        got = PatchBackbone.from_pretrained(teacher_out).eval()(pixels)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)

    # the push takes the adapter with the merged weights; the card shows how to load either
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= set(collect_upload_files(out))
    card = render_model_card(out, "org/dinov2-paka-lora").content
    assert 'PeftModel.from_pretrained(base, "org/dinov2-paka-lora", subfolder="adapter")' in card
    # the base was a local folder that records no Hub id: the card never publishes its path
    assert 'AutoModel.from_pretrained("BASE_MODEL_ID")' in card and str(assets / "model") not in card
    assert "AutoModel.from_pretrained(model_id)" in card


def test_a_full_export_into_a_folder_of_an_earlier_lora_export_removes_its_adapter(assets, tmp_path):
    lora = PaKATrainer(args=run_config(assets, tmp_path / "a", max_steps=1, save_steps=100, **LORA))
    lora.train()
    out = lora.export_backbone(tmp_path / "export")
    assert (out / "adapter").is_dir()
    full = PaKATrainer(args=run_config(assets, tmp_path / "b", max_steps=1, save_steps=100))
    full.train()
    full.export_backbone(out)
    assert not (out / "adapter").exists()
    assert not any(name.startswith("adapter/") for name in collect_upload_files(out))


def test_an_incomplete_adapter_folder_is_never_pushed(assets, tmp_path):
    trainer = PaKATrainer(args=run_config(assets, tmp_path / "run", max_steps=1, save_steps=100, **LORA))
    trainer.train()
    out = trainer.export_backbone(tmp_path / "export")
    (out / "adapter" / "adapter_model.safetensors").unlink()
    with pytest.raises(Exception, match="adapter/adapter_model.safetensors"):
        collect_upload_files(out)


def test_resume_with_lora_is_bit_identical_to_an_uninterrupted_run(assets, tmp_path):
    straight = PaKATrainer(args=run_config(assets, tmp_path / "a", **LORA))
    straight.train()
    student_a, teacher_a = states(straight)
    first = PaKATrainer(args=run_config(assets, tmp_path / "b", **LORA), callbacks=[StopAt(3)])
    first.train()
    resumed = PaKATrainer(args=run_config(assets, tmp_path / "b", **LORA))
    resumed.train(resume_from_checkpoint="latest")
    assert resumed.state.global_step == 6
    student_b, teacher_b = states(resumed)
    assert teacher_a.keys() == teacher_b.keys() and len(teacher_a) == 24
    for name in student_a:
        assert torch.equal(student_a[name], student_b[name]), f"student {name}"
    for name in teacher_a:
        assert torch.equal(teacher_a[name], teacher_b[name]), f"teacher {name}"


def test_activation_checkpointing_with_lora_is_non_reentrant_and_trains_the_adapters(assets, tmp_path):
    trainer = PaKATrainer(
        args=run_config(assets, tmp_path / "run", max_steps=2, save_steps=100, activation_checkpointing=True, **LORA)
    )
    trainer.train()
    layer = trainer.model.student.model.encoder.layer[0]
    assert layer.gradient_checkpointing
    assert layer._gradient_checkpointing_func.keywords["use_reentrant"] is False
    b = layer.attention.q_proj.lora_B.default.weight
    assert b.abs().sum() > 0  # B starts at zero: a gradient reached it through the checkpointed block
    with pytest.raises(ConfigError, match="non-reentrant"):
        PaKATrainer(
            args=run_config(
                assets,
                tmp_path / "bad",
                max_steps=1,
                activation_checkpointing=True,
                activation_checkpointing_kwargs={"use_reentrant": True},
                **LORA,
            )
        ).train()


@pytest.mark.parametrize(
    "targets, message",
    [
        (["query", "key", "value"], r"\['query', 'key', 'value'\] match no linear layer.*'q_proj'"),
        (["fc1", "fc2"], r"wrap no attention projection.*matched: \['fc1', 'fc2'\]"),
    ],
)
def test_targets_that_miss_the_model_stop_at_start_up_naming_what_matched(targets, message):
    with pytest.raises(ConfigError, match=message):
        add_lora(tiny_backbone(), LoRASettings(target_modules=tuple(targets)))


def test_a_target_in_only_some_blocks_stops_at_start_up():
    backbone = tiny_backbone(layers=3)
    # give the first block an extra linear layer that the others lack
    backbone.model.encoder.layer[0].attention.extra_proj = torch.nn.Linear(32, 32)
    with pytest.raises(ConfigError, match=r"only part of the 3 transformer blocks.*extra_proj in 1"):
        add_lora(backbone, LoRASettings(target_modules=("q_proj", "extra_proj")))


def test_use_lora_without_peft_says_how_to_install_it(assets, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'paka_hf\[peft\]'"):
        PaKATrainer(args=run_config(assets, tmp_path, max_steps=1, **LORA))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("lora_rank", 0, "lora_rank must be a positive integer"),
        ("lora_alpha", 0.0, "lora_alpha must be positive"),
        ("lora_dropout", 1.0, r"lora_dropout must be in \[0, 1\)"),
    ],
)
def test_bad_lora_settings_fail_when_the_config_is_built(assets, tmp_path, field, value, message):
    with pytest.raises(ConfigError, match=message):
        run_config(assets, tmp_path, **{**LORA, field: value})
