"""Feature extraction: joint image/mask transforms, shapes, computing features once per run, and the on-disk
cache across runs (keys, hits without a forward pass, misses on any change, broken entries)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from paka_hf.apps.demo import save_random_model
from paka_hf.evaluation import features as features_module
from paka_hf.evaluation.datasets import FolderSegmentation
from paka_hf.evaluation.features import (
    FeatureCache,
    _TransformedDataset,
    build_image_mask_transform,
    extract_features,
    module_weights_sha256,
)
from paka_hf.modeling.backbones import PatchBackbone
from paka_hf.testing import write_random_images
from paka_hf.utils.errors import ConfigError


class ColourCoded(torch.utils.data.Dataset):
    """Images whose red channel is the class: 255 where the mask is 1, 0 where it is 0."""

    num_classes, ignore_index, split = 2, 255, "train"

    def __init__(self, n: int = 6):
        rng = np.random.default_rng(0)
        self.masks = []
        for _ in range(n):
            mask = np.zeros((60, 80), np.int64)
            x0, y0 = rng.integers(5, 40, 2)
            mask[y0 : y0 + 20, x0 : x0 + 30] = 1
            self.masks.append(mask)

    def __len__(self):
        return len(self.masks)

    def __getitem__(self, i):
        rgb = np.zeros((60, 80, 3), np.uint8)
        rgb[..., 0] = 255 * self.masks[i]
        return Image.fromarray(rgb), self.masks[i]


@pytest.mark.parametrize("augment", [False, True])
def test_image_and_mask_get_the_same_geometry(augment):
    torch.manual_seed(0)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    data = _TransformedDataset(
        ColourCoded(), build_image_mask_transform((28, 42), augment=augment, mean=mean, std=std)
    )
    for i in range(len(data)):
        image, mask = data[i]
        assert image.shape == (3, 28, 42) and mask.shape == (28, 42) and mask.dtype == torch.int64
        red = image[0] * std[0] + mean[0]  # back to [0, 1]
        agree = ((red > 0.5).long() == mask).float().mean()
        assert agree > 0.95  # only antialiased boundary pixels may differ


def test_extract_features_shapes_and_cache(tiny_config):
    backbone = PatchBackbone.from_config(tiny_config())
    data = ColourCoded()
    feats = extract_features(backbone, data, input_size=(28, 42), augment=True, passes=2, batch_size=4, progress=False)
    assert feats.features.shape == (12, 32, 2, 3) and feats.features.dtype == torch.float16
    assert feats.masks.shape == (12, 28, 42) and feats.masks.dtype == torch.uint8
    assert not torch.equal(feats.features[:6], feats.features[6:])  # two different augmented passes
    again = extract_features(backbone, data, input_size=(28, 42), augment=True, passes=2, batch_size=3, progress=False)
    torch.testing.assert_close(again.features.float(), feats.features.float(), atol=1e-2, rtol=1e-2)  # seeded

    cache = FeatureCache(backbone, batch_size=4, progress=False)
    first = cache.get(data, input_size=28, max_images=3)
    assert cache.get(data, input_size=28, max_images=3) is first and len(cache) == 1
    assert len(first) == 3
    cache.get(data, input_size=28, max_images=3, std=(0.229, 0.224, 0.255))
    assert len(cache) == 2  # another normalisation is another extraction
    with pytest.raises(ValueError, match="multiple of the patch size"):
        extract_features(backbone, data, input_size=30, progress=False)


def test_pretrained_features_beat_random_init_on_camvid(small_model_path, camvid_path):
    """Real data smoke test (skipped without the assets): 12 train / 6 val CamVid images at 112x154."""
    from transformers import AutoConfig

    from paka_hf.evaluation import CamVid, HummingbirdConfig, hummingbird_retrieval

    torch.set_num_threads(1)
    train, val = CamVid(camvid_path, "train"), CamVid(camvid_path, "val")
    scores = {}
    for name, backbone in (
        ("pretrained", PatchBackbone.from_pretrained(small_model_path)),
        ("random", PatchBackbone.from_config(AutoConfig.from_pretrained(small_model_path))),
    ):
        kwargs = dict(input_size=(112, 154), batch_size=6, progress=False)
        train_f = extract_features(backbone, train, max_images=12, **kwargs)
        val_f = extract_features(backbone, val, max_images=6, **kwargs)
        scores[name] = hummingbird_retrieval(train_f, val_f, HummingbirdConfig(), progress=False)[0].mean_iou
    assert scores["pretrained"] > scores["random"] + 5.0, scores


def test_extraction_leaves_the_global_rng_alone(tiny_config):
    backbone = PatchBackbone.from_config(tiny_config())
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    extract_features(backbone, ColourCoded(2), input_size=28, augment=True, passes=2, progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_features_of_a_backbone_with_trainable_weights_keep_no_graph(tiny_config):
    """extract_features runs without autograd: a trainable backbone's batches would otherwise keep their graphs."""
    backbone = PatchBackbone.from_config(tiny_config())
    assert any(p.requires_grad for p in backbone.parameters())
    feats = extract_features(backbone, ColourCoded(), input_size=(28, 42), batch_size=4, progress=False)
    assert not feats.features.requires_grad and feats.features.grad_fn is None


# ------------------------------------------------------------------------------------------------------------
# the on-disk cache
# ------------------------------------------------------------------------------------------------------------

OPTIONS = dict(input_size=28, augment=False, passes=1)


def write_folder_dataset(root: Path, n: int = 4) -> Path:
    """``root/val/{images,masks}``: ``n`` random 30x40 JPEGs with two-class masks (a left/right split)."""
    images = write_random_images(root / "val" / "images", n, (30, 40))
    (root / "val" / "masks").mkdir(parents=True)
    for k, image in enumerate(sorted(images.iterdir())):
        mask = np.zeros((30, 40), np.uint8)
        mask[:, 10 + 5 * k :] = 1
        Image.fromarray(mask).save(root / "val" / "masks" / f"{image.stem}.png")
    return root


@pytest.fixture
def model_dir(tmp_path, tiny_config):
    return save_random_model(tmp_path / "model", tiny_config())


@pytest.fixture
def dataset(tmp_path):
    return FolderSegmentation(write_folder_dataset(tmp_path / "data"), "val", ("left", "right"))


def no_forward(backbone):
    """Make any forward pass of ``backbone`` fail the test."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the backbone ran although the features were cached")

    backbone.forward = forbidden
    return backbone


def entries(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.glob("*/*.safetensors"))


def test_weights_sha256_sees_every_value_dtype_and_buffer(model_dir):
    one, two = PatchBackbone.from_pretrained(model_dir), PatchBackbone.from_pretrained(model_dir)
    digest = module_weights_sha256(one)
    assert len(digest) == 64 and module_weights_sha256(two) == digest  # same weights, another object
    with torch.no_grad():
        next(two.parameters()).view(-1)[0] += 1e-3  # one value of one tensor
    assert module_weights_sha256(two) != digest
    with torch.no_grad():
        next(two.parameters()).view(-1)[0] -= 1e-3
    assert module_weights_sha256(two) == digest
    assert module_weights_sha256(PatchBackbone.from_pretrained(model_dir).to(torch.float64)) != digest
    with_buffer = PatchBackbone.from_pretrained(model_dir)
    with_buffer.register_buffer("scale", torch.ones(2), persistent=False)
    assert module_weights_sha256(with_buffer) != digest


def test_a_second_run_loads_the_features_bit_identical_without_a_forward_pass(model_dir, dataset, tmp_path, caplog):
    cache_dir = tmp_path / "cache"
    caplog.set_level(logging.INFO, logger=features_module.__name__)
    first = FeatureCache(PatchBackbone.from_pretrained(model_dir), cache_dir=cache_dir, batch_size=3, progress=False)
    fresh = first.get(dataset, **OPTIONS)
    (entry,) = entries(cache_dir)
    assert entry.parent.name == module_weights_sha256(first.backbone)[:16] and entry.name.startswith("folder-val-")
    assert any("feature cache miss" in r.message and str(entry) in r.message for r in caplog.records)
    sidecar = json.loads(entry.with_suffix(".json").read_text())
    assert sidecar["key"]["extraction"] == {
        "input_size": [28, 28],
        "augment": False,
        "passes": 1,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "images": 4,
        "feature_dtype": "float16",
    }
    assert sidecar["key"]["dataset"]["fingerprint"] == dataset.fingerprint()
    assert sidecar["shapes"] == {"features": [4, 32, 2, 2], "masks": [4, 28, 28]} and sidecar["batch_size"] == 3
    assert not list(cache_dir.rglob("*.tmp"))

    caplog.clear()
    again = FeatureCache(no_forward(PatchBackbone.from_pretrained(model_dir)), cache_dir=cache_dir, progress=False)
    dataset_again = FolderSegmentation(tmp_path / "data", "val", ("left", "right"))  # another run's objects
    loaded = again.get(dataset_again, **OPTIONS)
    assert torch.equal(loaded.features, fresh.features) and torch.equal(loaded.masks, fresh.masks)
    assert loaded.features.dtype == torch.float16 and loaded.masks.dtype == fresh.masks.dtype
    assert (loaded.patch_size, loaded.num_classes, loaded.ignore_index) == (14, 2, 255)
    assert len(again.loaded) == 1 and again.get(dataset_again, **OPTIONS) is loaded  # then from memory
    assert [r.message for r in caplog.records if r.levelno == logging.INFO] == [f"feature cache hit: {entry}"]
    # a plain pass draws nothing: another seed or crop scale is the same entry (batch size and device too)
    again.get(dataset_again, **OPTIONS, seed=7, crop_scale=(0.5, 1.0), batch_size=1)
    assert len(entries(cache_dir)) == 1


@pytest.mark.parametrize(
    "change",
    [
        {"input_size": 42},
        {"std": (0.229, 0.224, 0.255)},
        {"mean": (0.5, 0.5, 0.5)},
        {"max_images": 3},
        {"feature_dtype": torch.float32},
        {"augment": True},
        {"augment": True, "passes": 2},
        {"augment": True, "seed": 1},
        {"augment": True, "crop_scale": (0.5, 1.0)},
    ],
    ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()),
)
def test_a_changed_setting_never_reuses_an_entry(model_dir, dataset, tmp_path, change):
    cache_dir = tmp_path / "cache"
    base = {**OPTIONS, **({"augment": True} if "augment" in change and len(change) > 1 else {})}
    FeatureCache(PatchBackbone.from_pretrained(model_dir), cache_dir=cache_dir, progress=False).get(dataset, **base)
    cache = FeatureCache(PatchBackbone.from_pretrained(model_dir), cache_dir=cache_dir, progress=False)
    changed = cache.get(dataset, **{**base, **change})
    assert not cache.loaded and len(entries(cache_dir)) == 2  # extracted and written beside the first
    reference = extract_features(
        PatchBackbone.from_pretrained(model_dir), dataset, **{**base, **change}, progress=False
    )
    assert torch.equal(changed.features, reference.features)


def test_a_changed_weight_or_model_config_never_reuses_an_entry(model_dir, dataset, tmp_path, tiny_config):
    cache_dir = tmp_path / "cache"
    FeatureCache(PatchBackbone.from_pretrained(model_dir), cache_dir=cache_dir, progress=False).get(dataset, **OPTIONS)
    edited = PatchBackbone.from_pretrained(model_dir)
    with torch.no_grad():
        edited.model.encoder.layer[-1].mlp.fc2.bias[0] += 1.0  # one weight
    cache = FeatureCache(edited, cache_dir=cache_dir, progress=False)
    features = cache.get(dataset, **OPTIONS)
    assert not cache.loaded and len({p.parent for p in entries(cache_dir)}) == 2  # a folder per model
    assert torch.equal(features.features, extract_features(edited, dataset, **OPTIONS, progress=False).features)
    # same weights, another config field that changes the computation (LayerNorm epsilon)
    config = tiny_config()
    config.layer_norm_eps = 1e-3
    other = save_random_model(tmp_path / "eps", config)
    cache = FeatureCache(PatchBackbone.from_pretrained(other), cache_dir=cache_dir, progress=False)
    assert module_weights_sha256(cache.backbone) == module_weights_sha256(PatchBackbone.from_pretrained(model_dir))
    cache.get(dataset, **OPTIONS)
    assert not cache.loaded and len(entries(cache_dir)) == 3


def test_a_changed_dataset_file_never_reuses_an_entry(model_dir, dataset, tmp_path):
    cache_dir = tmp_path / "cache"
    FeatureCache(PatchBackbone.from_pretrained(model_dir), cache_dir=cache_dir, progress=False).get(dataset, **OPTIONS)
    mask_path = sorted((tmp_path / "data" / "val" / "masks").iterdir())[1]
    mask = np.array(Image.open(mask_path))
    mask[0, 0] = 1 - mask[0, 0]
    Image.fromarray(mask).save(mask_path)
    cache = FeatureCache(PatchBackbone.from_pretrained(model_dir), cache_dir=cache_dir, progress=False)
    features = cache.get(FolderSegmentation(tmp_path / "data", "val", ("left", "right")), **OPTIONS)
    assert not cache.loaded and len(entries(cache_dir)) == 2
    assert features.masks[1, 0, 0] == mask[0, 0]


def break_truncate(entry: Path):
    data = entry.read_bytes()
    entry.write_bytes(data[: len(data) // 2])


def break_flip_a_byte(entry: Path):
    data = bytearray(entry.read_bytes())
    data[-1] ^= 0xFF  # a feature value, inside a file that still parses
    entry.write_bytes(bytes(data))


def break_drop_sidecar(entry: Path):
    entry.with_suffix(".json").unlink()


def break_garble_sidecar(entry: Path):
    entry.with_suffix(".json").write_text('{"key": ')


def break_other_key(entry: Path):
    sidecar = json.loads(entry.with_suffix(".json").read_text())
    sidecar["key"]["extraction"]["input_size"] = [42, 42]
    entry.with_suffix(".json").write_text(json.dumps(sidecar))


@pytest.mark.parametrize(
    "damage", [break_truncate, break_flip_a_byte, break_drop_sidecar, break_garble_sidecar, break_other_key]
)
def test_a_broken_entry_is_ignored_with_one_warning_and_rewritten(model_dir, dataset, tmp_path, caplog, damage):
    cache_dir = tmp_path / "cache"
    fresh = FeatureCache(PatchBackbone.from_pretrained(model_dir), cache_dir=cache_dir, progress=False)
    reference = fresh.get(dataset, **OPTIONS)
    (entry,) = entries(cache_dir)
    damage(entry)
    caplog.set_level(logging.INFO, logger=features_module.__name__)
    cache = FeatureCache(PatchBackbone.from_pretrained(model_dir), cache_dir=cache_dir, progress=False)
    features = cache.get(dataset, **OPTIONS)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(entry.with_suffix("")) in warnings[0].getMessage()
    assert not cache.loaded and torch.equal(features.features, reference.features)
    # the entry was written again and now loads
    healed = FeatureCache(no_forward(PatchBackbone.from_pretrained(model_dir)), cache_dir=cache_dir, progress=False)
    assert torch.equal(healed.get(dataset, **OPTIONS).features, reference.features) and len(healed.loaded) == 1


def test_an_interrupted_write_leaves_no_entry_that_loads(model_dir, dataset, tmp_path, monkeypatch, caplog):
    cache_dir = tmp_path / "cache"
    real_replace, calls = features_module.os.replace, []

    def interrupted_replace(src, dst):
        calls.append(Path(dst).suffix)
        if Path(dst).suffix == ".json":  # Ctrl-C after the tensors, before the sidecar
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(features_module.os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        FeatureCache(PatchBackbone.from_pretrained(model_dir), cache_dir=cache_dir, progress=False).get(
            dataset, **OPTIONS
        )
    monkeypatch.setattr(features_module.os, "replace", real_replace)
    assert (
        calls == [".safetensors", ".json"]
        and not list(cache_dir.rglob("*.tmp"))
        and not list(cache_dir.rglob("*.json"))
    )
    caplog.set_level(logging.WARNING, logger=features_module.__name__)
    cache = FeatureCache(PatchBackbone.from_pretrained(model_dir), cache_dir=cache_dir, progress=False)
    cache.get(dataset, **OPTIONS)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not cache.loaded and len(warnings) == 1 and "no sidecar" in warnings[0]


def test_without_a_cache_dir_or_a_fingerprint_nothing_is_written(model_dir, tmp_path, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)
    backbone = PatchBackbone.from_pretrained(model_dir)
    memory_only = FeatureCache(backbone, progress=False)
    assert memory_only.cache_dir is None
    memory_only.get(ColourCoded(2), **OPTIONS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    caplog.set_level(logging.WARNING, logger=features_module.__name__)
    cache = FeatureCache(backbone, cache_dir=tmp_path / "cache", progress=False)
    first = cache.get(ColourCoded(2), **OPTIONS)
    cache.get(ColourCoded(3), **OPTIONS)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(first) == 2 and not entries(tmp_path / "cache") and len(warnings) == 1
    assert "in memory only" in warnings[0]


def test_a_cache_dir_that_is_a_file_is_a_config_error(model_dir, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="feature cache folder"):
        FeatureCache(PatchBackbone.from_pretrained(model_dir), cache_dir=tmp_path / "file")


def test_the_cache_folder_may_move_and_be_cleared(model_dir, dataset, tmp_path):
    FeatureCache(PatchBackbone.from_pretrained(model_dir), cache_dir=tmp_path / "a", progress=False).get(
        dataset, **OPTIONS
    )
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    moved = FeatureCache(
        no_forward(PatchBackbone.from_pretrained(model_dir)), cache_dir=tmp_path / "b", progress=False
    )
    moved.get(dataset, **OPTIONS)
    assert len(moved.loaded) == 1
    shutil.rmtree(tmp_path / "b")  # clearing = deleting the folder
    cleared = FeatureCache(PatchBackbone.from_pretrained(model_dir), cache_dir=tmp_path / "b", progress=False)
    cleared.get(dataset, **OPTIONS)
    assert not cleared.loaded and len(entries(tmp_path / "b")) == 1


def test_entry_names_keep_only_safe_characters(model_dir, tmp_path):
    root = write_folder_dataset(tmp_path / "data", n=2)
    (root / "val").rename(root / "val.v2 (old)")
    data = FolderSegmentation(root, "val.v2 (old)", ("left", "right"))
    FeatureCache(PatchBackbone.from_pretrained(model_dir), cache_dir=tmp_path / "cache", progress=False).get(
        data, **OPTIONS
    )
    (entry,) = entries(tmp_path / "cache")
    assert entry.name.startswith("folder-val_v2_old_-") and entry.with_suffix(".json").is_file()
    again = FeatureCache(no_forward(PatchBackbone.from_pretrained(model_dir)), cache_dir=tmp_path / "cache")
    again.get(data, **OPTIONS)
    assert len(again.loaded) == 1
