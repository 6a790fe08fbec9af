"""Known-warp correspondence: exact warps, perfect / chance / identity scores, reproducibility, and input errors."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from paka_hf.evaluation.correspondence import (
    CorrespondenceConfig,
    centres_within,
    homography_from_points,
    list_images,
    pixel_centres,
    render_warp,
    sample_warp,
    source_view,
    warp_correspondence,
    warp_points,
)
from paka_hf.modeling.backbones import PatchBackbone
from paka_hf.testing import random_image, tiny_dinov2_config, write_random_images
from paka_hf.utils.errors import ConfigError, MissingPathError

PATCH = 14
VIEW = (112, 140)  # 8 × 10 patches of 14 pixels
NO_JITTER = dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
IDENTITY = dict(crop_fraction=(1.0, 1.0), flip_p=0.0, max_rotation=0.0, perspective=0.0, **NO_JITTER)


def ramp_image(height: int, width: int) -> Image.Image:
    """Red and green encode the pixel centre's x / W and y / H in 8 bits; blue is 255 (so black = outside)."""
    y, x = np.mgrid[0:height, 0:width] + 0.5
    rgb = np.stack([np.round(255 * x / width), np.round(255 * y / height), np.full_like(x, 255)], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8))


class ColourDecoder(torch.nn.Module):
    """A "perfect" extractor for :func:`ramp_image` views: each patch decodes the source position its pixels show
    (red / blue, green / blue, blue-weighted, so the black fill around a warped view does not bias it) and emits
    Gaussian bumps on a grid of anchors that extends 4 σ past the view: the cosine of two patches is then
    ``exp(−d² / 4σ²)``, ``d`` the distance between their decoded positions, so the nearest feature is the nearest
    position. A patch that is all fill gets a zero feature."""

    patch_size = PATCH
    image_mean = (0.0, 0.0, 0.0)
    image_std = (1.0, 1.0, 1.0)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = pixels.shape
        sums = F.avg_pool2d(pixels.double(), PATCH) * PATCH**2  # (B, 3, h, w)
        weight = sums[:, 2]
        x = sums[:, 0] / weight.clamp_min(1e-9) * width
        y = sums[:, 1] / weight.clamp_min(1e-9) * height
        sigma = float(PATCH)
        ax = torch.arange(-4 * sigma, width + 4 * sigma, sigma / 2, dtype=torch.float64)
        ay = torch.arange(-4 * sigma, height + 4 * sigma, sigma / 2, dtype=torch.float64)
        bump_x = torch.exp(-((x[..., None] - ax) ** 2) / (2 * sigma**2))  # (B, h, w, Ax)
        bump_y = torch.exp(-((y[..., None] - ay) ** 2) / (2 * sigma**2))
        features = (bump_y[..., :, None] * bump_x[..., None, :]).flatten(-2)  # (B, h, w, Ay·Ax)
        features = torch.where((weight > 0.5)[..., None], features, torch.zeros_like(features))
        return features.permute(0, 3, 1, 2).float()


class RandomFeatures(torch.nn.Module):
    """Features that ignore the image: every prediction is a uniformly random patch."""

    patch_size = PATCH
    image_mean = (0.5, 0.5, 0.5)
    image_std = (0.5, 0.5, 0.5)

    def __init__(self):
        super().__init__()
        self.generator = torch.Generator().manual_seed(0)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = pixels.shape
        return torch.randn(batch, 16, height // PATCH, width // PATCH, generator=self.generator)


@pytest.fixture
def tiny_backbone():
    torch.manual_seed(0)
    return PatchBackbone.from_config(tiny_dinov2_config())


@pytest.fixture
def noise_folder(tmp_path):
    return write_random_images(tmp_path / "images", 6, side_range=(40, 120), seed=1)


def noise_view(seed: int = 0) -> torch.Tensor:
    return source_view(random_image(np.random.default_rng(seed), *VIEW), VIEW)


# --- the warp -------------------------------------------------------------------------------------------------


def test_identity_warp_is_exactly_the_identity():
    warp = sample_warp(CorrespondenceConfig(input_size=VIEW, **IDENTITY), index=3)
    assert np.array_equal(warp.matrix, np.eye(3)) and not warp.flip and warp.rotation == 0
    view = noise_view()
    assert torch.equal(render_warp(view, warp), view)


def test_flip_alone_is_an_exact_left_right_flip():
    config = CorrespondenceConfig(input_size=VIEW, **{**IDENTITY, "flip_p": 1.0})
    warp = sample_warp(config, index=0)
    assert warp.flip
    points = pixel_centres(*VIEW)
    mapped = warp_points(warp.matrix, points)
    np.testing.assert_array_equal(mapped, np.stack([VIEW[1] - points[:, 0], points[:, 1]], axis=1))
    view = noise_view()
    assert torch.equal(render_warp(view, warp), view.flip(-1))


@pytest.mark.parametrize("index", range(4))
def test_warped_pixels_show_the_source_point_the_warp_maps_them_from(index):
    """A ramp image (colour = position) through real warps (crop, flip, rotation, perspective): every warped pixel
    whose pre-image lies inside the source shows the colour, hence the position, of that pre-image."""
    config = CorrespondenceConfig(input_size=VIEW, max_rotation=20.0, perspective=0.1, **NO_JITTER)
    warp = sample_warp(config, index)
    height, width = VIEW
    warped = render_warp(source_view(ramp_image(height, width), VIEW), warp).double()
    targets = pixel_centres(height, width)
    pre_images = warp_points(np.linalg.inv(warp.matrix), targets)
    inside = (pre_images > 1).all(axis=1) & (pre_images[:, 0] < width - 1) & (pre_images[:, 1] < height - 1)
    assert inside.mean() > 0.3
    decoded = torch.stack([warped[0] / 255 * width, warped[1] / 255 * height], dim=-1).reshape(-1, 2).numpy()
    # 8-bit ramp: ±1 level after the two roundings, i.e. ±W/255 pixels (0.55 px here)
    np.testing.assert_allclose(decoded[inside], pre_images[inside], atol=1.0 * width / 255 + 1e-9)
    assert (warped[2].reshape(-1).numpy()[inside] == 255).all()  # the source's blue, unmixed with the fill
    far_outside = warp_points(np.linalg.inv(warp.matrix), targets)
    outside = (far_outside < -1).any(axis=1) | (far_outside[:, 0] > width + 1) | (far_outside[:, 1] > height + 1)
    assert (warped.reshape(3, -1).numpy()[:, outside] == 0).all()  # black where the source is not
    np.testing.assert_allclose(warp_points(warp.matrix, pre_images), targets, atol=1e-9)  # M and M⁻¹ agree


def test_homography_from_points_maps_the_four_points():
    source = np.array([[0.0, 0.0], [140.0, 0.0], [140.0, 112.0], [0.0, 112.0]])
    target = source + np.array([[3.0, -2.0], [-5.0, 4.0], [2.0, 6.0], [-1.0, -3.0]])
    matrix = homography_from_points(source, target)
    np.testing.assert_allclose(warp_points(matrix, source), target, atol=1e-9)
    assert np.array_equal(homography_from_points(source, source), np.eye(3))


def test_warp_depends_only_on_seed_and_index():
    config = CorrespondenceConfig(input_size=VIEW)
    a, b = sample_warp(config, 5), sample_warp(config, 5)
    assert np.array_equal(a.matrix, b.matrix) and torch.equal(a.photometric, b.photometric)
    assert not np.array_equal(a.matrix, sample_warp(config, 6).matrix)
    assert not np.array_equal(a.matrix, sample_warp(replace(config, seed=1), 5).matrix)
    # every draw is made whatever the settings, so turning flips off leaves the crop, rotation and jitter alone
    unflipped = sample_warp(CorrespondenceConfig(input_size=VIEW, flip_p=0.0), 5)
    assert (unflipped.crop_fraction, unflipped.crop_centre, unflipped.rotation) == (
        a.crop_fraction,
        a.crop_centre,
        a.rotation,
    )
    assert torch.equal(unflipped.photometric, a.photometric)


def test_draws_cover_the_configured_ranges():
    config = CorrespondenceConfig(input_size=VIEW, crop_fraction=(0.5, 0.9), max_rotation=15.0, perspective=0.1)
    warps = [sample_warp(config, i) for i in range(200)]
    fractions = np.array([w.crop_fraction for w in warps])
    assert 0.5 <= fractions.min() < 0.55 and 0.85 < fractions.max() <= 0.9
    assert max(abs(w.rotation) for w in warps) <= 15.0
    assert np.abs(np.stack([w.corner_shifts for w in warps])).max() <= 0.1
    assert 70 < sum(w.flip for w in warps) < 130
    for w in warps:  # the unrotated crop lies in the source view
        s, (cx, cy) = w.crop_fraction, w.crop_centre
        assert s * VIEW[1] / 2 - 1e-9 <= cx <= VIEW[1] - s * VIEW[1] / 2 + 1e-9
        assert s * VIEW[0] / 2 - 1e-9 <= cy <= VIEW[0] - s * VIEW[0] / 2 + 1e-9


def test_centres_within_counts_as_brute_force():
    rng = np.random.default_rng(0)
    points = rng.uniform(-20, 160, (300, 2))
    centres = pixel_centres(8, 10, PATCH)
    for radius in (7.0, 14.0, 30.5, 56.0):
        brute = (np.linalg.norm(points[:, None] - centres[None], axis=2) <= radius).sum(axis=1)
        np.testing.assert_array_equal(centres_within(points, 8, 10, PATCH, radius), brute)


# --- the scores -----------------------------------------------------------------------------------------------


def test_identity_warp_scores_100_with_any_backbone(tiny_backbone, noise_folder):
    result = warp_correspondence(
        tiny_backbone, noise_folder, CorrespondenceConfig(input_size=(56, 84), **IDENTITY), progress=False
    )
    assert result.pck == [100.0] * 3 and result.pck_pooled == [100.0] * 3 and result.mutual_pck == [100.0] * 3
    # every patch at least half a patch off the edge: the whole 4 × 6 grid of each of the 6 images
    assert result.num_matches == 6 * 24 == result.num_mutual_matches
    assert result.num_images == 6 and result.num_images_without_matches == 0
    assert result.thresholds_pixels == [14.0, 28.0, 56.0]
    assert result.alpha == pytest.approx([14 / 84, 28 / 84, 56 / 84])
    assert all(c < 100 for c in result.chance_pck)


@pytest.mark.parametrize("seed", [0, 1])
def test_perfect_extractor_scores_100_under_real_warps(seed):
    images = [ramp_image(*VIEW)] * 12
    config = CorrespondenceConfig(input_size=VIEW, seed=seed, thresholds=(1.0, 2.0), **NO_JITTER)
    result = warp_correspondence(ColourDecoder(), images, config, progress=False)
    assert result.num_matches > 12 * 20
    assert result.pck == [100.0, 100.0] and result.pck_pooled == [100.0, 100.0]
    # below √2/2 patch even a perfect matcher misses: its predictions are patch centres
    tight = warp_correspondence(ColourDecoder(), images, replace(config, thresholds=(0.25,)), progress=False)
    assert tight.pck[0] < 90


def test_random_features_score_about_chance():
    images = [ramp_image(*VIEW)] * 40
    config = CorrespondenceConfig(input_size=VIEW, thresholds=(1.0, 2.0, 4.0))
    result = warp_correspondence(RandomFeatures(), images, config, progress=False)
    n = result.num_matches
    assert n > 1500
    for pck, chance in zip(result.pck_pooled, result.chance_pck):
        sd = 100 * math.sqrt(chance / 100 * (1 - chance / 100) / n)
        assert abs(pck - chance) < 4 * sd + 1.0, (pck, chance, sd)
    assert result.chance_pck[0] < result.chance_pck[1] < result.chance_pck[2] < 100


def test_results_repeat_bit_for_bit_across_runs_and_batch_sizes(tiny_backbone, noise_folder):
    config = CorrespondenceConfig(input_size=(56, 84), batch_size=4)
    first = warp_correspondence(tiny_backbone, noise_folder, config, progress=False)
    again = warp_correspondence(tiny_backbone, noise_folder, config, progress=False)
    for other in (
        again,
        *(
            warp_correspondence(tiny_backbone, noise_folder, replace(config, batch_size=b), progress=False)
            for b in (1, 5)
        ),
    ):
        np.testing.assert_array_equal(other.per_image_pck, first.per_image_pck)
        np.testing.assert_array_equal(other.per_image_matches, first.per_image_matches)
        assert other.pck == first.pck and other.mutual_pck == first.mutual_pck
        assert other.num_mutual_matches == first.num_mutual_matches
    # an image's score does not depend on the others: the first 2 images alone score as they did among 6
    prefix = warp_correspondence(tiny_backbone, noise_folder, replace(config, max_images=2), progress=False)
    np.testing.assert_array_equal(prefix.per_image_pck, first.per_image_pck[:2])
    assert prefix.images == first.images[:2] and prefix.settings["num_images_total"] == 6


def test_result_summary_is_json_and_a_table(tiny_backbone, noise_folder):
    result = warp_correspondence(
        tiny_backbone, noise_folder, CorrespondenceConfig(input_size=(56, 84), thresholds=(1, 3)), progress=False
    )
    data = json.loads(json.dumps(result.to_dict()))
    assert data["thresholds"] == [1.0, 3.0] and len(data["pck"]) == 2
    assert data["settings"]["patch_size"] == PATCH and data["settings"]["grid_size"] == [4, 6]
    assert data["settings"]["input_size"] == [56, 84]
    table = result.format_table()
    assert "PCK" in table and f"{result.num_matches} matches" in table and len(table.splitlines()) == 4


def test_backbone_mode_is_restored(tiny_backbone, noise_folder):
    tiny_backbone.train()
    warp_correspondence(tiny_backbone, noise_folder, CorrespondenceConfig(input_size=(56, 84)), progress=False)
    assert tiny_backbone.training


# --- the inputs -----------------------------------------------------------------------------------------------


def test_folder_listing_reads_any_format_sorted_and_recursive(tmp_path, tiny_backbone):
    rng = np.random.default_rng(0)
    (tmp_path / "b").mkdir()
    (tmp_path / ".hidden").mkdir()
    random_image(rng, 50, 70).save(tmp_path / "b" / "z.JPG")
    random_image(rng, 90, 40).convert("L").save(tmp_path / "a.png")
    random_image(rng, 30, 30).convert("RGBA").save(tmp_path / "c.webp")
    random_image(rng, 30, 30).save(tmp_path / ".hidden" / "x.png")
    (tmp_path / "notes.txt").write_text("not an image")
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)] == ["a.png", "b/z.JPG", "c.webp"]
    result = warp_correspondence(tiny_backbone, tmp_path, CorrespondenceConfig(input_size=(56, 84)), progress=False)
    assert result.images == ["a.png", "b/z.JPG", "c.webp"] and result.per_image_pck.shape == (3, 3)


def test_segmentation_style_dataset_items_are_read(tiny_backbone):
    rng = np.random.default_rng(0)
    dataset = [(random_image(rng, 60, 80), np.zeros((60, 80), np.int64)) for _ in range(3)]
    result = warp_correspondence(tiny_backbone, dataset, CorrespondenceConfig(input_size=(56, 84)), progress=False)
    assert result.images == ["0", "1", "2"] and result.num_images == 3


def test_empty_or_missing_folders_are_refused(tmp_path, tiny_backbone):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(ConfigError, match="no image files"):
        warp_correspondence(tiny_backbone, tmp_path / "empty", progress=False)
    with pytest.raises(MissingPathError, match="does not exist"):
        warp_correspondence(tiny_backbone, tmp_path / "nowhere", progress=False)
    with pytest.raises(ConfigError, match="is a file"):
        warp_correspondence(tiny_backbone, tmp_path / "empty" / "readme.txt", progress=False)
    with pytest.raises(ConfigError, match="empty"):
        warp_correspondence(tiny_backbone, [], progress=False)
    with pytest.raises(ConfigError, match="folder or a dataset"):
        warp_correspondence(tiny_backbone, 3, progress=False)


def test_unreadable_image_and_non_image_items_are_refused(tmp_path, tiny_backbone):
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ConfigError, match="broken.jpg: cannot read it"):
        warp_correspondence(tiny_backbone, tmp_path, CorrespondenceConfig(input_size=(56, 84)), progress=False)
    with pytest.raises(ConfigError, match="not a PIL image"):
        warp_correspondence(
            tiny_backbone, [np.zeros((8, 8, 3))], CorrespondenceConfig(input_size=(56, 84)), progress=False
        )


def test_input_size_must_be_a_patch_multiple(tiny_backbone, noise_folder):
    with pytest.raises(
        ConfigError, match=r"input_size \(56, 80\) is not a multiple of the model's patch size 14.*\(56, 84\)"
    ):
        warp_correspondence(tiny_backbone, noise_folder, CorrespondenceConfig(input_size=(56, 80)), progress=False)


def test_a_backbone_without_a_patch_grid_is_refused(noise_folder):
    class Pooled(RandomFeatures):
        def forward(self, pixels):
            return super().forward(pixels).mean(dim=(-2, -1))

    with pytest.raises(ConfigError, match="must return the patch grid"):
        warp_correspondence(Pooled(), noise_folder, CorrespondenceConfig(input_size=(56, 84)), progress=False)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("input_size", (56, 84, 3), "input_size"),
        ("input_size", 0, "positive"),
        ("thresholds", (), "thresholds"),
        ("thresholds", (1.0, -2.0), "thresholds"),
        ("crop_fraction", (0.8, 0.5), "crop_fraction"),
        ("crop_fraction", (0.0, 1.0), "crop_fraction"),
        ("crop_fraction", (0.5, 1.5), "crop_fraction"),
        ("flip_p", 1.5, "flip_p"),
        ("max_rotation", 60.0, "max_rotation"),
        ("perspective", 0.5, "perspective"),
        ("brightness", -0.1, "brightness"),
        ("hue", 0.6, "hue"),
        ("border_patches", -1.0, "border_patches"),
        ("seed", -1, "seed"),
        ("batch_size", 0, "batch_size"),
        ("max_images", 0, "max_images"),
    ],
)
def test_bad_settings_are_refused(field, value, message):
    with pytest.raises(ConfigError, match=message):
        CorrespondenceConfig(**{field: value})
