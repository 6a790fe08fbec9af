"""Dataset loaders: layouts, label conventions, and loud failures on broken data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from paka_hf.evaluation.datasets import (
    ADE20K,
    CamVid,
    COCOSegmentation,
    DatasetError,
    FolderSegmentation,
    HubSegmentation,
    HubSpec,
    VOCSegmentation,
    load_segmentation_dataset,
    read_class_names,
)

NAMES = ("a", "b", "c")


def write_pair(root: Path, split: str, stem: str, mask: np.ndarray, image_size=None, mode="L"):
    (root / split / "images").mkdir(parents=True, exist_ok=True)
    (root / split / "masks").mkdir(parents=True, exist_ok=True)
    h, w = image_size or mask.shape
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / split / "images" / f"{stem}.jpg")
    Image.fromarray(mask.astype(np.uint8), mode=mode).save(root / split / "masks" / f"{stem}.png")


def good_mask(h=10, w=12):
    mask = np.zeros((h, w), np.uint8)
    mask[:, 4:8] = 1
    mask[:, 8:] = 2
    mask[0, 0] = 255
    return mask


def test_folder_dataset_reads_pairs(tmp_path):
    write_pair(tmp_path, "val", "x1", good_mask())
    write_pair(tmp_path, "val", "x2", good_mask())
    ds = FolderSegmentation(tmp_path, "val", NAMES, ignore_index=255)
    assert len(ds) == 2 and ds.num_classes == 3
    image, mask = ds[0]
    assert image.mode == "RGB" and image.size == (12, 10)
    assert mask.dtype == np.int64 and set(np.unique(mask)) == {0, 1, 2, 255}
    assert not ds.stats
    assert ds.describe()["split"] == "val"


def test_missing_mask_raises_or_is_counted(tmp_path):
    write_pair(tmp_path, "val", "x1", good_mask())
    write_pair(tmp_path, "val", "x2", good_mask())
    (tmp_path / "val" / "masks" / "x2.png").unlink()
    with pytest.raises(DatasetError, match=r"1 image\(s\) have no mask.*x2\.jpg"):
        FolderSegmentation(tmp_path, "val", NAMES)
    ds = FolderSegmentation(tmp_path, "val", NAMES, on_missing="skip")
    assert len(ds) == 1 and ds.stats["images_without_mask_skipped"] == 1


def test_missing_folder_says_what_layout_is_expected(tmp_path):
    with pytest.raises(DatasetError, match="images"):
        FolderSegmentation(tmp_path, "train", NAMES)


def test_mask_size_mismatch_raises_or_is_resized(tmp_path):
    write_pair(tmp_path, "val", "x1", good_mask(10, 12), image_size=(20, 24))
    ds = FolderSegmentation(tmp_path, "val", NAMES)
    with pytest.raises(DatasetError, match="12x10 but its image is 24x20"):
        ds[0]
    ds = FolderSegmentation(tmp_path, "val", NAMES, on_size_mismatch="resize")
    _, mask = ds[0]
    assert mask.shape == (20, 24) and ds.stats["masks_resized"] == 1


def test_unknown_labels_raise_or_are_counted(tmp_path):
    mask = good_mask()
    mask[5, 5] = 7
    mask[6, 6] = 7
    mask[7, 7] = 42
    write_pair(tmp_path, "val", "x1", mask)
    with pytest.raises(DatasetError, match=r"label values \[7, 42\]"):
        FolderSegmentation(tmp_path, "val", NAMES)[0]
    ds = FolderSegmentation(tmp_path, "val", NAMES, on_unknown_label="ignore")
    _, mapped = ds[0]
    assert mapped[5, 5] == 255 and mapped[7, 7] == 255
    ds[0]  # reading twice counts once
    assert ds.stats["unknown_label_7_pixels"] == 2 and ds.stats["unknown_label_42_pixels"] == 1


def test_ignore_index_must_not_be_a_class(tmp_path):
    write_pair(tmp_path, "val", "x1", good_mask())
    with pytest.raises(DatasetError, match="collides"):
        FolderSegmentation(tmp_path, "val", NAMES, ignore_index=1)


def test_camvid_convention(tmp_path):
    mask = np.full((6, 8), 11, np.uint8)
    mask[:, :4] = 10
    write_pair(tmp_path, "train", "f", mask)
    ds = CamVid(tmp_path, "train")
    assert ds.num_classes == 11 and ds.ignore_index == 11 and ds.display_name == "CamVid"
    assert set(np.unique(ds[0][1])) == {10, 11}


def test_ade20k_shifts_labels_and_ignores_other(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    (base / "images" / "validation").mkdir(parents=True)
    (base / "annotations" / "validation").mkdir(parents=True)
    Image.new("RGB", (4, 2)).save(base / "images" / "validation" / "ADE_val_1.jpg")
    Image.fromarray(np.array([[0, 1, 150, 2], [1, 1, 1, 1]], np.uint8)).save(
        base / "annotations" / "validation" / "ADE_val_1.png"
    )
    ds = load_segmentation_dataset("ADE20K", "val", tmp_path)
    assert isinstance(ds, ADE20K) and ds.num_classes == 150
    np.testing.assert_array_equal(ds[0][1][0], [255, 0, 149, 1])


def test_voc_layout_with_palette_masks(tmp_path):
    base = tmp_path / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True)
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000001\n")
    Image.new("RGB", (3, 2)).save(base / "JPEGImages" / "2007_000001.jpg")
    mask = Image.fromarray(np.array([[0, 15, 255], [20, 0, 0]], np.uint8), mode="P")
    mask.putpalette([0, 0, 0] * 256)
    mask.save(base / "SegmentationClass" / "2007_000001.png")
    ds = VOCSegmentation(tmp_path, "val")
    assert ds.num_classes == 21
    np.testing.assert_array_equal(ds[0][1], [[0, 15, 255], [20, 0, 0]])


def test_coco_stuff_merges_supercategories(tmp_path):
    categories = [
        {"id": 1, "name": "person", "supercategory": "person"},
        {"id": 92, "name": "banner", "supercategory": "textile"},
        {"id": 93, "name": "blanket", "supercategory": "textile"},
        {"id": 106, "name": "sky-other", "supercategory": "sky"},
        {"id": 183, "name": "other", "supercategory": "other"},
    ]
    (tmp_path / "annotations" / "stuff_val2017_pixelmaps").mkdir(parents=True)
    (tmp_path / "images" / "val2017").mkdir(parents=True)
    (tmp_path / "annotations" / "stuff_val2017.json").write_text(json.dumps({"categories": categories}))
    Image.new("RGB", (5, 1)).save(tmp_path / "images" / "val2017" / "0001.jpg")
    Image.fromarray(np.array([[0, 92, 93, 106, 183]], np.uint8)).save(
        tmp_path / "annotations" / "stuff_val2017_pixelmaps" / "0001.png"
    )
    ds = COCOSegmentation(tmp_path, "val", kind="stuff")
    assert ds.class_names == ("sky", "textile")
    np.testing.assert_array_equal(ds[0][1], [[255, 1, 1, 0, 255]])


def test_hub_dataset_columns_and_errors(tmp_path):
    datasets = pytest.importorskip("datasets")
    write_pair(tmp_path, "val", "x1", good_mask())
    data = (
        datasets.Dataset.from_dict(
            {
                "image": [str(tmp_path / "val" / "images" / "x1.jpg")],
                "annotation": [str(tmp_path / "val" / "masks" / "x1.png")],
            }
        )
        .cast_column("image", datasets.Image())
        .cast_column("annotation", datasets.Image())
    )
    spec = HubSpec("someone/tiny-seg", "image", "annotation")
    ds = HubSegmentation(spec, "val", NAMES, 255, load_fn=lambda *a, **k: data)
    assert len(ds) == 1 and ds.dataset_type == "someone/tiny-seg"
    assert set(np.unique(ds[0][1])) == {0, 1, 2, 255}
    with pytest.raises(DatasetError, match="no column 'label'"):
        HubSegmentation(HubSpec("someone/tiny-seg", "image", "label"), "val", NAMES, 255, load_fn=lambda *a, **k: data)


def test_registry_errors_and_class_name_files(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_segmentation_dataset("imagenet", "val", tmp_path)
    with pytest.raises(DatasetError, match="class names"):
        load_segmentation_dataset("folder", "val", tmp_path)
    (tmp_path / "names.txt").write_text("sky\nroad\n\n")
    assert read_class_names(str(tmp_path / "names.txt")) == ("sky", "road")
    assert read_class_names("a, b ,c") == ("a", "b", "c")


def test_real_camvid_asset_is_consistent(camvid_path):
    ds = CamVid(camvid_path, "val")
    assert len(ds) == 101
    image, mask = ds[0]
    assert mask.shape == (image.height, image.width) and mask.max() <= 11


def test_ade20k_from_the_hub_keeps_the_label_convention(monkeypatch):
    datasets = pytest.importorskip("datasets")
    mask = Image.fromarray(np.array([[0, 1, 150]], np.uint8))
    data = datasets.Dataset.from_dict({"image": [Image.new("RGB", (3, 1))], "annotation": [mask]})
    calls = []

    def fake_load(repo_id, config, split):
        calls.append((repo_id, config, split))
        return data

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    ds = load_segmentation_dataset("ade20k", "val")
    assert calls == [("zhoubolei/scene_parse_150", "scene_parsing", "validation")]
    np.testing.assert_array_equal(ds[0][1], [[255, 0, 149]])
    assert ds.published_extra_zero_classes == 1 and ds.display_name == "ADE20K"


@pytest.mark.parametrize("ignore_index", [-1, 255, 256, 32767, 32768, 65535])
def test_any_ignore_index_survives_loading_and_feature_extraction(tmp_path, tiny_config, ignore_index):
    """Ignore indices up to 65535 (16-bit masks) and −1 keep their value end to end."""
    import torch

    from paka_hf.evaluation.features import extract_features
    from paka_hf.evaluation.metrics import confusion_matrix
    from paka_hf.modeling.backbones import PatchBackbone

    raw = np.zeros((28, 28), np.uint16)
    raw[:, 14:] = 1
    raw[:7] = 65535  # the void value of a 16-bit mask; with ignore_index −1 it is mapped there by the label map
    for split in ("val",):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "masks").mkdir(parents=True)
        Image.fromarray(np.full((28, 28, 3), 90, np.uint8)).save(tmp_path / split / "images" / "a.png")
        Image.fromarray(
            raw if ignore_index in (-1, 65535) else np.where(raw == 65535, ignore_index, raw).astype(np.uint16)
        ).save(tmp_path / split / "masks" / "a.png")
    label_map = {0: 0, 1: 1, 65535: -1} if ignore_index == -1 else None
    ds = FolderSegmentation(tmp_path, "val", ("x", "y"), ignore_index=ignore_index, label_map=label_map)
    _, mask = ds[0]
    assert (mask[:7] == ignore_index).all() and set(np.unique(mask[7:])) == {0, 1}
    feats = extract_features(PatchBackbone.from_config(tiny_config()), ds, input_size=28, progress=False)
    assert (feats.masks[0, :7].long() == ignore_index).all()  # no wrap-around (65535 → −1 in int16 before)
    counts = confusion_matrix(torch.zeros_like(feats.masks[0]).long(), feats.masks[0], 2, ignore_index)
    assert int(counts.sum()) == 21 * 28  # the ignored rows are left out, the rest is scored


def test_two_images_with_one_stem_are_an_error_naming_both(tmp_path):
    write_pair(tmp_path, "val", "x1", good_mask())
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "val" / "images" / "x1.png")
    with pytest.raises(DatasetError, match=r"x1\.jpg and .*x1\.png|x1\.png and .*x1\.jpg"):
        FolderSegmentation(tmp_path, "val", NAMES, ignore_index=255)


def test_fingerprint_follows_the_files_and_the_label_convention(tmp_path):
    for stem in ("x1", "x2"):
        write_pair(tmp_path / "data", "val", stem, good_mask())
    ds = FolderSegmentation(tmp_path / "data", "val", NAMES)
    digest = ds.fingerprint(progress=False)
    assert len(digest) == 64 and ds.fingerprint() == digest
    assert FolderSegmentation(tmp_path / "data", "val", NAMES).fingerprint(progress=False) == digest  # same files
    (tmp_path / "data").rename(tmp_path / "moved")  # relative paths: a moved dataset keeps its fingerprint
    assert FolderSegmentation(tmp_path / "moved", "val", NAMES).fingerprint(progress=False) == digest
    assert ds.fingerprint() == digest  # computed once per object

    def fingerprint(**kwargs):
        return FolderSegmentation(tmp_path / "moved", "val", kwargs.pop("names", NAMES), **kwargs).fingerprint(
            progress=False
        )

    assert fingerprint(names=("a", "b", "z")) != digest
    assert fingerprint(label_map={0: 0, 1: 2, 2: 1, 255: 255}) != digest
    assert fingerprint(on_unknown_label="ignore") != digest
    mask_path = tmp_path / "moved" / "val" / "masks" / "x2.png"
    mask = good_mask()
    mask[5, 5] = 2  # one pixel of one mask
    Image.fromarray(mask).save(mask_path)
    changed = fingerprint()
    assert changed != digest
    mask_path.rename(mask_path.with_name("x3.png"))
    (tmp_path / "moved" / "val" / "images" / "x2.jpg").rename(tmp_path / "moved" / "val" / "images" / "x3.jpg")
    assert fingerprint() not in (digest, changed)  # renamed, same bytes
    write_pair(tmp_path / "moved", "val", "x4", good_mask())
    assert len(FolderSegmentation(tmp_path / "moved", "val", NAMES)) == 3 and fingerprint() != changed


def test_hub_fingerprint_is_the_datasets_fingerprint(tmp_path):
    datasets = pytest.importorskip("datasets")

    def hub(masks):
        data = datasets.Dataset.from_dict({"image": [Image.new("RGB", (3, 1))] * 2, "annotation": masks})
        return HubSegmentation(HubSpec("someone/tiny-seg"), "val", NAMES, 255, load_fn=lambda *a, **k: data)

    masks = [Image.fromarray(np.array([[0, 1, 2]], np.uint8)), Image.fromarray(np.array([[2, 1, 0]], np.uint8))]
    digest = hub(masks).fingerprint(progress=False)
    assert hub(masks).fingerprint(progress=False) == digest
    assert hub(masks[::-1]).fingerprint(progress=False) != digest  # another order, other features


def test_a_dataset_that_does_not_say_what_it_reads_has_no_fingerprint():
    from paka_hf.evaluation.datasets import SegmentationDataset

    with pytest.raises(NotImplementedError, match="no fingerprint"):
        SegmentationDataset(NAMES, 255).fingerprint(progress=False)
