"""Views rendered on the device (``view_rendering: device``) are the CPU path's views.

The CPU path (Pillow bicubic crop-resize, torchvision's uint8 colour ops, one view at a time) is the
reference of docs/METHOD.md §1. The device path must draw the same random parameters (shared sampler) and
render them with the same arithmetic: crops match Pillow to a small fraction of one uint8 level on
average (Pillow's 22-bit fixed-point weights against our float32 ones: a pixel whose sum sits
within round-off of a half rounds the other way), colour ops match torchvision exactly on CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from paka_hf.modeling.backbones import PatchBackbone, ProjectionHead
from paka_hf.modeling.model import PaKAModel
from paka_hf.testing import tiny_dinov2_config
from paka_hf.training.data import PaKACollator
from paka_hf.views import photometric
from paka_hf.views.augment import NUM_PARAMS, PhotometricAugment
from paka_hf.views.geometry import GEOMETRY_KEYS, ViewGeometry
from paka_hf.views.glim import GlimTransform, collate_views, render_views, sample_boxes
from paka_hf.views.resample import resample_boxes, resize_weights

# Pillow vs float32 weights: measured mean |Δ| ≈ 2e-4 levels, ≤ 0.1 % of pixels differ, by ≤ 2 levels
# (one flipped rounding in the horizontal pass can move the vertical sum by more than one level).
CROP_MEAN_ABS_LEVELS = 5e-3
CROP_FRACTION_DIFFERENT = 5e-3
CROP_MAX_LEVELS = 3


def textured_image(height: int, width: int, seed: int = 0) -> Image.Image:
    """Edges, gradients and noise: every resampling weight matters, values span 0–255 with clipping."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    arr = np.stack(
        [128 + 120 * np.sin(xx / 7.0 + yy / 13.0), 128 + 120 * np.cos(xx / 5.0), (xx * 3 + yy * 5) % 256], -1
    )
    arr = arr + rng.normal(0, 25, arr.shape)
    arr[height // 3 : height // 2, width // 4 : width // 2] = 255  # a saturated block with hard edges
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def pil_view(image: Image.Image, box: torch.Tensor, size: int) -> torch.Tensor:
    return F.pil_to_tensor(image.resize((size, size), resample=Image.Resampling.BICUBIC, box=tuple(box.tolist())))


def assert_close_to_pil(rendered: torch.Tensor, reference: torch.Tensor) -> None:
    diff = (rendered.float() - reference.float()).abs()
    assert diff.mean().item() <= CROP_MEAN_ABS_LEVELS, diff.mean().item()
    assert (diff > 0).float().mean().item() <= CROP_FRACTION_DIFFERENT
    assert diff.max().item() <= CROP_MAX_LEVELS


# ---- crop and resize ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [98, 224])
def test_resampled_boxes_match_pillow_bicubic_box_resize(size):
    """Down- and upscaling, boxes at the borders, three image sizes padded into one batch."""
    shapes = [(480, 640), (360, 480), (200, 150)]
    images = [textured_image(h, w, seed=i) for i, (h, w) in enumerate(shapes)]
    generator = torch.Generator().manual_seed(0)
    boxes = torch.stack([sample_boxes(h, w, 4, generator=generator).local_boxes for h, w in shapes])
    boxes[0, 0] = torch.tensor([0.0, 0.0, 640.0, 480.0])  # the whole image, then a sliver on the right edge
    boxes[0, 1] = torch.tensor([630.5, 100.25, 640.0, 130.0])
    padded = torch.zeros(3, 3, 480, 640)
    for out, image in zip(padded, images):
        out[:, : image.height, : image.width] = F.pil_to_tensor(image).float()
    sizes = torch.tensor(shapes)
    rendered = resample_boxes(padded, sizes, boxes, size)
    assert rendered.shape == (3, 4, 3, size, size)
    assert torch.equal(rendered, rendered.round()) and rendered.min() >= 0 and rendered.max() <= 255
    reference = torch.stack([torch.stack([pil_view(im, b, size) for b in bs]) for im, bs in zip(images, boxes)])
    assert_close_to_pil(rendered, reference)


def test_flip_is_folded_into_the_weights():
    image = textured_image(120, 160)
    pixels = F.pil_to_tensor(image).float()[None]
    boxes = torch.tensor([[[10.0, 5.0, 90.0, 100.0], [30.5, 20.5, 150.0, 110.0]]])
    sizes = torch.tensor([[120, 160]])
    plain = resample_boxes(pixels, sizes, boxes, 56)
    flipped = resample_boxes(pixels, sizes, boxes, 56, flips=torch.tensor([[True, False]]))
    assert torch.equal(flipped[0, 0], plain[0, 0].flip(-1))
    assert torch.equal(flipped[0, 1], plain[0, 1])


def test_resize_weights_rows_are_normalized_and_stop_at_the_image():
    weights = resize_weights(torch.tensor([0.0, 90.0]), torch.tensor([100.0, 100.0]), torch.tensor([100, 100]), 7, 128)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 7))
    assert weights[..., 100:].abs().max() == 0  # the padding beyond the image gets no weight
    assert (weights[0] != 0).sum(-1).max() > 8  # downscaling by 14x widens the kernel (antialiasing)


def test_resample_errors_say_what_shape_is_expected():
    with pytest.raises(ValueError, match=r"images must be \(B, 3, H, W\)"):
        resample_boxes(torch.zeros(2, 8, 8, 3), torch.tensor([[8, 8]] * 2), torch.zeros(2, 1, 4), 4)
    with pytest.raises(ValueError, match="boxes must be"):
        resample_boxes(torch.zeros(2, 3, 8, 8), torch.tensor([[8, 8]] * 2), torch.zeros(3, 1, 4), 4)


# ---- colour operations ---------------------------------------------------------------------------


def uint8_views(count: int = 24, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randint(0, 256, (count, 3, 18, 22), generator=generator, dtype=torch.uint8)
    return F.gaussian_blur(noise, [5, 5], [1.2, 1.2])  # some spatial structure, values still span the range


@pytest.mark.parametrize(
    "batched, single, low, high",
    [
        (photometric.adjust_brightness, F.adjust_brightness, 0.2, 1.8),
        (photometric.adjust_contrast, F.adjust_contrast, 0.2, 1.8),
        (photometric.adjust_saturation, F.adjust_saturation, 0.0, 2.0),
        (photometric.adjust_hue, F.adjust_hue, -0.5, 0.5),
    ],
)
def test_each_colour_op_matches_torchvision_on_each_view(batched, single, low, high):
    views = uint8_views()
    factors = low + (high - low) * torch.rand(
        len(views), generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    expected = torch.stack([single(view, float(f)) for view, f in zip(views, factors)])
    assert torch.equal(batched(views.float(), factors), expected.float())


def test_grayscale_and_blur_match_torchvision_on_each_view():
    views = uint8_views()
    assert torch.equal(photometric.rgb_to_grayscale(views.float()), F.rgb_to_grayscale(views, 3).float())
    sigma = torch.linspace(0.1, 2.0, len(views), dtype=torch.float64)
    sigma[::5] = 0  # no blur on these
    expected = torch.stack(
        [F.gaussian_blur(view, [9, 9], [float(s), float(s)]) if s > 0 else view for view, s in zip(views, sigma)]
    )
    assert torch.equal(photometric.gaussian_blur(views.float(), sigma, 9), expected.float())


def test_batched_augmentation_matches_the_per_view_cpu_augmentation():
    augment = PhotometricAugment()
    views = uint8_views(64)
    generator = torch.Generator().manual_seed(2)
    params = torch.stack([augment.sample(generator) for _ in views])
    assert params.shape == (64, NUM_PARAMS)
    assert 0 < params[:, 0].sum() < 64 and 0 < (params[:, 10] > 0).sum() < 64  # both branches of jitter and blur
    expected = torch.stack([augment.apply(view, p) for view, p in zip(views, params)])
    assert torch.equal(augment.apply_batch(views.float(), params, augment.blur_kernel_size), expected.float())
    with pytest.raises(ValueError, match="one row per view"):
        augment.apply_batch(views.float(), params[:3])


@pytest.mark.parametrize(
    "settings", [dict(hue=0.0), dict(brightness=0.0, saturation=0.0, grayscale_p=1.0), dict(jitter_p=1.0, blur_p=0.0)]
)
def test_batched_augmentation_with_skipped_ops_matches_per_view(settings):
    """Empty factor ranges (an op skipped), certain grayscale, no blur: still the per-view result."""
    augment = PhotometricAugment(**settings)
    views = uint8_views(32, seed=3)
    generator = torch.Generator().manual_seed(4)
    params = torch.stack([augment.sample(generator) for _ in views])
    expected = torch.stack([augment.apply(view, p) for view, p in zip(views, params)])
    assert torch.equal(augment.apply_batch(views.float(), params, augment.blur_kernel_size), expected.float())


def test_sample_then_apply_is_the_seeded_augmentation():
    augment, view = PhotometricAugment(), uint8_views(1)[0]
    for seed in range(8):
        params = augment.sample(torch.Generator().manual_seed(seed))
        assert torch.equal(augment(view, torch.Generator().manual_seed(seed)), augment.apply(view, params))


# ---- the whole transform: shared draws, same views ------------------------------------------------


@pytest.mark.parametrize("teacher_augment", [False, True])
def test_device_rendering_draws_the_same_parameters_and_renders_the_cpu_views(teacher_augment):
    images = [textured_image(480, 640, 0), textured_image(360, 480, 1), textured_image(300, 220, 2)]
    kwargs = dict(flip=True, normalize=False, teacher_augment=teacher_augment)
    cpu, device = GlimTransform(112, 56, **kwargs), GlimTransform(112, 56, rendering="device", **kwargs)
    ref = collate_views([cpu(im, torch.Generator().manual_seed(i)) for i, im in enumerate(images)])
    samples = [device(im, torch.Generator().manual_seed(i)) for i, im in enumerate(images)]
    # the draws are those of the CPU path's sampler, and parameters its own augmentation would use
    for i, (image, sample) in enumerate(zip(images, samples)):
        assert np.array_equal(sample["image"], np.asarray(image))
        draws = cpu.sample(image.height, image.width, torch.Generator().manual_seed(i))
        for key, value in draws.items():
            assert torch.equal(sample[key], value), key
    assert ("global_color" in samples[0]) == teacher_augment
    batch = collate_views(samples)
    assert batch["images"].shape == (3, 480, 640, 3) and batch["images"][2, 300:].abs().sum() == 0
    assert batch["view_spec"] == {"global_size": 112, "local_size": 56, "blur_kernel_size": 9}
    for key in GEOMETRY_KEYS:
        assert torch.equal(batch[key], ref[key]), key
    assert batch["local_flips"].any() and not batch["local_flips"].all()
    global_views, local_views = render_views(
        batch["images"],
        batch["image_sizes"],
        ViewGeometry.from_batch(batch),
        batch["view_spec"],
        batch.get("global_color"),
        batch.get("local_color"),
    )
    assert global_views.dtype == local_views.dtype == torch.uint8
    assert_close_to_pil(global_views, ref["global_views"])
    assert_close_to_pil(local_views, ref["local_views"])


def test_model_gives_the_same_loss_from_images_as_from_cpu_rendered_views():
    torch.manual_seed(0)
    model = PaKAModel(PatchBackbone.from_config(tiny_dinov2_config(registers=4)), ProjectionHead(32, 64, 16)).eval()
    images = [textured_image(240, 320, i) for i in range(2)]
    cpu = GlimTransform(56, 28, flip=True, normalize=False)
    device = GlimTransform(56, 28, flip=True, normalize=False, rendering="device")
    collate = PaKACollator()
    rendered = collate([cpu(im, torch.Generator().manual_seed(i)) for i, im in enumerate(images)])
    to_render = collate([device(im, torch.Generator().manual_seed(i)) for i, im in enumerate(images)])
    assert "images" in to_render and "global_views" not in to_render
    with torch.no_grad():
        expected, got = model(**rendered).loss, model(**to_render).loss
    assert torch.isfinite(got)
    assert abs(got.item() - expected.item()) < 1e-3
    with pytest.raises(ValueError, match="not both"):
        model(**to_render, global_views=rendered["global_views"], local_views=rendered["local_views"])


def test_collate_refuses_mixed_view_sizes():
    a = GlimTransform(56, 28, rendering="device")(textured_image(64, 64))
    b = GlimTransform(84, 28, rendering="device")(textured_image(64, 64))
    with pytest.raises(ValueError, match="share view sizes"):
        collate_views([a, b])
    with pytest.raises(ValueError, match="rendering must be one of"):
        GlimTransform(56, 28, rendering="gpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rendering_matches_cpu_rendering_without_host_device_sync():
    """The renderer on the GPU: the CPU renderer's views (fp32 matmuls; cuBLAS/cuDNN sum in another order,
    so a rare pixel may round the other way), and no host–device synchronisation in the whole rendering."""
    images = [textured_image(480, 640, i) for i in range(4)]
    transform = GlimTransform(224, 98, flip=True, teacher_augment=True, rendering="device")
    batch = collate_views([transform(im, torch.Generator().manual_seed(i)) for i, im in enumerate(images)])

    def render(b):
        return render_views(
            b["images"],
            b["image_sizes"],
            ViewGeometry.from_batch(b),
            b["view_spec"],
            b["global_color"],
            b["local_color"],
        )

    cpu_views = render(batch)
    cuda_batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        render(cuda_batch)  # first call: lazy initialisation, cached tables
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            cuda_views = render(cuda_batch)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    for on_cpu, on_cuda in zip(cpu_views, cuda_views):
        diff = (on_cuda.cpu().float() - on_cpu.float()).abs()
        assert diff.mean().item() <= CROP_MEAN_ABS_LEVELS, diff.mean().item()
        assert (diff > 0).float().mean().item() <= CROP_FRACTION_DIFFERENT


def test_a_large_image_is_downscaled_once_and_both_renderings_cut_the_same_views():
    """The longer side is bounded (here 640 for 112/56 views) before the boxes are drawn, in
    both renderings, so the device batch stays ≤ B × 640 × 640 × 3 and the views stay the CPU path's."""
    from paka_hf.views.glim import default_max_image_side

    side = default_max_image_side(112, 56)
    assert side == 640
    images = [textured_image(1000, 1500, 0), textured_image(1500, 1000, 1), textured_image(200, 300, 2)]
    cpu, device = GlimTransform(112, 56, normalize=False), GlimTransform(112, 56, normalize=False, rendering="device")
    ref = collate_views([cpu(im, torch.Generator().manual_seed(i)) for i, im in enumerate(images)])
    samples = [device(np.asarray(im), torch.Generator().manual_seed(i)) for i, im in enumerate(images)]
    assert [s["image"].shape[:2] for s in samples] == [(427, 640), (640, 427), (200, 300)]
    assert np.array_equal(samples[0]["image"], np.asarray(images[0].resize((640, 427), Image.Resampling.BICUBIC)))
    batch = collate_views(samples)
    assert batch["images"].shape == (3, 640, 640, 3)  # not 1500 x 1500
    assert float(ref["global_boxes"][:, :, 2].max()) <= 640 and torch.equal(batch["global_boxes"], ref["global_boxes"])
    global_views, local_views = render_views(
        batch["images"],
        batch["image_sizes"],
        ViewGeometry.from_batch(batch),
        batch["view_spec"],
        None,
        batch.get("local_color"),
    )
    assert_close_to_pil(global_views, ref["global_views"])
    assert_close_to_pil(local_views, ref["local_views"])
    unbounded = GlimTransform(112, 56, rendering="device", max_image_side=0)(
        images[0], torch.Generator().manual_seed(0)
    )
    assert unbounded["image"].shape == (1000, 1500, 3)
