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
