import math

import pytest
import torch
from torch import nn

from paka_hf.modeling.teacher import DEFAULT_TEACHER_MOMENTUM, ema_update_, make_teacher, teacher_momentum_at


def two_nets():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    teacher = make_teacher(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
        student[1].running_mean.fill_(3.0)
    return student, teacher


def test_make_teacher_is_a_frozen_eval_copy():
    student = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    teacher = make_teacher(student)
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(teacher.parameters(), student.parameters()))


def test_fraction_one_keeps_the_teacher_and_zero_copies_the_student():
    student, teacher = two_nets()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update_(teacher, student, teacher_momentum=1.0)
    for name, p in teacher.named_parameters():
        assert torch.equal(p, before[name])
    ema_update_(teacher, student, teacher_momentum=0.0)
    for (name, p), q in zip(teacher.named_parameters(), student.parameters()):
        assert torch.equal(p, q), name
    assert torch.equal(teacher[1].running_mean, student[1].running_mean)


def test_intermediate_fraction_is_the_share_of_the_teacher_kept():
    student, teacher = two_nets()
    before = [p.clone() for p in teacher.parameters()]
    ema_update_(teacher, student, teacher_momentum=0.75)
    for old, new, s in zip(before, teacher.parameters(), student.parameters()):
        assert torch.allclose(new, 0.75 * old + 0.25 * s, atol=1e-6)


def test_schedule_runs_cosine_from_base_to_one():
    assert DEFAULT_TEACHER_MOMENTUM == 0.9995  # the paper's starting momentum
    assert teacher_momentum_at(0, 100) == DEFAULT_TEACHER_MOMENTUM
    assert teacher_momentum_at(50, 100) == pytest.approx(1 - 0.0005 / 2)
    assert teacher_momentum_at(0, 100, start=0.9995) == pytest.approx(0.9995)
    assert teacher_momentum_at(100, 100, start=0.9995) == 1.0
    assert teacher_momentum_at(50, 100, start=0.99) == pytest.approx(0.995)
    values = [teacher_momentum_at(k, 100, start=0.99) for k in range(101)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert teacher_momentum_at(25, 100, start=0.9) == pytest.approx(1 - 0.1 * (1 + math.cos(math.pi / 4)) / 2)


def test_errors():
    student, teacher = two_nets()
    with pytest.raises(
        ValueError,
        match=r"teacher_momentum is the fraction of the teacher kept .* in \[0, 1\], got 1.5 \(the paper starts at 0.9995\)",
    ):
        ema_update_(teacher, student, 1.5)
    with pytest.raises(ValueError, match=r"start is the fraction of the teacher kept .* in \[0, 1\], got -0.1"):
        teacher_momentum_at(0, 10, start=-0.1)
    with pytest.raises(ValueError, match="parameters differ"):
        ema_update_(nn.Linear(2, 2), student, 0.5)
    with pytest.raises(ValueError, match="total_steps"):
        teacher_momentum_at(0, 0)
