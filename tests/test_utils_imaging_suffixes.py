"""One set of image file suffixes (paka_hf.utils.imaging.IMAGE_SUFFIXES): every folder reader takes the same files."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from paka_hf.apps import explorer as explore
from paka_hf.evaluation.datasets import FolderSegmentation
from paka_hf.training.data import PaKAViewStream, decode_image, load_image_source
from paka_hf.utils.imaging import IMAGE_SUFFIXES, is_image_file, to_rgb
from paka_hf.views.glim import GlimTransform

# Upper-case suffixes and formats beyond JPEG/PNG: the ones a reader is most likely to leave out.
IMAGES = {"a.webp": "WEBP", "B.JPG": "JPEG", "c.PNG": "PNG", "d.gif": "GIF", "e.tiff": "TIFF", "f.pgm": "PPM"}
NOT_IMAGES = ("notes.txt", "labels.csv", "weights.safetensors")


def write_folder(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, fmt in IMAGES.items():
        pixels = rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        (image.convert("L") if fmt == "PPM" else image).save(folder / name, format=fmt)
    for name in NOT_IMAGES:
        (folder / name).write_text("not an image")


def test_the_suffixes_are_lower_case_and_matched_in_any_case():
    assert all(s == s.lower() and s.startswith(".") for s in IMAGE_SUFFIXES)
    assert len(set(IMAGE_SUFFIXES)) == len(IMAGE_SUFFIXES)
    assert is_image_file("x/IMG_1.JPG") and is_image_file(Path("a.WebP")) and is_image_file("scan.tif")
    assert not is_image_file("notes.txt") and not is_image_file("jpg") and not is_image_file("archive.tar")


def test_every_folder_reader_takes_the_same_images(tmp_path):
    folder = tmp_path / "images"
    write_folder(folder)
    expected = sorted(IMAGES)

    # training: the local folder source and the view stream decode every image, and nothing else
    source = load_image_source(str(folder))
    transform = GlimTransform(28, 14, n_local=2, patch_size=14)
    samples = []
    for sample in PaKAViewStream(source, transform, seed=0, record_keys=True):
        samples.append(sample)
        if len(samples) == len(IMAGES):
            break
    assert sorted(Path(s["image_key"]).name for s in samples) == expected
    assert [s["num_skipped"] for s in samples] == [0] * len(IMAGES)

    # evaluation: the folder segmentation dataset (one mask per image stem)
    root = tmp_path / "segmentation"
    (root / "val").mkdir(parents=True)
    folder.rename(root / "val" / "images")
    (root / "val" / "masks").mkdir()
    for name in IMAGES:
        Image.fromarray(np.zeros((40, 56), np.uint8)).save(root / "val" / "masks" / f"{Path(name).stem}.png")
    dataset = FolderSegmentation(root, "val", ["background"], ignore_index=255)
    assert sorted(image.name for image, _ in dataset._items) == expected
    assert all(dataset[i][0].mode == "RGB" and dataset[i][0].size == (56, 40) for i in range(len(dataset)))

    # the explorer's gallery and paka-visualize's --image_dir (is_image_file)
    gallery = root / "val" / "images"
    assert [p.name for p in explore.gallery_images(gallery)] == expected
    assert sorted(p.name for p in gallery.iterdir() if is_image_file(p)) == expected


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_each_image_is_decoded_to_rgb_by_the_training_decoder(tmp_path, name):
    write_folder(tmp_path)
    image = to_rgb(decode_image({"bytes": (tmp_path / name).read_bytes(), "path": None}))
    assert image.mode == "RGB" and image.size == (56, 40)
