"""Feature pictures: the analyses on constructed features, the PNGs end to end, and a real-model check."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from transformers import AutoModel

from paka_hf.apps import pictures as viz


def _two_region_features(seed=0, h=6, w=8, dim=16):
    """Left half near one direction, right half near another, plus noise."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=dim), rng.normal(size=dim)
    feats = np.empty((h, w, dim))
    feats[:, : w // 2] = a
    feats[:, w // 2 :] = b
    return feats + 0.05 * rng.normal(size=feats.shape)


def test_pca_rgb_separates_regions_and_fixes_the_sign():
    maps = [_two_region_features(0), _two_region_features(0)[::-1]]
    rgb = viz.pca_rgb(maps)
    assert [r.shape for r in rgb] == [(6, 8, 3), (6, 8, 3)] and rgb[0].dtype == np.uint8
    # the only structure is left vs right: the first component (red channel) separates them, the other two
    # channels are stretched noise
    red = rgb[0][..., 0].astype(int)
    between = abs(red[:, :4].mean() - red[:, 4:].mean())
    within = max(red[:, :4].std(), red[:, 4:].std())
    assert between > 150 and within < between / 4
    assert rgb[0].min() == 0 and rgb[0].max() == 255  # full range used
    flipped = viz.pca_rgb([-m for m in maps])  # sign convention: a global sign flip gives the same picture
    np.testing.assert_array_equal(flipped[0], rgb[0])


def test_cluster_labels_follow_regions():
    labels = viz.cluster_labels([_two_region_features(1), _two_region_features(1)], n_clusters=2)
    for lab in labels:
        assert lab.shape == (6, 8)
        assert len(set(lab[:, :4].ravel())) == 1 and len(set(lab[:, 4:].ravel())) == 1
        assert lab[0, 0] != lab[0, -1]
    assert labels[0][0, 0] == labels[1][0, 0]  # one clustering across images: same region, same label


def test_similarity_and_top_matches():
    maps = [_two_region_features(2), _two_region_features(3)]
    sims = viz.similarity_maps(maps, (0, 2, 1))
    assert sims[0][2, 1] == pytest.approx(1.0, abs=1e-6)
    assert viz.top_matches(sims[0], 1) == [(2, 1)]
    assert all(c < 4 for _, c in viz.top_matches(sims[0], 10))  # best matches stay in the query's region


def test_colour_maps():
    rgb = viz.colorize_similarity(np.array([[-0.5, 0.0, 1.0]]))
    assert tuple(rgb[0, 0]) == tuple(rgb[0, 1]) == (68, 1, 84) and tuple(rgb[0, 2]) == (253, 231, 37)
    assert viz.colorize_labels(np.array([0, 20])).tolist() == [viz.PALETTE[0].tolist()] * 2


def test_make_pictures_writes_three_pngs(tmp_path, tiny_config):
    import torch

    torch.manual_seed(0)
    base, adapted = AutoModel.from_config(tiny_config()), AutoModel.from_config(tiny_config(registers=2))
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)) for _ in range(2)]
    paths = viz.make_pictures(base, adapted, images, tmp_path / "pictures", resolution=56, n_clusters=3)
    assert sorted(paths) == ["clusters", "pca", "retrieval"]
    for name, path in paths.items():
        picture = Image.open(path)
        assert picture.format == "PNG"
        # images shown at 84 x 56 (short side 56, sides multiples of 14)
        if name == "retrieval":  # rows: images, base, adapted; one column per image
            assert picture.width > 2 * 84 and picture.height > 3 * 56
        else:  # rows: images; columns: image, base, adapted
            assert picture.width > 3 * 84 and picture.height > 2 * 56
        assert len(np.unique(np.asarray(picture.convert("L")))) > 20  # not a blank canvas


def test_make_pictures_rejects_mismatched_patch_sizes(tmp_path, tiny_config):
    base, other = AutoModel.from_config(tiny_config()), AutoModel.from_config(tiny_config(patch_size=16))
    with pytest.raises(ValueError, match="patch sizes"):
        viz.make_pictures(base, other, [Image.new("RGB", (64, 64))], tmp_path)


def test_real_model_retrieves_sky_for_a_sky_query(small_model_path, camvid_path):
    """With the pretrained ViT-S/14 on CamVid, the nearest patches of a sky patch are sky in another image."""
    names = sorted((camvid_path / "val" / "images").iterdir())[:2]
    backbone = viz.as_backbone(small_model_path)
    feats, sky = [], []
    for name in names:
        _, pixels = viz.prepare_image(name, 224, 14, backbone.image_mean, backbone.image_std)
        feats.append(viz.patch_features(backbone, pixels))
        mask = viz.resize_and_crop(
            Image.open(camvid_path / "val" / "masks" / (name.stem + ".png")), 224, 14, Image.NEAREST
        )
        centres = np.asarray(mask)[7::14, 7::14]
        sky.append(centres == 0)  # class 0 = Sky
    assert sky[0].any() and sky[1].any()
    rows, cols = np.nonzero(sky[0])
    query = (0, int(rows[len(rows) // 2]), int(cols[len(cols) // 2]))
    sims = viz.similarity_maps(feats, query)
    matches = viz.top_matches(sims[1], 5)
    assert sum(bool(sky[1][r, c]) for r, c in matches) >= 4


def test_patch_at_maps_pixels_to_grid_cells():
    # a 588 x 448 picture over a 32 x 42 grid: 14 px per patch
    assert viz.patch_at(0, 0, (588, 448), (32, 42)) == (0, 0)
    assert viz.patch_at(14 * 5 + 3, 14 * 7 + 13, (588, 448), (32, 42)) == (7, 5)
    assert viz.patch_at(587.9, 447.9, (588, 448), (32, 42)) == (31, 41)
    assert viz.patch_at(10_000, -5, (588, 448), (32, 42)) == (0, 41)  # clamped


def test_similarity_maps_accepts_prenormalized_maps():
    maps = [_two_region_features(4), _two_region_features(5)]
    expected = viz.similarity_maps(maps, (1, 3, 6))
    got = viz.similarity_maps([viz.l2_normalize(m) for m in maps], (1, 3, 6), normalized=True)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, atol=1e-6)


def test_similarity_overlay_uses_one_fixed_scale_and_marks_patches():
    image = Image.new("RGB", (56, 28), "gray")
    sim = np.zeros((2, 4), dtype=np.float32)
    sim[0, 0] = 1.0
    # the same value gives the same colour in any map (fixed [0, 1] scale, not per-map min/max)
    a = np.asarray(viz.similarity_overlay(image, sim, alpha=1.0))
    b = np.asarray(viz.similarity_overlay(image, sim * 0.5 + np.eye(2, 4, dtype=np.float32) * 0.5, alpha=1.0))
    assert tuple(a[20, 40]) == tuple(b[20, 40]) == (68, 1, 84)  # 0.0 in both maps
    assert tuple(a[2, 2]) == tuple(b[2, 2]) == (253, 231, 37)  # 1.0 in both maps
    marked = np.asarray(viz.similarity_overlay(image, sim, query=(1, 2), matches=[(0, 3)], alpha=1.0))
    assert tuple(marked[14, 28]) == (255, 255, 255)  # white box: top-left corner of patch (1, 2)
    assert tuple(marked[0, 42]) == (0, 0, 0)  # black box: top-left corner of patch (0, 3)


def test_prepare_image_uses_the_given_normalization():
    image = Image.new("RGB", (28, 28), (255, 0, 128))
    _, pixels = viz.prepare_image(image, 28, 14, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    np.testing.assert_allclose(pixels[0, :, 0, 0].numpy(), [1.0, -1.0, 128 / 255 * 2 - 1], atol=1e-6)
    _, imagenet = viz.prepare_image(image, 28, 14, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    assert imagenet[0, 0, 0, 0].item() == pytest.approx((1 - 0.485) / 0.229, abs=1e-5)
