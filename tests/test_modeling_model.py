import numpy as np
import pytest
import torch
from PIL import Image

from paka_hf.losses import cka_loss
from paka_hf.modeling.backbones import PatchBackbone, ProjectionHead
from paka_hf.modeling.model import PaKAModel
from paka_hf.testing import batch_of_views, tiny_dinov2_config
from paka_hf.views.geometry import ViewGeometry
from paka_hf.views.glim import GlimTransform, collate_views


@pytest.mark.parametrize("with_head", [False, True])
@pytest.mark.parametrize("registers", [0, 4])
def test_forward_backward_trains_the_student_only(with_head, registers):
    backbone = PatchBackbone.from_config(tiny_dinov2_config(registers=registers))
    head = ProjectionHead(32, hidden_dim=48, out_dim=16) if with_head else None
    model = PaKAModel(backbone, head, roi_size=5).train()
    assert not model.teacher.training
    out = model(**batch_of_views())
    assert out.loss.dtype == torch.float32 and 0.0 <= out.loss.item() <= 2.0
    assert out.num_pairs.item() == 8
    assert 0.0 <= out.cka.item() <= 1.0 + 1e-6
    out.loss.backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    grads = [p.grad for p in model.student.parameters() if p.requires_grad]
    assert sum(g.abs().sum() for g in grads if g is not None) > 0
    if with_head:
        assert model.student_head.mlp[0].weight.grad is not None
        assert all(p.grad is None for p in model.teacher_head.parameters())


def test_loss_matches_manual_composition():
    torch.manual_seed(0)
    model = PaKAModel(PatchBackbone.from_config(tiny_dinov2_config()), roi_size=4).eval()
    batch = batch_of_views()
    from paka_hf.views.align import align_pairs

    with torch.no_grad():
        t = model.teacher(batch["global_views"].flatten(0, 1))
        s = model.student(batch["local_views"].flatten(0, 1))
        aligned = align_pairs(
            t,
            s,
            ViewGeometry.from_batch(batch),
            roi_size=4,
        )
        expected = cka_loss(aligned.student, aligned.teacher, aligned.mask)
        assert torch.allclose(model(**batch).loss, expected)


def test_update_teacher_moves_backbone_and_head():
    model = PaKAModel(PatchBackbone.from_config(tiny_dinov2_config()), ProjectionHead(32, 48, 16))
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(1.0)
        for p in model.student_head.parameters():
            p.add_(1.0)
    model.update_teacher(0.0)
    for a, b in zip(model.teacher.parameters(), model.student.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(model.teacher_head.parameters(), model.student_head.parameters()):
        assert torch.equal(a, b)
    state = model.state_dict()
    assert any(k.startswith("teacher.") for k in state) and any(k.startswith("teacher_head.") for k in state)


def test_bf16_autocast_loss_close_to_fp32():
    torch.manual_seed(0)
    model = PaKAModel(PatchBackbone.from_config(tiny_dinov2_config()), roi_size=5).eval()
    batch = batch_of_views()
    with torch.no_grad():
        reference = model(**batch).loss
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(**batch).loss
    assert low.dtype == torch.float32
    assert abs(low.item() - reference.item()) < 0.05


def test_student_views_all_adds_global_to_global_pairs():
    torch.manual_seed(0)
    local_only = PaKAModel(PatchBackbone.from_config(tiny_dinov2_config()), roi_size=4)
    everything = PaKAModel(PatchBackbone.from_config(tiny_dinov2_config()), roi_size=4, student_views="all")
    everything.load_state_dict(local_only.state_dict())
    batch = batch_of_views(n_images=3)
    assert local_only(**batch).num_pairs.item() == 3 * 4
    out = everything(**batch)
    assert out.num_pairs.item() == 3 * (4 + 2)
    out.loss.backward()
    with pytest.raises(ValueError, match=r"student_views must be one of \('local', 'all'\), got 'globals'"):
        PaKAModel(PatchBackbone.from_config(tiny_dinov2_config()), student_views="globals")
    with pytest.raises(ValueError, match=r"roi_size must be >= 2 \(a kernel needs two tokens\), got 1"):
        PaKAModel(PatchBackbone.from_config(tiny_dinov2_config()), roi_size=1)


def test_uint8_views_are_normalized_by_the_model_like_float_views():
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8))
    backbone = PatchBackbone.from_config(tiny_dinov2_config())
    mean, std = backbone.image_mean, backbone.image_std  # the checkpoint's processor (here DINOv2's reference one)
    as_float = GlimTransform(56, 28, patch_size=14, mean=mean, std=std)(image, torch.Generator().manual_seed(5))
    as_uint8 = GlimTransform(56, 28, patch_size=14, normalize=False)(image, torch.Generator().manual_seed(5))
    assert as_uint8["global_views"].dtype == torch.uint8 and as_uint8["local_views"].dtype == torch.uint8
    from paka_hf.views.glim import normalize_views

    assert torch.allclose(normalize_views(as_uint8["global_views"], mean, std), as_float["global_views"], atol=1e-6)
    model = PaKAModel(backbone, roi_size=4).eval()
    with torch.no_grad():
        a = model(**collate_views([as_float])).loss
        b = model(**collate_views([as_uint8])).loss
    assert torch.allclose(a, b, atol=1e-6)
    assert "pixel_mean" not in model.state_dict()  # not a checkpointed tensor


def test_logged_cka_is_mean_linear_cka_whatever_the_loss():
    from paka_hf.losses import cka_per_pair
    from paka_hf.views.align import align_pairs

    batch = batch_of_views()
    for loss in ("cka", "gram"):
        torch.manual_seed(0)
        model = PaKAModel(PatchBackbone.from_config(tiny_dinov2_config()), roi_size=4, loss=loss).eval()
        with torch.no_grad():
            t = model.teacher(batch["global_views"].flatten(0, 1))
            s = model.student(batch["local_views"].flatten(0, 1))
            aligned = align_pairs(
                t,
                s,
                ViewGeometry.from_batch(batch),
                roi_size=4,
            )
            cka, qualifies = cka_per_pair(aligned.student, aligned.teacher, aligned.mask)
            out = model(**batch)
        assert out.num_pairs.item() == qualifies.sum().item() == 8
        assert torch.allclose(out.cka, cka.mean(), atol=1e-6), loss


def test_teacher_update_keeps_working_after_the_model_is_cast():
    """update_teacher lists the parameter pairs once; a cast (.double(), .to(device)) lists them again."""
    model = PaKAModel(PatchBackbone.from_config(tiny_dinov2_config()), ProjectionHead(32, 64, 16))
    model.update_teacher(0.5)
    model.double()
    with torch.no_grad():
        for param in model.student.parameters():
            param.add_(1.0)
    model.update_teacher(0.0)  # copy the student
    for (name, s), t in zip(model.student.named_parameters(), model.teacher.parameters()):
        assert t.dtype == torch.float64 and torch.equal(s, t), name
