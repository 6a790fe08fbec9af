"""The loss registry (paka_hf.losses.registry) and PaKALoss, the configured loss as a module."""

from dataclasses import fields

import pytest
import torch

from paka_hf.losses import (
    LOSSES,
    REGISTRY,
    NeCoSettings,
    PaKALoss,
    cka_loss,
    cosine_distillation_loss,
    gram_loss,
    neco_loss,
    sample_references,
)
from paka_hf.training.config import PaKAConfig


def aligned(seed=0, pairs=3, tokens=9, dim=8):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(pairs, tokens, dim, generator=g)
    teacher = torch.randn(pairs, tokens, dim, generator=g)
    mask = torch.rand(pairs, tokens, generator=g) < 0.3
    return student, teacher, mask


def neco_directly(student, teacher, mask):
    """NeCo without a queue: references drawn from the batch's valid teacher tokens, from the global RNG."""
    references = sample_references(teacher.flatten(0, 1)[~mask.flatten()], *teacher.shape[:2])
    return neco_loss(student, teacher, references, mask, student_steepness=7.0, teacher_steepness=30.0)


#: Each registered loss called directly, with the settings the criterion below is built with.
DIRECT = {
    "cka": lambda s, t, m: cka_loss(s, t, m, kernel="rbf", scope="batch"),
    "gram": lambda s, t, m: gram_loss(s, t, m, kernel="rbf", scope="batch"),
    "cosine": lambda s, t, m: cosine_distillation_loss(s, t, m),
    "neco": neco_directly,
}


def criterion(name):
    if name in ("cka", "gram"):
        return PaKALoss(name, kernel="rbf", scope="batch")
    if name == "neco":
        return PaKALoss(name, neco=NeCoSettings(student_steepness=7.0, teacher_steepness=30.0, queue_length=0))
    return PaKALoss(name)


def test_the_registry_is_the_configs_loss_choices(tmp_path):
    assert LOSSES == tuple(REGISTRY) == ("cka", "gram", "cosine", "neco")
    loss_field = next(spec for spec in fields(PaKAConfig) if spec.name == "loss")
    assert loss_field.metadata["choices"] == LOSSES
    for name in LOSSES:
        assert PaKAConfig(output_dir=str(tmp_path), max_steps=1, loss=name).loss == name
    with pytest.raises(ValueError, match="loss must be one of"):
        PaKAConfig(output_dir=str(tmp_path), max_steps=1, loss="mse")


def test_every_registered_loss_has_a_direct_call_here():
    assert set(DIRECT) == set(REGISTRY)


@pytest.mark.parametrize("name", LOSSES)
def test_through_pakaloss_equals_the_function_called_directly(name):
    student, teacher, mask = aligned()
    torch.manual_seed(0)
    through = criterion(name)(student, teacher, mask)
    torch.manual_seed(0)
    direct = DIRECT[name](student, teacher, mask)
    assert through.dtype == torch.float32 and torch.isfinite(through)
    assert torch.equal(through, direct)


@pytest.mark.parametrize("name", LOSSES)
def test_every_registered_loss_detaches_the_teacher_and_gives_a_differentiable_zero_with_no_valid_token(name):
    student, teacher, _ = aligned(seed=1)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    loss_module = criterion(name)
    loss_module(student, teacher).backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0
    nothing = torch.ones(teacher.shape[:2], dtype=torch.bool)
    zero = loss_module(student, teacher, nothing)
    assert zero.item() == 0.0 and zero.requires_grad
    (grad,) = torch.autograd.grad(zero, student)
    assert torch.equal(grad, torch.zeros_like(student))


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="loss must be one of"):
        PaKALoss("mse")
    with pytest.raises(ValueError, match="kernel must be one of"):
        PaKALoss("cka", kernel="cosine")
    with pytest.raises(ValueError, match="feature_dim"):
        PaKALoss("neco", neco=NeCoSettings(queue_length=8))
