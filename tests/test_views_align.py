import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from paka_hf.views.align import align_pairs, intersect, to_grid_coordinates
from paka_hf.views.geometry import ViewGeometry
from paka_hf.views.glim import GlimTransform, collate_views


class MeanColourBackbone(nn.Module):
    """Stand-in backbone: the feature of a patch is its mean colour, (B, 3, H/p, W/p)."""

    patch_size = 14

    def forward(self, pixel_values):
        return nn.functional.avg_pool2d(pixel_values, self.patch_size)


def smooth_image(seed: int, width=480, height=360) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    phase = rng.uniform(0, 2 * np.pi, 3)
    rgb = np.stack(
        [
            0.5 + 0.4 * np.sin(2 * np.pi * x / 400 + phase[0]),
            0.5 + 0.4 * np.cos(2 * np.pi * y / 300 + phase[1]),
            0.5 + 0.4 * np.sin(2 * np.pi * (x + y) / 500 + phase[2]),
        ],
        axis=-1,
    )
    return Image.fromarray((rgb * 255).round().astype(np.uint8))


def ramp_image(seed: int, width=480, height=360) -> Image.Image:
    """Linear in x and y: the mean colour of a patch is the colour at its centre, so bilinear
    interpolation of patch means is exact away from the grid border."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    w = np.random.default_rng(seed).uniform(0.2, 1.0, 3)
    rgb = np.stack([w[0] * x / width, w[1] * y / height, w[2] * (x + y) / (width + height)], axis=-1)
    return Image.fromarray((rgb * 255).round().astype(np.uint8))


def aligned_batch(flip: bool, make_image=smooth_image):
    transform = GlimTransform(224, 98, n_local=4, flip=flip, student_augment=False, mean=(0, 0, 0), std=(1, 1, 1))
    g = torch.Generator().manual_seed(0)
    batch = collate_views([transform(make_image(seed), g) for seed in range(4)])
    backbone = MeanColourBackbone()
    teacher_grids = backbone(batch["global_views"].flatten(0, 1))
    student_grids = backbone(batch["local_views"].flatten(0, 1))
    return batch, teacher_grids, student_grids


def mean_error(aligned) -> float:
    return (aligned.teacher - aligned.student).abs().mean().item()


@pytest.mark.parametrize("flip", [False, True])
def test_alignment_is_exact_on_a_linear_image(flip):
    batch, t_grids, s_grids = aligned_batch(flip, ramp_image)
    aligned = align_pairs(
        t_grids,
        s_grids,
        ViewGeometry.from_batch(batch),
        roi_size=7,
    )
    error = (aligned.teacher - aligned.student).abs().reshape(16, 7, 7, 3)
    assert error[:, 1:-1, 1:-1].max() < 0.003  # interior: within 8-bit quantisation of the views
    assert error.max() < 0.015  # border bins sample the outer half-cell, where the grid is clamped


@pytest.mark.parametrize("flip", [False, True])
def test_aligned_tokens_describe_the_same_image_region(flip):
    batch, t_grids, s_grids = aligned_batch(flip)
    aligned = align_pairs(
        t_grids,
        s_grids,
        ViewGeometry.from_batch(batch),
        roi_size=7,
    )
    assert aligned.teacher.shape == (16, 49, 3) and aligned.student.shape == (16, 49, 3)
    assert not aligned.mask.any()
    assert (aligned.teacher - aligned.student).abs().max().item() < 0.05
    assert mean_error(aligned) < 0.008

    # The same alignment with the boxes of two local views swapped must fail.
    swapped = batch["local_boxes"].clone()
    swapped[:, [0, 1]] = swapped[:, [1, 0]]
    wrong = align_pairs(
        t_grids,
        s_grids,
        ViewGeometry.from_batch(batch)._replace(local_boxes=swapped),
        roi_size=7,
    )
    assert mean_error(wrong) > 5 * mean_error(aligned)
    if flip:  # forgetting to undo the flips must fail too
        assert batch["local_flips"].any() or batch["global_flips"].any()
        unflipped = align_pairs(
            t_grids, s_grids, ViewGeometry.from_batch(batch)._replace(global_flips=None, local_flips=None)
        )
        assert mean_error(unflipped) > 3 * mean_error(aligned)


def test_disjoint_pairs_are_masked():
    grids_t = torch.randn(2, 8, 16, 16)
    grids_s = torch.randn(2, 8, 7, 7)
    global_boxes = torch.tensor([[[0.0, 0.0, 100.0, 100.0], [0.0, 0.0, 50.0, 50.0]]])
    local_boxes = torch.tensor([[[10.0, 10.0, 40.0, 40.0], [200.0, 200.0, 230.0, 230.0]]])
    aligned = align_pairs(
        grids_t, grids_s, ViewGeometry(global_boxes, local_boxes, torch.tensor([[0, 1]])), roi_size=5
    )
    assert aligned.mask.shape == (2, 25)
    assert not aligned.mask[0].any() and aligned.mask[1].all()


def test_grid_coordinates_of_the_whole_view_span_the_grid():
    view = torch.tensor([[10.0, 20.0, 110.0, 70.0]])
    assert to_grid_coordinates(view, view, 4, 8).tolist() == [[0.0, 0.0, 8.0, 4.0]]
    half = torch.tensor([[60.0, 20.0, 110.0, 45.0]])
    assert to_grid_coordinates(half, view, 4, 8).tolist() == [[4.0, 0.0, 8.0, 2.0]]
    box, nonempty = intersect(torch.tensor([0.0, 0.0, 2.0, 2.0]), torch.tensor([1.0, 1.0, 3.0, 3.0]))
    assert box.tolist() == [1.0, 1.0, 2.0, 2.0] and bool(nonempty)


def test_gradients_reach_the_student_grid():
    grids_t = torch.randn(2, 4, 8, 8)
    grids_s = torch.randn(4, 4, 7, 7, requires_grad=True)
    g_boxes = torch.tensor([[[0.0, 0.0, 100.0, 100.0], [20.0, 20.0, 90.0, 90.0]]])
    l_boxes = torch.tensor(
        [[[10.0, 10.0, 40.0, 40.0], [30.0, 30.0, 60.0, 50.0], [0.0, 0.0, 20.0, 20.0], [50.0, 50.0, 80.0, 80.0]]]
    )
    aligned = align_pairs(grids_t, grids_s, ViewGeometry(g_boxes, l_boxes, torch.tensor([[0, 1, 0, 1]])))
    aligned.student.sum().backward()
    assert (grids_s.grad.abs().sum((1, 2, 3)) > 0).all()


def test_shape_errors():
    with pytest.raises(ValueError, match="expected 1x2 teacher grids and 1x2 student grids"):
        align_pairs(
            torch.randn(3, 4, 8, 8),
            torch.randn(2, 4, 7, 7),
            ViewGeometry(torch.zeros(1, 2, 4), torch.zeros(1, 2, 4), torch.zeros(1, 2, dtype=torch.long)),
        )


def test_flips_by_mirrored_boxes_equal_flipping_the_grids_first():
    """align_pairs undoes flips by mirroring boxes and flipping the roi² output; the result must be that
    of flipping every flipped view's whole grid back first (values and student gradients), also for
    non-square grids and boxes that reach past the grid's edges (torchvision's border rule)."""
    generator = torch.Generator().manual_seed(3)
    batch, n_global, n_local, dim = 3, 2, 4, 5
    teacher = torch.randn(batch * n_global, dim, 9, 13, generator=generator)
    student = torch.randn(batch * n_local, dim, 6, 6, generator=generator)
    global_boxes = torch.tensor([[0.0, 0.0, 640.0, 480.0], [100.0, 50.0, 500.0, 400.0]]).expand(batch, -1, -1)
    corner = torch.rand(batch, n_local, 2, generator=generator) * torch.tensor([600.0, 440.0]) - 40.0  # some outside
    local_boxes = torch.cat([corner, corner + 60.0 + 150.0 * torch.rand(batch, n_local, 2, generator=generator)], -1)
    pair_index = torch.tensor([[0, 1, 0, 1]]).expand(batch, -1)
    global_flips = torch.tensor([[True, False], [False, True], [True, True]])
    local_flips = torch.rand(batch, n_local, generator=generator) < 0.5
    local_flips[0, 0], local_flips[0, 1] = True, False
    unflipped = ViewGeometry(global_boxes, local_boxes, pair_index)
    flipped = unflipped._replace(global_flips=global_flips, local_flips=local_flips)

    def aligned_tokens(flip_grids_first: bool):
        s = student.clone().requires_grad_(True)
        if flip_grids_first:
            t_in = torch.where(global_flips.reshape(-1)[:, None, None, None], teacher.flip(-1), teacher)
            s_in = torch.where(local_flips.reshape(-1)[:, None, None, None], s.flip(-1), s)
            out = align_pairs(t_in, s_in, unflipped, roi_size=4, sampling_ratio=2)
        else:
            out = align_pairs(teacher, s, flipped, roi_size=4, sampling_ratio=2)
        (out.student * torch.arange(16.0)[None, :, None]).sum().backward()  # position-dependent gradient
        return out, s.grad

    mirrored, mirrored_grad = aligned_tokens(False)
    reference, reference_grad = aligned_tokens(True)
    torch.testing.assert_close(mirrored.teacher, reference.teacher, rtol=0, atol=1e-5)
    torch.testing.assert_close(mirrored.student, reference.student, rtol=0, atol=1e-5)
    torch.testing.assert_close(mirrored_grad, reference_grad, rtol=0, atol=1e-5)
    assert torch.equal(mirrored.mask, reference.mask)
    assert (
        reference.student - align_pairs(teacher, student, unflipped, roi_size=4).student
    ).abs().max() > 0.1  # the flips do matter here
