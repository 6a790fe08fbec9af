"""The depth probe: NYUv2 .mat and folder readers, masks, SigLoss, metrics, and the probe learning a known task."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from paka_hf.evaluation.depth import (
    EIGEN_CROP,
    DepthFeatures,
    DepthProbeConfig,
    FolderDepth,
    NYUv2Labeled,
    average_depth_metrics,
    depth_input_size,
    depth_probe,
    evaluate_depth_probe,
    extract_depth_features,
    image_depth_metrics,
    load_depth_dataset,
    predict_depth,
    read_depth_file,
    read_nyu_split,
    run_depth_probe,
    sig_loss,
    train_depth_probe,
    valid_depth_mask,
)
from paka_hf.modeling.backbones import PatchBackbone
from paka_hf.testing import tiny_dinov2_config
from paka_hf.utils.errors import ConfigError, EmptyDatasetError, MissingPathError


def h5py_module():
    """h5py (the extra [depth]); the NYUv2 tests skip without it, the folder tests do not need it."""
    return pytest.importorskip("h5py")


# --------------------------------------------------------------------------------------------
# NYUv2's labelled .mat (MATLAB v7.3 = HDF5)
# --------------------------------------------------------------------------------------------

H, W, N = 4, 5, 3  # a tiny frame, not square, so a transposed read cannot pass


def matlab_arrays():
    """Arrays as MATLAB holds them: images H x W x 3 x N uint8, depths H x W x N single, every value distinct."""
    y, x, c, n = np.meshgrid(np.arange(H), np.arange(W), np.arange(3), np.arange(N), indexing="ij")
    images = (y * 40 + x * 7 + c * 2 + n).astype(np.uint8)
    y, x, n = np.meshgrid(np.arange(H), np.arange(W), np.arange(N), indexing="ij")
    depths = (1 + y + 0.1 * x + 0.01 * n).astype(np.float32)
    return images, depths


def write_v73(path, **arrays):
    """A MATLAB v7.3 file as MATLAB writes it: a 512-byte user block with the MAT header, then HDF5 datasets
    whose axes are MATLAB's reversed (MATLAB is column-major, HDF5 row-major)."""
    with h5py_module().File(path, "w", userblock_size=512) as handle:
        for name, value in arrays.items():
            handle[name] = np.asarray(value).transpose()  # reverses every axis
            handle[name].attrs["MATLAB_class"] = np.bytes_("uint8" if value.dtype == np.uint8 else "single")
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    # 116 bytes of text, 8 of subsystem offset, version 0x0200 and the endian mark "IM" (little-endian)
    header = text.ljust(116, b" ") + b" " * 8 + b"\x00\x02IM"
    with open(path, "r+b") as handle:
        handle.write(header.ljust(512, b"\x00"))
    return path


@pytest.fixture
def nyu_mat(tmp_path):
    images, depths = matlab_arrays()
    raw = depths.copy()
    raw[0, 0, :] = 0  # the sensor's holes
    write_v73(tmp_path / "nyu_depth_v2_labeled.mat", images=images, depths=depths, rawDepths=raw)
    from scipy.io import savemat

    savemat(tmp_path / "splits.mat", {"trainNdxs": np.array([[3], [1]]), "testNdxs": np.array([[2]])})
    return tmp_path / "nyu_depth_v2_labeled.mat", images, depths, raw


def test_nyu_layout_is_matlab_reversed(nyu_mat):
    path, images, _, _ = nyu_mat
    with h5py_module().File(path, "r") as handle:
        assert handle["images"].shape == (N, 3, W, H)  # (N, C, W, H): what h5py sees of MATLAB's H x W x 3 x N
        assert handle["depths"].shape == (N, W, H)


def test_nyu_reader_orientation_and_split(nyu_mat):
    path, images, depths, raw = nyu_mat
    test = NYUv2Labeled(path, "test", splits_file=path.parent / "splits.mat", depth_key="depths")
    assert len(test) == 1 and test.image_size == (H, W)
    image, depth = test[0]  # 1-based testNdxs 2 → image 1
    assert image.size == (W, H) and image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image), images[:, :, :, 1])
    assert depth.dtype == np.float32 and depth.shape == (H, W)
    np.testing.assert_array_equal(depth, depths[:, :, 1])
    train = NYUv2Labeled(path, "train", splits_file=path.parent / "splits.mat")  # rawDepths by default
    assert list(train.indices) == [0, 2]  # sorted, 0-based
    _, first = train[0]
    np.testing.assert_array_equal(first, raw[:, :, 0])
    assert first[0, 0] == 0
    assert len(NYUv2Labeled(path, "all")) == N


def test_nyu_reader_in_dataloader_workers(nyu_mat):
    path, images, _, _ = nyu_mat
    dataset = NYUv2Labeled(path, "all")
    dataset[0]  # the parent's handle is open: workers must open their own
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2, collate_fn=lambda item: item)
    got = [np.asarray(image) for image, _ in loader]
    for i, image in enumerate(got):
        np.testing.assert_array_equal(image, images[:, :, :, i])


def test_split_text_file_and_v73_splits(tmp_path, nyu_mat):
    path = nyu_mat[0]
    listing = tmp_path / "test.txt"
    listing.write_text("# official test images\n3\n1\n\n")
    assert list(read_nyu_split(listing, "test", N)) == [0, 2]
    write_v73(tmp_path / "splits73.mat", trainNdxs=np.array([[1.0]]), testNdxs=np.array([[2.0], [3.0]]))
    assert list(read_nyu_split(tmp_path / "splits73.mat", "test", N)) == [1, 2]
    assert len(NYUv2Labeled(path, "test", splits_file=listing)) == 2


@pytest.mark.parametrize(
    "lines, message",
    [("0\n1\n", "outside 1..3"), ("4\n", "outside 1..3"), ("1\n1\n", "more than once"), ("one\n", "one 1-based")],
)
def test_split_text_file_errors(tmp_path, lines, message):
    listing = tmp_path / "split.txt"
    listing.write_text(lines)
    with pytest.raises(ConfigError, match=message):
        read_nyu_split(listing, "test", N)


def test_nyu_errors(tmp_path, nyu_mat):
    path = nyu_mat[0]
    with pytest.raises(ConfigError, match="needs splits_file"):
        NYUv2Labeled(path, "test")
    with pytest.raises(ConfigError, match="split must be one of"):
        NYUv2Labeled(path, "val")
    with pytest.raises(ConfigError, match="no dataset 'rawDepths'"):
        NYUv2Labeled(write_v73(tmp_path / "a.mat", images=matlab_arrays()[0], depths=matlab_arrays()[1]), "all")
    with pytest.raises(ConfigError, match="expected uint8"):
        images, depths = matlab_arrays()
        NYUv2Labeled(write_v73(tmp_path / "b.mat", images=images.astype(np.float32), rawDepths=depths), "all")
    with pytest.raises(ConfigError, match="does not match 'images'"):
        NYUv2Labeled(write_v73(tmp_path / "c.mat", images=images, rawDepths=depths[:, :4]), "all")
    with pytest.raises(ConfigError, match="expected float metres"):
        NYUv2Labeled(write_v73(tmp_path / "d.mat", images=images, rawDepths=(depths * 1000).astype(np.uint16)), "all")
    (tmp_path / "text.mat").write_text("not HDF5")
    with pytest.raises(ConfigError, match="not a MATLAB v7.3"):
        NYUv2Labeled(tmp_path / "text.mat", "all")
    with pytest.raises(MissingPathError):
        NYUv2Labeled(tmp_path / "absent.mat", "all")
    from scipy.io import savemat

    savemat(tmp_path / "other.mat", {"trainIdx": np.array([[1]])})
    with pytest.raises(ConfigError, match="has no 'testNdxs'"):
        read_nyu_split(tmp_path / "other.mat", "test", N)


# --------------------------------------------------------------------------------------------
# image + depth folders
# --------------------------------------------------------------------------------------------


def write_folder(root, stems=("a", "b"), size=(5, 4), encoding="png", seed=0):
    """images/<stem>.png and depth/<stem>.{png,npy}; returns {stem: depth metres}."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "depth").mkdir(parents=True, exist_ok=True)
    width, height = size
    truth = {}
    for stem in stems:
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(root / "images" / f"{stem}.png")
        millimetres = rng.integers(0, 12000, (height, width)).astype(np.uint16)
        millimetres[0, 0] = 0
        if encoding == "png":
            Image.fromarray(millimetres).save(root / "depth" / f"{stem}.png")
        else:
            np.save(root / "depth" / f"{stem}.npy", millimetres.astype(np.float32) / 1000)
        truth[stem] = millimetres.astype(np.float32) / 1000
    return truth


@pytest.mark.parametrize("encoding", ["png", "npy"])
def test_folder_reads_both_encodings(tmp_path, encoding):
    truth = write_folder(tmp_path / "test", encoding=encoding)
    dataset = FolderDepth(tmp_path, "test")
    assert len(dataset) == 2 and dataset.describe()["images"] == 2
    image, depth = dataset[1]
    assert image.size == (5, 4) and depth.shape == (4, 5) and depth.dtype == np.float32
    np.testing.assert_allclose(depth, truth["b"], rtol=0, atol=1e-6)
    assert depth[0, 0] == 0
    assert isinstance(load_depth_dataset(tmp_path / "test", None), FolderDepth)


def test_sixteen_bit_png_is_millimetres(tmp_path):
    Image.fromarray(np.array([[0, 1500], [65535, 10]], np.uint16)).save(tmp_path / "d.png")
    np.testing.assert_allclose(read_depth_file(tmp_path / "d.png"), [[0, 1.5], [65.535, 0.01]], rtol=1e-6)


def test_folder_errors(tmp_path):
    write_folder(tmp_path / "x")
    (tmp_path / "x" / "depth" / "b.png").unlink()
    with pytest.raises(ConfigError, match="1 image.*have no depth map.*b"):
        FolderDepth(tmp_path / "x")
    write_folder(tmp_path / "y")
    (tmp_path / "y" / "images" / "a.png").unlink()
    with pytest.raises(ConfigError, match="depth map.*have no image.*a"):
        FolderDepth(tmp_path / "y")
    write_folder(tmp_path / "z")
    np.save(tmp_path / "z" / "depth" / "a.npy", np.ones((4, 5), np.float32))
    with pytest.raises(ConfigError, match="share the stem 'a'"):
        FolderDepth(tmp_path / "z")
    write_folder(tmp_path / "w")
    (tmp_path / "w" / "depth" / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="not a depth map"):
        FolderDepth(tmp_path / "w")
    (tmp_path / "v" / "images").mkdir(parents=True)
    with pytest.raises(MissingPathError, match="depth"):
        FolderDepth(tmp_path / "v")
    (tmp_path / "v" / "depth").mkdir()
    with pytest.raises(EmptyDatasetError):
        FolderDepth(tmp_path / "v")


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda p: Image.fromarray(np.zeros((4, 6), np.uint16)).save(p / "a.png"), "is 6x4 but its image"),
        (lambda p: Image.fromarray(np.zeros((4, 5), np.uint8)).save(p / "a.png"), "mode L"),
        (lambda p: Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(p / "a.png"), "mode RGB"),
        (lambda p: np.save(p / "a.npy", np.zeros((4, 5), np.int64)), "must be a 2-D float array"),
        (lambda p: np.save(p / "a.npy", np.zeros((4, 5, 1), np.float32)), "must be a 2-D float array"),
        (lambda p: np.save(p / "a.npy", np.full((4, 5), np.nan, np.float32)), "NaN"),
        (lambda p: np.save(p / "a.npy", np.full((4, 5), -1.0, np.float32)), "negative"),
    ],
)
def test_malformed_depth_maps_raise_when_read(tmp_path, write, message):
    write_folder(tmp_path, stems=("a",))
    (tmp_path / "depth" / "a.png").unlink()
    write(tmp_path / "depth")
    dataset = FolderDepth(tmp_path)
    with pytest.raises(ConfigError, match=message):
        dataset[0]


# --------------------------------------------------------------------------------------------
# masks, loss, metrics
# --------------------------------------------------------------------------------------------


def test_valid_mask_range_and_eigen_crop():
    full = valid_depth_mask(torch.ones(480, 640))
    top, bottom, left, right = EIGEN_CROP
    assert int(full.sum()) == (bottom - top) * (right - left) == 426 * 560
    assert bool(full[45, 41]) and not bool(full[44, 41]) and not bool(full[45, 601])
    half = valid_depth_mask(torch.ones(240, 320))  # scaled as DINOv3: int(45 / 480 * 240) = 22 ...
    assert int(half.sum()) == (235 - 22) * (300 - 20)
    depth = torch.tensor([[0.0, 0.001, 0.5], [9.99, 10.0, 12.0]])
    np.testing.assert_array_equal(valid_depth_mask(depth, crop="none").numpy(), [[0, 0, 1], [1, 0, 0]])
    with pytest.raises(ConfigError, match="crop must be one of"):
        valid_depth_mask(depth, crop="garg")


def test_sig_loss_values():
    assert float(sig_loss(torch.tensor([1.0, -1.0]))) == pytest.approx(1.0)  # mean 0: sqrt(mean g²)
    assert float(sig_loss(torch.full((5,), 0.2))) == pytest.approx(math.sqrt(0.15) * 0.2)  # a pure scale error
    assert float(sig_loss(torch.tensor([0.2, 0.6]), mean_only=True)) == pytest.approx(math.sqrt(0.15) * 0.4)


def test_metrics_hand_computed():
    target = torch.tensor([[1.0, 4.0], [2.0, 0.0]])
    pred = torch.tensor([[1.0, 6.0], [4.0, 3.0]])
    scores = image_depth_metrics(pred, target, target > 0)
    # errors 0, 2, 2; relative 0, 0.5, 1; ratios 1, 1.5, 2 (1.25² = 1.5625, 1.25³ = 1.953)
    assert scores["rmse"] == pytest.approx(math.sqrt(8 / 3))
    assert scores["abs_rel"] == pytest.approx(0.5)
    assert scores["delta1"] == pytest.approx(100 / 3)
    assert scores["delta2"] == pytest.approx(200 / 3)
    assert scores["delta3"] == pytest.approx(200 / 3)
    assert image_depth_metrics(pred, target, torch.zeros_like(target, dtype=torch.bool)) is None
    perfect = image_depth_metrics(target.clamp_min(1), target.clamp_min(1), torch.ones(2, 2, dtype=torch.bool))
    mean = average_depth_metrics([scores, perfect, None])  # per-image values averaged, not pixels pooled
    assert mean.rmse == pytest.approx(math.sqrt(8 / 3) / 2)
    assert mean.delta1 == pytest.approx((100 / 3 + 100) / 2)
    assert (mean.images, mean.images_without_valid_depth) == (2, 1)


def test_input_size_defaults_to_nyu_rounded():
    assert depth_input_size(14) == (476, 644)
    assert depth_input_size(16) == (480, 640)
    assert depth_input_size(14, 224) == (224, 224)
    with pytest.raises(ConfigError, match="multiple of the patch size 14"):
        depth_input_size(14, (480, 640))


def test_config_checks():
    with pytest.raises(ConfigError, match="min_depth < max_depth"):
        DepthProbeConfig(min_depth=10, max_depth=1)
    with pytest.raises(ConfigError, match="crop must be one of"):
        DepthProbeConfig(crop="center")
    with pytest.raises(ConfigError, match="epochs"):
        DepthProbeConfig(epochs=0)


# --------------------------------------------------------------------------------------------
# the probe
# --------------------------------------------------------------------------------------------


def linear_task(n, seed):
    """Features (n, 4, 6, 8) whose channel 0 is the depth minus 3 m; labels at the grid's resolution."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.rand(n, 4, 6, 8, generator=generator) * 3 - 1.5
    return DepthFeatures(features.half(), [(3 + features[i, 0].half().float()) for i in range(n)], 4)


@pytest.mark.parametrize("num_bins, lr, epochs, tolerance", [(1, 1e-2, 100, 0.005), (256, 3e-2, 200, 0.02)])
def test_probe_learns_linear_depth(num_bins, lr, epochs, tolerance):
    train, test = linear_task(32, 0), linear_task(16, 1)
    baseline = float(torch.stack(test.depths).std())  # RMSE of predicting the mean depth, ~0.87 m
    config = DepthProbeConfig(num_bins=num_bins, lr=lr, epochs=epochs, batch_size=8, crop="none")
    result = depth_probe(train, test, config, progress=False)
    assert result.scores.rmse < tolerance < baseline
    assert result.scores.delta1 == 100.0 and result.scores.abs_rel < tolerance
    assert result.grid_size == (6, 8) and (result.train_images, result.test_images) == (32, 16)
    assert result.to_dict()["scores"]["rmse"] == result.scores.rmse


def test_probe_is_reproducible_with_a_seed():
    train, test = linear_task(12, 0), linear_task(6, 1)
    config = DepthProbeConfig(epochs=3, batch_size=4, crop="none", lr=1e-2)
    first = depth_probe(train, test, config, progress=False).scores
    again = depth_probe(train, test, config, progress=False).scores
    other = depth_probe(train, test, DepthProbeConfig(**{**config.to_dict(), "seed": 1}), progress=False).scores
    assert first == again
    assert first.rmse != other.rmse


def test_predictions_take_each_label_size_and_range():
    train = linear_task(4, 0)
    head = train_depth_probe(train, DepthProbeConfig(epochs=1, crop="none"), progress=False)
    odd = DepthFeatures(train.features[:2], [torch.zeros(12, 16), torch.zeros(7, 9)], 4)
    preds = predict_depth(head, odd)
    assert [tuple(p.shape) for p in preds] == [(12, 16), (7, 9)]
    assert all(float(p.min()) >= 0.001 and float(p.max()) <= 10 for p in preds)
    scores = evaluate_depth_probe(head, odd, DepthProbeConfig(crop="none"))
    assert scores.images == 0 and scores.images_without_valid_depth == 2 and math.isnan(scores.rmse)


class ColourDepthBackbone(torch.nn.Module):
    """A stand-in backbone whose patch features are the patch's mean normalised colour."""

    patch_size, image_mean, image_std = 4, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)

    def forward(self, pixels):
        return torch.nn.functional.avg_pool2d(pixels, self.patch_size)


class RedIsDepth(torch.utils.data.Dataset):
    """Uniform images whose red level r encodes a uniform depth of 1 + 4 r / 255 metres, at 12 x 16 pixels."""

    def __init__(self, n, seed):
        self.levels = np.random.default_rng(seed).integers(0, 256, n)

    def __len__(self):
        return len(self.levels)

    def __getitem__(self, i):
        rgb = np.zeros((12, 16, 3), np.uint8)
        rgb[..., 0] = self.levels[i]
        return Image.fromarray(rgb), np.full((12, 16), 1 + 4 * self.levels[i] / 255, np.float32)


def test_end_to_end_from_images_to_metres():
    config = DepthProbeConfig(input_size=(8, 12), num_bins=1, lr=1e-2, epochs=200, batch_size=8, crop="none")
    result = run_depth_probe(ColourDepthBackbone(), RedIsDepth(24, 0), RedIsDepth(8, 1), config, progress=False)
    assert result.scores.rmse < 0.01 and result.scores.delta1 == 100.0
    assert result.input_size == (8, 12) and result.grid_size == (2, 3)
    assert set(result.seconds) == {"extract", "train", "evaluate"}


def test_real_backbone_features_with_cls_token(tmp_path):
    torch.manual_seed(0)
    backbone = PatchBackbone.from_config(tiny_dinov2_config(registers=2))
    write_folder(tmp_path / "train", stems=("a", "b", "c"), size=(40, 30))
    write_folder(tmp_path / "test", stems=("d", "e"), size=(40, 30), encoding="npy", seed=1)
    train = extract_depth_features(
        backbone, FolderDepth(tmp_path, "train"), input_size=(28, 42), use_cls_token=True, progress=False
    )
    assert train.features.shape == (3, 32, 2, 3) and train.cls.shape == (3, 32)
    assert train.features.dtype == torch.float16 and train.depths[0].shape == (30, 40)
    assert torch.isfinite(train.features).all()
    config = DepthProbeConfig(input_size=(28, 42), use_cls_token=True, epochs=2, batch_size=2, crop="eigen")
    result = run_depth_probe(
        backbone, FolderDepth(tmp_path, "train"), FolderDepth(tmp_path, "test"), config, progress=False
    )
    assert result.scores.images == 2 and math.isfinite(result.scores.rmse)
    assert result.datasets["test"]["split"] == "test"
    plain = extract_depth_features(backbone, FolderDepth(tmp_path, "train"), input_size=(28, 42), progress=False)
    torch.testing.assert_close(plain.features, train.features)  # the CLS path reads the same patch grid
    with pytest.raises(ConfigError, match="use_cls_token needs features"):
        train_depth_probe(plain, config, progress=False)
    with pytest.raises(ConfigError, match="has none"):
        extract_depth_features(
            ColourDepthBackbone(), RedIsDepth(2, 0), input_size=8, use_cls_token=True, progress=False
        )


def test_nyu_without_h5py_says_what_to_install(nyu_mat, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'paka_hf\[depth\]'"):
        load_depth_dataset(nyu_mat[0], "all")


def test_load_depth_dataset_picks_the_reader(nyu_mat, tmp_path):
    path = nyu_mat[0]
    dataset = load_depth_dataset(path, "test", splits_file=path.parent / "splits.mat")
    assert isinstance(dataset, NYUv2Labeled) and dataset.describe() == {
        "name": "NYUv2",
        "split": "test",
        "source": str(path),
        "images": 1,
    }
    with pytest.raises(MissingPathError):
        load_depth_dataset(tmp_path / "absent", "test")
