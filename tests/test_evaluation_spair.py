"""SPair-71k keypoint transfer on generated archives in the official layout: the reader, the geometry, PCK by
hand (threshold, box, averages), a perfect and a constant extractor, a tiny real backbone, and malformed data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from paka_hf.evaluation.spair import (
    LARGE_LAYOUT_PAIRS,
    SPairConfig,
    keypoints_to_view,
    nearest_cell_centres,
    prepare_view,
    read_spair_pairs,
    sample_point_features,
    spair_keypoint_transfer,
    transfer_keypoints,
    view_to_keypoints,
)
from paka_hf.modeling.backbones import PatchBackbone
from paka_hf.testing import tiny_dinov2_config
from paka_hf.utils.errors import ConfigError, MissingPathError

PATCH = 14


def gray(width: int, height: int) -> Image.Image:
    return Image.new("RGB", (width, height), (128, 128, 128))


def ramp(width: int, height: int) -> Image.Image:
    """Red and green encode the pixel centre's x / W and y / H; blue is 0 (the white padding has blue 255)."""
    y, x = np.mgrid[0:height, 0:width] + 0.5
    rgb = np.stack([np.round(255 * x / width), np.round(255 * y / height), np.zeros_like(x)], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8))


def pair_spec(category, source, target, src_kps, trg_kps, *, src_bbox=None, trg_bbox=None, viewpoint=0):
    """One pair: ``source`` / ``target`` are ``(name, PIL image)``."""
    return dict(
        category=category,
        source=source,
        target=target,
        src_kps=src_kps,
        trg_kps=trg_kps,
        src_bbox=src_bbox or [0, 0, source[1].width, source[1].height],
        trg_bbox=trg_bbox or [0, 0, target[1].width, target[1].height],
        viewpoint=viewpoint,
    )


def write_archive(root: Path, specs: list[dict], split: str = "test") -> Path:
    """An ``SPair-71k`` folder with these pairs (numbered from 1 in order) in ``Layout/large/<split>.txt``."""
    archive = root / "SPair-71k"
    lines = []
    for number, spec in enumerate(specs, 1):
        category = spec["category"]
        (archive / "JPEGImages" / category).mkdir(parents=True, exist_ok=True)
        for name, image in (spec["source"], spec["target"]):
            image.save(archive / "JPEGImages" / category / f"{name}.jpg", quality=100, subsampling=0)
        line = f"{number:06d}-{spec['source'][0]}-{spec['target'][0]}:{category}"
        lines.append(line)
        annotation = {
            "pair_id": number,
            "src_imname": f"{spec['source'][0]}.jpg",
            "trg_imname": f"{spec['target'][0]}.jpg",
            "src_imsize": [spec["source"][1].width, spec["source"][1].height, 3],
            "trg_imsize": [spec["target"][1].width, spec["target"][1].height, 3],
            "src_bndbox": spec["src_bbox"],
            "trg_bndbox": spec["trg_bbox"],
            "src_kps": spec["src_kps"],
            "trg_kps": spec["trg_kps"],
            "kps_ids": [str(i) for i in range(len(spec["src_kps"]))],
            "category": category,
            "viewpoint_variation": spec["viewpoint"],
            "scale_variation": 0,
            "truncation": 0,
            "occlusion": 0,
            "mirror": 0,
        }
        folder = archive / "PairAnnotation" / split
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{line}.json").write_text(json.dumps(annotation))
    for layout in ("large", "small"):
        (archive / "Layout" / layout).mkdir(parents=True, exist_ok=True)
        for name in ("trn", "val", "test"):
            path = archive / "Layout" / layout / f"{name}.txt"
            if not path.exists():
                path.write_text("")
        (archive / "Layout" / layout / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return archive


class Constant(torch.nn.Module):
    """Every patch has the same feature: every cosine ties, so every keypoint goes to the first patch's centre."""

    patch_size = PATCH
    image_mean = (0.0, 0.0, 0.0)
    image_std = (1.0, 1.0, 1.0)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = pixels.shape
        return torch.ones(batch, 4, height // PATCH, width // PATCH)


class RampDecoder(torch.nn.Module):
    """A perfect extractor for :func:`ramp` images: each patch decodes the object position ``(x/W, y/H)`` its image
    pixels show (undoing the white padding mixed in, whose blue is 255) and emits Gaussian bumps on a grid of anchors,
    so the cosine of two patches falls with the distance between their positions. A patch of padding only is 0."""

    patch_size = PATCH
    image_mean = (0.0, 0.0, 0.0)
    image_std = (1.0, 1.0, 1.0)
    calls: list[int]

    def __init__(self):
        super().__init__()
        self.calls = []
        axis = torch.arange(-0.3, 1.3001, 0.04, dtype=torch.float64)
        self.anchors = torch.cartesian_prod(axis, axis)  # (A, 2)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        self.calls.append(pixels.shape[0])
        batch, _, height, width = pixels.shape
        means = F.avg_pool2d(pixels.double(), PATCH)  # (B, 3, h, w)
        pad = means[:, 2]
        image = (1 - pad).clamp_min(1e-6)
        u, v = (means[:, 0] - pad) / image, (means[:, 1] - pad) / image
        position = torch.stack([u, v], dim=-1)[..., None, :]  # (B, h, w, 1, 2)
        bumps = torch.exp(-((position - self.anchors) ** 2).sum(-1) / (2 * 0.06**2))  # (B, h, w, A)
        bumps = bumps * (pad < 0.99)[..., None]
        return bumps.permute(0, 3, 1, 2).float()


def ramp_pairs() -> list[dict]:
    """Two categories; the target is the same ramp object at another size and aspect, so ``trg = src`` scaled."""
    specs = []
    sizes = {"a": (160, 120), "b": (120, 200), "c": (200, 150)}
    rng = np.random.default_rng(0)
    for category, (source, target) in (("cat", ("a", "b")), ("cat", ("b", "c")), ("dog", ("c", "a"))):
        (ws, hs), (wt, ht) = sizes[source], sizes[target]
        points = rng.uniform(0.1, 0.9, size=(6, 2))
        src = np.floor(points * (ws, hs)).astype(int)
        trg = np.round((src + 0.5) * (wt / ws, ht / hs) - 0.5).astype(int)
        specs.append(
            pair_spec(
                category,
                (f"{category}_{source}", ramp(ws, hs)),
                (f"{category}_{target}", ramp(wt, ht)),
                src.tolist(),
                trg.tolist(),
            )
        )
    return specs


# The constant extractor on a 112 × 112 target (stretch, view 112: scale 1) predicts the first patch's centre,
# (7, 7) in the view = (6.5, 6.5) in pixel indices. With L = 100, these targets lie at 9.51, 10.51, 10.0 (exactly
# α L at α = 0.1), 75.7 and 4.5 pixels.
HAND_TARGETS = [[16, 7], [17, 7], [16.5, 6.5], [60, 60], [11, 6.5]]
HAND_CORRECT = {0.05: [0, 0, 0, 0, 1], 0.1: [1, 0, 1, 0, 1], 0.15: [1, 1, 1, 0, 1]}
CONSTANT = dict(input_size=112, resize="stretch")


def hand_pair(category="cat", targets=HAND_TARGETS, trg_bbox=(5, 10, 105, 60), viewpoint=0, names=("s", "t")):
    return pair_spec(
        category,
        (f"{category}_{names[0]}", gray(112, 112)),
        (f"{category}_{names[1]}", gray(112, 112)),
        [[50, 50]] * len(targets),
        targets,
        src_bbox=[0, 0, 10, 10],  # a small source box: the threshold must come from the target's
        trg_bbox=list(trg_bbox),
        viewpoint=viewpoint,
    )


# ---------------------------------------------------------------- reader


def test_reader_returns_pairs_in_layout_order_with_their_annotations(tmp_path):
    specs = ramp_pairs()
    write_archive(tmp_path, specs)
    pairs = read_spair_pairs(tmp_path)  # the folder holding SPair-71k/ works too
    assert [p.pair_id for p in pairs] == [
        "000001-cat_a-cat_b:cat",
        "000002-cat_b-cat_c:cat",
        "000003-dog_c-dog_a:dog",
    ]
    for pair, spec in zip(pairs, specs):
        assert pair.category == spec["category"]
        assert pair.source == f"{spec['source'][0]}.jpg" and pair.target == f"{spec['target'][0]}.jpg"
        np.testing.assert_array_equal(pair.source_keypoints, spec["src_kps"])
        np.testing.assert_array_equal(pair.target_keypoints, spec["trg_kps"])
        assert pair.source_keypoints.shape == (6, 2) and pair.num_keypoints == 6
        assert pair.target_bbox == tuple(float(v) for v in spec["trg_bbox"])
        assert pair.source_size == spec["source"][1].size and pair.target_size == spec["target"][1].size
        assert pair.viewpoint_variation == 0
    assert pairs[0].threshold_length == 200.0  # the 120 × 200 target: max(w, h)
    same = read_spair_pairs(tmp_path / "SPair-71k", "test")
    assert [p.pair_id for p in same] == [p.pair_id for p in pairs]


def test_reader_filters_keep_the_layout_order(tmp_path):
    write_archive(tmp_path, ramp_pairs(), split="val")
    assert [p.category for p in read_spair_pairs(tmp_path, "validation")] == ["cat", "cat", "dog"]
    assert [p.pair_id[:6] for p in read_spair_pairs(tmp_path, "val", max_pairs=2)] == ["000001", "000002"]
    assert [p.pair_id[:6] for p in read_spair_pairs(tmp_path, "val", max_pairs_per_category=1)] == ["000001", "000003"]
    assert [p.category for p in read_spair_pairs(tmp_path, "val", categories=["dog"])] == ["dog"]
    with pytest.raises(ConfigError, match=r"categories \['bird'\] are not in the val split; choose from"):
        read_spair_pairs(tmp_path, "val", categories=["bird"])
    with pytest.raises(ConfigError, match="lists no pairs"):
        read_spair_pairs(tmp_path, "test")


def test_large_layout_counts_are_the_published_ones():
    assert LARGE_LAYOUT_PAIRS == {"trn": 53_340, "val": 5_384, "test": 12_234}
    assert sum(LARGE_LAYOUT_PAIRS.values()) == 70_958


def _edit_annotation(archive: Path, change) -> Path:
    path = next((archive / "PairAnnotation" / "test").glob("*.json"))
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(trg_kps=d["trg_kps"][:-1]), "5 source keypoints but 4 target keypoints"),
        (lambda d: d.pop("trg_bndbox"), "no trg_bndbox; the annotation is malformed"),
        (lambda d: d.update(category="dog"), "category 'dog' but the layout line says 'cat'"),
        (lambda d: d.update(src_imname="other.jpg"), "src_imname 'other.jpg' but the layout line says 'cat_s.jpg'"),
        (lambda d: d.update(src_kps=[[1, 2, 3]] * 5), r"src_kps must be a list of \[x, y\] pairs"),
        (lambda d: d.update(src_kps=[["a", 2]] * 5), "src_kps has a coordinate that is not a finite number"),
        (lambda d: d.update(src_kps=[], trg_kps=[]), "no keypoints in src_kps / trg_kps"),
        (lambda d: d.update(trg_bndbox=[5, 10, 5, 60]), r"trg_bndbox must be \[x1, y1, x2, y2\] with x2 > x1"),
        (lambda d: d.update(src_imsize=[112]), r"src_imsize must be \[width, height, depth\]"),
    ],
)
def test_malformed_annotations_raise_one_line_errors(tmp_path, change, message):
    archive = write_archive(tmp_path, [hand_pair()])
    path = _edit_annotation(archive, change)
    with pytest.raises(ConfigError, match=message) as caught:
        read_spair_pairs(tmp_path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_broken_archive_files_raise(tmp_path):
    archive = write_archive(tmp_path, [hand_pair()])
    annotation = next((archive / "PairAnnotation" / "test").glob("*.json"))
    annotation.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_spair_pairs(tmp_path)
    annotation.unlink()
    with pytest.raises(ConfigError, match="missing; the layout lists pair '000001-cat_s-cat_t:cat'"):
        read_spair_pairs(tmp_path)

    archive = write_archive(tmp_path / "b", [hand_pair()])
    (archive / "JPEGImages" / "cat" / "cat_t.jpg").unlink()
    with pytest.raises(ConfigError, match=r"its image .*cat_t\.jpg' is missing"):
        read_spair_pairs(archive)

    archive = write_archive(tmp_path / "c", [hand_pair()])
    (archive / "Layout" / "large" / "test.txt").write_text("000001-cat_s:cat\n")
    with pytest.raises(ConfigError, match="is not '<pair>-<source>-<target>:<category>'"):
        read_spair_pairs(archive)
    (archive / "Layout" / "large" / "test.txt").write_text("000001-cat_s-cat_t:cat\n000001-cat_s-cat_t:cat\n")
    with pytest.raises(ConfigError, match="more than once"):
        read_spair_pairs(archive)
    (archive / "Layout" / "large" / "test.txt").unlink()
    with pytest.raises(ConfigError, match=r"test\.txt' is missing; an SPair-71k archive lists each split"):
        read_spair_pairs(archive)

    with pytest.raises(MissingPathError, match="does not exist"):
        read_spair_pairs(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="is not an SPair-71k archive"):
        read_spair_pairs(tmp_path / "empty")
    with pytest.raises(ConfigError, match="split must be one of"):
        read_spair_pairs(archive, "training")
    with pytest.raises(ConfigError, match="layout must be one of"):
        read_spair_pairs(archive, layout="medium")


def test_an_image_of_another_size_than_its_annotation_raises(tmp_path):
    archive = write_archive(tmp_path, [hand_pair()])
    gray(100, 112).save(archive / "JPEGImages" / "cat" / "cat_t.jpg")
    with pytest.raises(ConfigError, match=r"cat_t\.jpg: 100x112 pixels but pair .* says 112x112 \(imsize\)"):
        spair_keypoint_transfer(Constant(), tmp_path, SPairConfig(**CONSTANT), progress=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(alpha=0), "alpha and alphas must be positive"),
        (dict(alphas=(0.1, math.nan)), "alpha and alphas must be positive"),
        (dict(resize="crop"), "resize must be one of"),
        (dict(source_sampling="bicubic"), "source_sampling must be one of"),
        (dict(upsample=0), "upsample must be a positive integer"),
        (dict(upsample=1.5), "upsample must be a positive integer factor"),
        (dict(input_size=(1, 2, 3)), "input_size must be a side or"),
        (dict(max_pairs=0), "max_pairs must be a positive integer"),
        (dict(categories=()), "categories must name at least one"),
        (dict(split="train2"), "split must be one of"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SPairConfig(**kwargs)


def test_config_adds_the_headline_alpha_and_sorts():
    config = SPairConfig(alpha=0.2, alphas=(0.15, 0.05), split="train", categories="cat")
    assert config.alphas == (0.05, 0.15, 0.2) and config.split == "trn" and config.categories == ("cat",)
    assert config.to_dict()["input_size"] == [448, 448]


def test_input_size_must_be_a_multiple_of_the_patch(tmp_path):
    write_archive(tmp_path, [hand_pair()])
    with pytest.raises(ConfigError, match="input_size=100 is not a multiple of the model's patch size 14"):
        spair_keypoint_transfer(Constant(), tmp_path, SPairConfig(input_size=100), progress=False)


# ---------------------------------------------------------------- geometry


def test_prepare_view_pads_bottom_right_with_white_and_keeps_the_aspect():
    view, scale = prepare_view(gray(160, 120), (224, 224), "pad")
    assert view.shape == (3, 224, 224) and scale == (1.4, 1.4)
    assert (view[:, 168:] == 255).all() and (view[:, :168] == 128).all()
    view, scale = prepare_view(gray(120, 200), (112, 224), "pad")  # (H, W): limited by the height
    assert scale == pytest.approx((67 / 120, 112 / 200)) and (view[:, :, 67:] == 255).all()
    view, scale = prepare_view(gray(160, 120), (112, 224), "stretch")
    assert view.shape == (3, 112, 224) and scale == (224 / 160, 112 / 120) and (view == 128).all()


def test_keypoints_map_to_pixel_centres_in_the_view_and_back():
    points = np.array([[0, 0], [159, 119], [10, 20]])
    view = keypoints_to_view(points, (1.4, 2.0))
    np.testing.assert_allclose(view, [[0.7, 1.0], [223.3, 239.0], [14.7, 41.0]])
    np.testing.assert_allclose(view_to_keypoints(view, (1.4, 2.0)), points, atol=1e-12)


def test_source_features_interpolate_between_patch_centres():
    grid = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)  # D = 2, 3 × 4 patches
    at_centre = sample_point_features(grid, np.array([[1.5 * PATCH, 0.5 * PATCH]]), PATCH)
    torch.testing.assert_close(at_centre, grid[:, 0, 1][None])
    between = sample_point_features(grid, np.array([[2 * PATCH, 1 * PATCH]]), PATCH)
    torch.testing.assert_close(between, grid[:, :2, 1:3].mean(dim=(1, 2))[None])
    corner = sample_point_features(grid, np.array([[0.0, 0.0]]), PATCH)  # clamped at the border
    torch.testing.assert_close(corner, grid[:, 0, 0][None])
    nearest = sample_point_features(
        grid, np.array([[2 * PATCH - 0.01, 1 * PATCH + 0.01], [999, 999]]), PATCH, "nearest"
    )
    torch.testing.assert_close(nearest, torch.stack([grid[:, 1, 1], grid[:, 2, 3]]))


def test_the_nearest_cell_is_found_by_cosine_and_returned_as_its_centre():
    grid = torch.zeros(3, 2, 3)
    grid[0, 1, 2] = 5.0  # cosine 1 with query e0, whatever the norm
    grid[1, 0, 0] = 0.1
    queries = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    centres = nearest_cell_centres(queries, grid, PATCH)
    np.testing.assert_allclose(centres, [[2.5 * PATCH, 1.5 * PATCH], [0.5 * PATCH, 0.5 * PATCH], [7.0, 7.0]])
    # upsampled by 2, cells are half a patch: the prediction is a centre ((j + ½) p/2, (i + ½) p/2)
    up = transfer_keypoints(grid, grid, np.array([[2.5 * PATCH, 1.5 * PATCH]]), PATCH, sampling="nearest", upsample=2)
    cell = up[0] / (PATCH / 2) - 0.5
    np.testing.assert_array_equal(cell, np.round(cell))


# ---------------------------------------------------------------- PCK


def test_threshold_is_alpha_times_the_target_box_longer_side_inclusive(tmp_path):
    # a wide target box (100 × 50) and a tall one (50 × 100): L = 100 for both
    write_archive(tmp_path, [hand_pair(), hand_pair(trg_bbox=(5, 5, 55, 105), names=("s2", "t2"))])
    result = spair_keypoint_transfer(Constant(), tmp_path, SPairConfig(**CONSTANT), progress=False)
    np.testing.assert_allclose(
        result.errors[:5], [math.hypot(9.5, 0.5), math.hypot(10.5, 0.5), 10.0, math.hypot(53.5, 53.5), 4.5]
    )
    np.testing.assert_array_equal(result.threshold_lengths, 100.0)
    for a, expected in HAND_CORRECT.items():
        index = result.alphas.index(a)
        assert result.pck_keypoints[index] == pytest.approx(100 * np.mean(expected))
    assert result.pck == pytest.approx(60.0) and result.alpha == 0.1


def test_averages_over_categories_keypoints_and_pairs(tmp_path):
    specs = [
        hand_pair("cat", viewpoint=0),  # 3 of 5 correct at α = 0.1
        hand_pair("dog", targets=[[11, 6.5]], viewpoint=0),  # 1 of 1
        hand_pair("dog", targets=[[60, 60], [17, 7], [90, 6]], viewpoint=2, names=("s2", "t2")),  # 0 of 3
    ]
    write_archive(tmp_path, specs)
    result = spair_keypoint_transfer(Constant(), tmp_path, SPairConfig(**CONSTANT), progress=False)
    i = result.alphas.index(0.1)
    assert result.pck_categories[i] == pytest.approx((60 + 25) / 2) == result.pck
    assert result.pck_keypoints[i] == pytest.approx(100 * 4 / 9)
    assert result.pck_pairs[i] == pytest.approx((60 + 100 + 0) / 3)
    assert result.per_category["cat"] == {
        "pck_keypoints": pytest.approx([20.0, 60.0, 80.0]),
        "pck_pairs": pytest.approx([20.0, 60.0, 80.0]),
        "num_pairs": 1,
        "num_keypoints": 5,
    }
    assert result.per_category["dog"]["pck_pairs"][i] == pytest.approx(50.0)
    assert result.pck_viewpoint["0"][i] == pytest.approx((60 + 100) / 2) and result.pck_viewpoint["2"][i] == 0.0
    assert (result.num_pairs, result.num_keypoints, result.num_images, result.num_categories) == (3, 9, 6, 2)
    summary = json.loads(json.dumps(result.to_dict()))
    assert summary["pck"] == pytest.approx(42.5) and summary["settings"]["num_pairs_in_split"] == 3
    table = result.format_table()
    assert "mean over categories" in table and "headline PCK@0.1 = 42.50" in table


def test_constant_features_give_the_chance_of_the_first_patch(tmp_path):
    write_archive(tmp_path, ramp_pairs())
    result = spair_keypoint_transfer(Constant(), tmp_path, SPairConfig(input_size=224), progress=False)
    # every prediction is the first patch's centre mapped back to the target: (7 / s − ½, 7 / s − ½)
    pairs = read_spair_pairs(tmp_path)
    expected = []
    for pair in pairs:
        _, scale = prepare_view(gray(*pair.target_size), (224, 224), "pad")
        corner = 7 / np.asarray(scale) - 0.5
        expected.extend(np.hypot(*(pair.target_keypoints - corner).T))
    np.testing.assert_allclose(result.errors, expected, rtol=1e-6)
    assert result.pck < 20.0


@pytest.mark.parametrize("resize", ["pad", "stretch"])
def test_features_that_encode_the_true_position_score_100(tmp_path, resize):
    write_archive(tmp_path, ramp_pairs())
    decoder = RampDecoder()
    result = spair_keypoint_transfer(
        decoder, tmp_path, SPairConfig(input_size=224, resize=resize, batch_size=2), progress=False
    )
    for a in (0.1, 0.15):
        index = result.alphas.index(a)
        assert result.pck_categories[index] == result.pck_keypoints[index] == result.pck_pairs[index] == 100.0
    # a prediction is a patch centre: about half a patch's diagonal (≤ 9 original pixels here) from the truth
    assert result.errors.max() < 12.0
    assert sum(decoder.calls) == result.num_images == 5  # each image encoded once, though images repeat
    upsampled = spair_keypoint_transfer(
        RampDecoder(), tmp_path, SPairConfig(input_size=224, resize=resize, upsample=2), progress=False
    )
    assert upsampled.pck == 100.0 and upsampled.errors.mean() < result.errors.mean()


def test_a_tiny_real_backbone_runs_reproducibly_and_is_left_as_it_was(tmp_path):
    write_archive(tmp_path, ramp_pairs())
    torch.manual_seed(0)
    backbone = PatchBackbone.from_config(tiny_dinov2_config())
    backbone.train()
    config = SPairConfig(input_size=56, max_pairs=2, batch_size=3)
    first = spair_keypoint_transfer(backbone, tmp_path, config, progress=False)
    second = spair_keypoint_transfer(backbone, tmp_path, config, progress=False)
    assert backbone.training
    assert first.num_pairs == 2 and first.num_keypoints == 12 and first.num_images == 3
    assert first.settings["grid_size"] == [4, 4] and first.settings["patch_size"] == 14
    assert all(0.0 <= v <= 100.0 for v in first.pck_categories + first.pck_keypoints + first.pck_pairs)
    np.testing.assert_array_equal(first.errors, second.errors)
    assert first.to_dict() == second.to_dict()
