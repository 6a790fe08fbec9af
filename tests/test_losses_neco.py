"""NeCo's sorting loss (loss: neco): the relaxed bitonic sort, the loss, its reference queue, the model."""

import math

import pytest
import torch

from paka_hf.losses import NeCoSettings, PaKALoss, ReferenceQueue, neco_loss, sample_references
from paka_hf.losses.soft_sort import bitonic_layers, soft_sort
from paka_hf.modeling.backbones import PatchBackbone, ProjectionHead
from paka_hf.modeling.model import PaKAModel
from paka_hf.testing import batch_of_views, tiny_dinov2_config
from paka_hf.utils.errors import ConfigError

# ---- the sort ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 5, 8, 13, 49, 64])
def test_soft_sort_gives_a_doubly_stochastic_matrix_that_maps_inputs_to_the_soft_sorted_row(n):
    torch.manual_seed(n)
    x = torch.randn(64, n)
    values, perm = soft_sort(x, steepness=100.0)
    assert perm.shape == (64, n, n) and (perm >= 0).all()
    torch.testing.assert_close(perm.sum(1), torch.ones(64, n), atol=1e-5, rtol=0)
    torch.testing.assert_close(perm.sum(2), torch.ones(64, n), atol=1e-5, rtol=0)
    torch.testing.assert_close(values, (x[:, None, :] @ perm).squeeze(1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("n", [2, 3, 5, 7, 49, 64])
def test_soft_sort_tends_to_the_hard_sort_also_when_n_is_not_a_power_of_two(n):
    torch.manual_seed(0)
    x = torch.randn(50, n, dtype=torch.float64)
    values, perm = soft_sort(x, steepness=1e12)
    torch.testing.assert_close(values, x.sort(1).values, atol=1e-6, rtol=0)  # Cauchy tails: 1/(π s Δ) per comparator
    torch.testing.assert_close(
        perm, torch.nn.functional.one_hot(x.argsort(1), n).transpose(1, 2).double(), atol=1e-6, rtol=0
    )


def test_one_comparator_is_the_cauchy_relaxation():
    x = torch.tensor([[0.3, 0.1]], dtype=torch.float64)
    values, perm = soft_sort(x, steepness=10.0)
    alpha = math.atan(10.0 * (0.1 - 0.3)) / math.pi + 0.5  # P[x_0 < x_1]
    expected = torch.tensor([[alpha, 1 - alpha], [1 - alpha, alpha]], dtype=torch.float64)
    torch.testing.assert_close(perm[0], expected)
    torch.testing.assert_close(
        values[0],
        torch.tensor([alpha * 0.3 + (1 - alpha) * 0.1, (1 - alpha) * 0.3 + alpha * 0.1], dtype=torch.float64),
    )


def test_bitonic_network_size():
    # k(k+1)/2 layers of comparators for 2^k wires; fewer comparators when wires are absent
    assert len(bitonic_layers(64)) == 21 and all(len(layer[0]) == 32 for layer in bitonic_layers(64))
    assert len(bitonic_layers(49)) == 21 and all(len(layer[0]) <= 32 for layer in bitonic_layers(49))


def test_soft_sort_gradients_are_finite_for_ties():
    x = torch.zeros(4, 49, requires_grad=True)
    values, perm = soft_sort(x, steepness=100.0)
    (values.square().sum() + perm.log().sum()).backward()
    assert torch.isfinite(x.grad).all()
    # all tied: every comparator mixes half and half, which keeps the rows and columns summing to one
    torch.testing.assert_close(perm.sum(1), torch.ones(4, 49), atol=1e-5, rtol=0)
    torch.testing.assert_close(perm.sum(2), torch.ones(4, 49), atol=1e-5, rtol=0)


# ---- the loss ---------------------------------------------------------------------------------


def tokens(pairs=3, n=9, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(pairs, n, dim, generator=g)
    references = torch.randn(pairs, n, dim, generator=g)
    return teacher, references


def test_identical_student_and_teacher_give_the_minimum():
    teacher, references = tokens()
    student = teacher.clone().requires_grad_(True)
    at_teacher = neco_loss(student, teacher, references)
    at_teacher.backward()
    # the teacher's matrices minimise the cross-entropy over doubly-stochastic ones: a stationary point
    assert student.grad.abs().max() < 1e-4
    g = torch.Generator().manual_seed(1)
    for scale in (0.05, 0.3, 1.0):
        for _ in range(3):
            moved = teacher + scale * torch.randn(teacher.shape, generator=g)
            assert neco_loss(moved, teacher, references) > at_teacher


def test_shuffling_the_teachers_tokens_raises_the_loss():
    teacher, references = tokens(pairs=4, n=16)
    student = teacher.clone()
    order = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    assert neco_loss(student, teacher[:, order], references) > neco_loss(student, teacher, references) + 0.1


def test_teacher_and_references_get_no_gradient_and_student_does():
    teacher, references = tokens()
    teacher.requires_grad_(True)
    references.requires_grad_(True)
    student = torch.randn(teacher.shape, requires_grad=True)
    neco_loss(student, teacher, references).backward()
    assert teacher.grad is None and references.grad is None
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


def test_gradients_are_finite_for_tied_distances():
    # every token and every reference the same direction: every similarity ties at 1
    direction = torch.randn(1, 1, 8)
    student = direction.expand(2, 9, 8).clone().requires_grad_(True)
    teacher, references = direction.expand(2, 9, 8) * 2.0, direction.expand(2, 9, 8) * 3.0
    loss = neco_loss(student, teacher, references)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    # nearly tied (float32 noise around one direction) and steep teacher: still finite
    noisy = direction.expand(2, 9, 8) + 1e-7 * torch.randn(2, 9, 8)
    student = noisy.clone().requires_grad_(True)
    neco_loss(student, noisy.flip(1), references, teacher_steepness=1000.0).backward()
    assert torch.isfinite(student.grad).all()


def test_masked_pairs_leave_the_loss():
    teacher, references = tokens(pairs=3)
    student = torch.randn(teacher.shape)
    mask = torch.zeros(3, 9, dtype=torch.bool)
    mask[1] = True
    garbage = student.clone()
    garbage[1] = 1e3
    keep = [0, 2]
    expected = neco_loss(student[keep], teacher[keep], references[keep])
    torch.testing.assert_close(neco_loss(garbage, teacher, references, mask), expected)
    zero = neco_loss(student.requires_grad_(True), teacher, references, torch.ones(3, 9, dtype=torch.bool))
    assert zero.item() == 0.0 and zero.requires_grad


def test_loss_needs_same_width_and_references_per_pair():
    teacher, references = tokens()
    with pytest.raises(ValueError, match="same feature dim"):
        neco_loss(torch.randn(3, 9, 4), teacher, references)
    with pytest.raises(ValueError, match="references must be"):
        neco_loss(teacher, teacher, references[:2])


def test_neco_settings_reject_what_the_user_must_change():
    with pytest.raises(ConfigError, match="steepness"):
        NeCoSettings(student_steepness=0.0)
    with pytest.raises(ConfigError, match="queue"):
        NeCoSettings(queue_length=-1)


# ---- references and the queue -------------------------------------------------------------------


def test_references_are_drawn_without_replacement_while_the_pool_suffices():
    pool = torch.arange(40.0)[:, None]
    torch.manual_seed(0)
    refs = sample_references(pool, num_pairs=3, per_pair=9)
    assert refs.shape == (3, 9, 1) and refs.flatten().unique().numel() == 27
    small = sample_references(pool[:10], num_pairs=3, per_pair=9)  # 27 draws from 10: each 2 or 3 times
    counts = torch.bincount(small.flatten().long(), minlength=10)
    assert counts.min() >= 2 and counts.max() <= 3


def test_queue_is_a_ring_buffer_that_samples_only_filled_rows():
    queue = ReferenceQueue(length=10, dim=1)
    torch.manual_seed(0)
    queue.push(torch.full((6, 1), 1.0), count=4)
    assert (queue.filled.item(), queue.next_row.item()) == (4, 4)
    assert set(queue.sample(5, 8).flatten().tolist()) == {1.0}  # never the 6 empty rows
    queue.push(torch.full((8, 1), 2.0), count=8)  # wraps: overwrites the 2 oldest
    assert (queue.filled.item(), queue.next_row.item()) == (10, 2)
    assert queue.tokens.flatten().tolist() == [2.0, 2.0, 1.0, 1.0] + [2.0] * 6
    assert set(queue.state_dict()) == {"tokens", "filled", "next_row"}


def test_criterion_pushes_to_the_queue_in_training_only_and_draws_from_it():
    criterion = PaKALoss("neco", neco=NeCoSettings(queue_length=64, queue_per_image=5), feature_dim=8)
    teacher, _ = tokens(pairs=4, n=9)
    criterion.train()
    loss = criterion(teacher.clone(), teacher, num_images=2)
    assert criterion.references.filled.item() == 10 and torch.isfinite(loss)
    stored = criterion.references.tokens[:10]
    assert all((row == teacher.flatten(0, 1)).all(1).any() for row in stored)  # pushed rows are teacher tokens
    criterion.eval()
    criterion(teacher.clone(), teacher, num_images=2)
    assert criterion.references.filled.item() == 10
    with pytest.raises(ValueError, match="num_images"):
        criterion.train()(teacher, teacher)


# ---- in the model -------------------------------------------------------------------------------


@pytest.mark.parametrize("queue_length", [0, 256])
def test_model_with_neco_trains_the_student_only_and_checkpoints_its_queue(queue_length):
    torch.manual_seed(0)
    backbone = PatchBackbone.from_config(tiny_dinov2_config())
    head = ProjectionHead(32, hidden_dim=48, out_dim=16)
    settings = NeCoSettings(queue_length=queue_length)
    model = PaKAModel(backbone, head, roi_size=4, loss="neco", neco=settings).train()
    out = model(**batch_of_views())
    assert torch.isfinite(out.loss) and out.num_pairs.item() == 8 and 0.0 <= out.cka.item() <= 1.0 + 1e-6
    out.loss.backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert model.student_head.mlp[0].weight.grad.abs().sum() > 0
    state = model.state_dict()
    if queue_length:
        assert state["criterion.references.tokens"].shape == (256, 16)
        assert state["criterion.references.filled"].item() == 2 * 20  # 2 images, NeCo's 20 per image
    else:
        assert not any(k.startswith("criterion.") for k in state)
