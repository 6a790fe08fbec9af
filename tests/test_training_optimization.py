"""paka_hf.training.optimization: the one cosine schedule and the one weight-decay rule."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from paka_hf.modeling.backbones import PatchBackbone, ProjectionHead
from paka_hf.modeling.model import PaKAModel
from paka_hf.testing import tiny_dinov2_config
from paka_hf.training.optimization import SCHEDULED_DECAY_KEY, decay_groups, optimizer_groups
from paka_hf.utils.schedules import cosine_schedule


@pytest.mark.parametrize(("start", "end"), [(0.04, 0.5), (0.9995, 1.0), (1.0, 0.0)])
def test_cosine_schedule_runs_from_start_to_end_through_the_midpoint(start, end):
    assert cosine_schedule(start, end, 0, 100) == pytest.approx(start)
    assert cosine_schedule(start, end, 50, 100) == pytest.approx((start + end) / 2)
    assert cosine_schedule(start, end, 100, 100) == pytest.approx(end)
    assert cosine_schedule(start, end, 25, 100) == pytest.approx(end + (start - end) * (1 + math.cos(math.pi / 4)) / 2)
    values = [cosine_schedule(start, end, k, 100) for k in range(101)]
    assert all((b - a) * (end - start) >= 0 for a, b in itertools.pairwise(values))  # monotone towards end
    # clamped outside [0, K]
    assert cosine_schedule(start, end, -5, 100) == pytest.approx(start)
    assert cosine_schedule(start, end, 150, 100) == pytest.approx(end)


def test_cosine_schedule_needs_steps():
    with pytest.raises(ValueError, match="total_steps must be positive"):
        cosine_schedule(0.0, 1.0, 0, 0)


def test_teacher_momentum_and_weight_decay_use_the_one_schedule():
    from paka_hf.modeling.teacher import teacher_momentum_at

    for step in (0, 13, 50, 99, 100):
        assert teacher_momentum_at(step, 100, 0.99, 1.0) == cosine_schedule(0.99, 1.0, step, 100)


def test_decay_groups_leave_biases_and_one_dimensional_parameters_undecayed():
    module = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    module.register_parameter("scale", nn.Parameter(torch.ones(8)))  # a layer scale: 1-D
    module.register_parameter("token", nn.Parameter(torch.zeros(1, 1, 8)))  # a class token: 3-D, decayed
    module[2].weight.requires_grad_(False)  # frozen parameters belong to no group
    decay, no_decay = decay_groups(module, lr=1e-3, weight_decay=0.04, name="net")
    assert (decay["name"], decay["weight_decay"], decay[SCHEDULED_DECAY_KEY]) == ("net/decay", 0.04, True)
    assert (no_decay["name"], no_decay["weight_decay"], no_decay[SCHEDULED_DECAY_KEY]) == ("net/no_decay", 0.0, False)
    assert decay["lr"] == no_decay["lr"] == 1e-3
    names = {id(p): n for n, p in module.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == ["0.weight", "token"]
    assert sorted(names[id(p)] for p in no_decay["params"]) == ["0.bias", "1.bias", "1.weight", "2.bias", "scale"]


def test_decay_groups_drop_an_empty_group():
    (only,) = decay_groups(nn.LayerNorm(4), lr=1.0, weight_decay=0.1, name="norm")
    assert only["name"] == "norm/no_decay"


def test_optimizer_groups_of_a_paka_model():
    torch.manual_seed(0)
    backbone = PatchBackbone.from_config(tiny_dinov2_config(registers=2))
    model = PaKAModel(backbone, ProjectionHead(backbone.hidden_size, 16, 8))
    groups = {g["name"]: g for g in optimizer_groups(model, 1e-5, 1e-4, 0.04)}
    assert set(groups) == {"student/decay", "student/no_decay", "student_head/decay", "student_head/no_decay"}
    assert groups["student/decay"]["lr"] == 1e-5 and groups["student_head/no_decay"]["lr"] == 1e-4
    grouped = [id(p) for g in groups.values() for p in g["params"]]
    trainable = [p for p in [*model.student.parameters(), *model.student_head.parameters()] if p.requires_grad]
    assert sorted(grouped) == sorted(id(p) for p in trainable)  # each trainable parameter once; no teacher
    assert all(p.ndim >= 2 for g in groups.values() if g[SCHEDULED_DECAY_KEY] for p in g["params"])
    without_head = PaKAModel(backbone)
    assert {g["name"] for g in optimizer_groups(without_head, 1e-5, 1e-4, 0.04)} == {
        "student/decay",
        "student/no_decay",
    }


def test_lora_groups_take_the_adapters_learning_rate_and_weight_decay_and_the_rest_the_backbones():
    pytest.importorskip("peft")
    from paka_hf.modeling.lora import LoRASettings, add_lora, is_adapter_parameter

    torch.manual_seed(0)
    backbone = PatchBackbone.from_config(tiny_dinov2_config(registers=2, layers=3))
    add_lora(backbone, LoRASettings(rank=4, variant="dora", unfrozen_blocks=1, train_norms=True))
    model = PaKAModel(backbone, ProjectionHead(backbone.hidden_size, 16, 8))
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {
        g["name"]: g
        for g in optimizer_groups(model, 1e-5, 1e-4, 0.04, lora_learning_rate=3e-4, lora_weight_decay=0.01)
    }
    assert list(groups) == [
        "student/decay",
        "student/no_decay",
        "student_lora/decay",
        "student_lora/no_decay",
        "student_head/decay",
        "student_head/no_decay",
    ]
    lr_decay = {name: (g["lr"], g["weight_decay"], g[SCHEDULED_DECAY_KEY]) for name, g in groups.items()}
    assert lr_decay == {
        "student/decay": (1e-5, 0.04, True),  # the unfrozen block's matrices: backbone lr, on the schedule
        "student/no_decay": (1e-5, 0.0, False),  # its biases, every trained norm and layer scale
        "student_lora/decay": (3e-4, 0.01, False),  # lora_A, lora_B: their own lr and constant decay
        "student_lora/no_decay": (3e-4, 0.0, False),  # DoRA's magnitudes (1-D)
        "student_head/decay": (1e-4, 0.04, True),
        "student_head/no_decay": (1e-4, 0.0, False),
    }

    def members(group: str) -> set[str]:
        return {names[id(p)] for p in groups[group]["params"]}

    prefix = "student.model.encoder.layer."
    assert members("student/decay") == {
        f"{prefix}2.{part}.weight"
        for part in (
            "attention.q_proj",
            "attention.k_proj",
            "attention.v_proj",
            "attention.o_proj",
            "mlp.fc1",
            "mlp.fc2",
        )
    }
    no_decay = members("student/no_decay")
    assert f"{prefix}0.norm1.weight" in no_decay and f"{prefix}1.layer_scale2.lambda1" in no_decay
    assert f"{prefix}2.mlp.fc1.bias" in no_decay and f"{prefix}2.norm2.bias" in no_decay
    assert not any(is_adapter_parameter(name) for name in no_decay | members("student/decay"))
    assert all(".lora_A." in n or ".lora_B." in n for n in members("student_lora/decay"))
    assert members("student_lora/no_decay") and all(
        ".lora_magnitude_vector." in n for n in members("student_lora/no_decay")
    )
    grouped = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters() if p.requires_grad)  # each once
    # unset, the adapters follow the backbone's learning rate and the weight-decay schedule
    default = {g["name"]: g for g in optimizer_groups(model, 1e-5, 1e-4, 0.04)}
    assert (default["student_lora/decay"]["lr"], default["student_lora/decay"]["weight_decay"]) == (1e-5, 0.04)
    assert default["student_lora/decay"][SCHEDULED_DECAY_KEY] is True


def test_the_weight_decay_schedule_leaves_a_constant_lora_weight_decay_alone():
    from types import SimpleNamespace

    from paka_hf.training.trainer import WeightDecayScheduleCallback

    optimizer = SimpleNamespace(
        param_groups=[
            {"name": "student/decay", SCHEDULED_DECAY_KEY: True, "weight_decay": 0.04},
            {"name": "student_lora/decay", SCHEDULED_DECAY_KEY: False, "weight_decay": 0.01},
        ]
    )
    args = SimpleNamespace(weight_decay=0.04, weight_decay_end=0.5)
    WeightDecayScheduleCallback().on_step_begin(args, SimpleNamespace(global_step=50, max_steps=100), None, optimizer)
    assert optimizer.param_groups[0]["weight_decay"] == pytest.approx(0.27)
    assert optimizer.param_groups[1]["weight_decay"] == 0.01
