import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from paka_hf.views.augment import PhotometricAugment
from paka_hf.views.glim import GlimTransform, collate_views, containment, sample_boxes

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # a DINOv2 processor's, for these tests


def random_sizes(generator: torch.Generator, count: int):
    """Image sizes from 1x1 to 1000x1000, with a share of 1:10 and 10:1 aspect ratios and tiny images."""
    sizes = []
    for i in range(count):
        kind = i % 4
        if kind == 0:
            h, w = torch.randint(1, 16, (2,), generator=generator).tolist()  # smaller than any crop
        elif kind == 1:
            h = int(torch.randint(20, 100, (1,), generator=generator))
            h, w = h, h * 10  # 1:10
        elif kind == 2:
            w = int(torch.randint(20, 100, (1,), generator=generator))
            h, w = w * 10, w  # 10:1
        else:
            h, w = torch.randint(1, 1000, (2,), generator=generator).tolist()
        sizes.append((h, w))
    return sizes


@pytest.mark.parametrize("min_intersection", [0.9, 0.5, 1.0])
def test_local_boxes_meet_containment_and_lie_inside_image(min_intersection):
    g = torch.Generator().manual_seed(11)
    for height, width in random_sizes(g, 1000):
        boxes = sample_boxes(height, width, 4, min_intersection=min_intersection, generator=g)
        assert boxes.global_boxes.shape == (2, 4) and boxes.local_boxes.shape == (4, 4)
        assert boxes.global_boxes.dtype == torch.float32
        assert boxes.pair_index.tolist() == [0, 1, 0, 1]
        for b in (boxes.global_boxes, boxes.local_boxes):
            assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
            assert (b[:, 2] <= width).all() and (b[:, 3] <= height).all()
            assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        paired = boxes.global_boxes[boxes.pair_index]
        c = containment(boxes.local_boxes.double(), paired.double())
        assert (c >= min_intersection - 1e-5).all(), (height, width, c)


def test_zero_min_intersection_gives_plain_random_crops():
    g = torch.Generator().manual_seed(12)
    c = torch.cat(
        [
            containment(b.local_boxes, b.global_boxes[b.pair_index])
            for b in (sample_boxes(480, 640, 4, min_intersection=0.0, generator=g) for _ in range(300))
        ]
    )
    assert (c < 0.5).float().mean() > 0.1  # unconstrained locals often leave their global


def test_box_scales_follow_the_spec_on_a_large_image():
    g = torch.Generator().manual_seed(13)
    area = 1000 * 1000
    for _ in range(200):
        b = sample_boxes(1000, 1000, 4, generator=g)
        g_area = (b.global_boxes[:, 2] - b.global_boxes[:, 0]) * (b.global_boxes[:, 3] - b.global_boxes[:, 1])
        l_area = (b.local_boxes[:, 2] - b.local_boxes[:, 0]) * (b.local_boxes[:, 3] - b.local_boxes[:, 1])
        assert ((g_area / area >= 0.25 - 1e-4) & (g_area / area <= 1 + 1e-4)).all()
        assert ((l_area / area >= 0.05 - 1e-4) & (l_area / area <= 0.25 + 1e-4)).all()


def test_seeded_generator_is_deterministic():
    a = sample_boxes(300, 500, 6, generator=torch.Generator().manual_seed(5))
    b = sample_boxes(300, 500, 6, generator=torch.Generator().manual_seed(5))
    c = sample_boxes(300, 500, 6, generator=torch.Generator().manual_seed(6))
    assert a.global_flips is None and a.local_flips is None  # sample_boxes draws no flips
    assert a.as_dict().keys() == b.as_dict().keys() == {"global_boxes", "local_boxes", "pair_index"}
    assert all(torch.equal(x, b.as_dict()[key]) for key, x in a.as_dict().items())
    assert not torch.equal(a.local_boxes, c.local_boxes)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8))
    transform = GlimTransform(112, 56, flip=True)
    first = transform(image, torch.Generator().manual_seed(1))
    second = transform(image, torch.Generator().manual_seed(1))
    assert all(torch.equal(first[k], second[k]) for k in first)


def smooth_image(width=320, height=240) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(x / 30.0)], axis=-1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


def render_plain(image: Image.Image, box: torch.Tensor, size: int, transform: GlimTransform) -> torch.Tensor:
    view = image.resize((size, size), Image.Resampling.BICUBIC, box=tuple(box.tolist()))
    return F.normalize(F.to_dtype(F.pil_to_tensor(view), torch.float32, scale=True), transform.mean, transform.std)


def test_teacher_views_are_the_plain_resize_of_their_box():
    image = smooth_image()
    always = PhotometricAugment(jitter_p=1.0, grayscale_p=1.0, blur_p=1.0)
    transform = GlimTransform(112, 56, augment=always, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    out = transform(image, torch.Generator().manual_seed(3))
    for view, box in zip(out["global_views"], out["global_boxes"]):
        assert torch.allclose(view, render_plain(image, box, 112, transform), atol=1e-6, rtol=0)
    # the student views did change, and an augmented teacher (the ablation) changes too
    assert not torch.allclose(out["local_views"][0], render_plain(image, out["local_boxes"][0], 56, transform))
    augmented = GlimTransform(112, 56, augment=always, teacher_augment=True, mean=IMAGENET_MEAN, std=IMAGENET_STD)(
        image, torch.Generator().manual_seed(3)
    )
    assert not torch.allclose(
        augmented["global_views"][0], render_plain(image, augmented["global_boxes"][0], 112, transform)
    )


def test_flip_is_recorded_and_applied():
    image = smooth_image()
    transform = GlimTransform(112, 56, flip=True, student_augment=False, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    flips = []
    for seed in range(6):
        out = transform(image, torch.Generator().manual_seed(seed))
        for view, box, flipped in zip(out["global_views"], out["global_boxes"], out["global_flips"]):
            plain = render_plain(image, box, 112, transform)
            assert torch.allclose(view, plain.flip(-1) if flipped else plain, atol=1e-6, rtol=0)
            flips.append(bool(flipped))
    assert any(flips) and not all(flips)


@pytest.mark.parametrize("mode", ["RGB", "L", "1", "P", "RGBA", "LA", "CMYK", "I;16", "I", "F", "YCbCr"])
@pytest.mark.parametrize("size", [(1, 1), (3, 200), (200, 3), (50, 37)])
def test_any_mode_and_size_gives_finite_views(mode, size):
    image = (
        Image.new("RGB", size, (200, 30, 90)).convert(mode)
        if mode not in ("I;16", "I", "F")
        else Image.new(mode, size, 300)
    )
    transform = GlimTransform(28, 14, n_local=3, flip=True)
    out = transform(image, torch.Generator().manual_seed(0))
    assert out["global_views"].dtype == torch.uint8  # no mean/std given: the views stay uint8
    assert out["global_views"].shape == (2, 3, 28, 28)
    assert out["local_views"].shape == (3, 3, 14, 14)
    assert out["pair_index"].tolist() == [0, 1, 0]
    assert torch.isfinite(out["global_views"]).all() and torch.isfinite(out["local_views"]).all()


def test_collate_stacks_a_batch():
    transform = GlimTransform(28, 14)
    batch = collate_views([transform(smooth_image(64, 48)) for _ in range(3)])
    assert batch["global_views"].shape == (3, 2, 3, 28, 28)
    assert batch["local_boxes"].shape == (3, 4, 4)
    assert batch["pair_index"].shape == (3, 4)
    with pytest.raises(ValueError, match="empty"):
        collate_views([])


def test_bad_settings_raise_helpful_errors():
    with pytest.raises(ValueError, match=r"min_intersection must be in \[0, 1\]"):
        sample_boxes(10, 10, min_intersection=1.5)
    with pytest.raises(ValueError, match="local_scale"):
        sample_boxes(10, 10, local_scale=(0.3, 0.2))
    with pytest.raises(ValueError, match="at least 1x1"):
        sample_boxes(0, 10)
    with pytest.raises(ValueError, match="n_local must be a positive integer, got 0"):
        sample_boxes(10, 10, n_local=0)
    with pytest.raises(
        ValueError,
        match="global_size=225 is not a multiple of the model's patch size 14; use for example global_size=224",
    ):
        GlimTransform(225, 98, patch_size=14)
    with pytest.raises(ValueError, match="normalize=True needs mean and std"):
        GlimTransform(28, 14, normalize=True)  # no built-in statistics: the backbone's processor says
    with pytest.raises(ValueError, match="probability"):
        PhotometricAugment(blur_p=2.0)
