"""Generated data of the evaluation protocols, in the layouts their readers take: a labelled segmentation folder,
an SPair-71k archive, a depth folder and NYUv2's labelled .mat (MATLAB v7.3). Small enough for tiny CPU runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def write_segmentation_folder(root: Path, seed: int = 0, sizes: dict[str, int] | None = None) -> Path:
    """``root/{train,val}/{images,masks}``: 40 x 50 noise images whose three classes (sky, road, car) look
    different, masks with a few ignored (255) pixels."""
    rng = np.random.default_rng(seed)
    for split, n in (sizes or {"train": 4, "val": 3}).items():
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(n):
            mask = np.zeros((40, 50), np.uint8)
            mask[:, 20:] = 1
            mask[25:, :] = 2
            mask[:3, :3] = 255
            image = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
            image[mask == 1] //= 4
            Image.fromarray(image).save(root / split / "images" / f"{i}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"{i}.png")
    return root


def write_spair_archive(root: Path, categories=("cat", "dog"), pairs_per_category: int = 2, seed: int = 0) -> Path:
    """``root/SPair-71k`` with ``pairs_per_category`` test pairs per category (noise images of 40 x 56, 4 keypoints
    each, the whole image as the box), in the official layout (JPEGImages, PairAnnotation, Layout)."""
    rng = np.random.default_rng(seed)
    archive = root / "SPair-71k"
    lines = []
    number = 0
    for category in categories:
        (archive / "JPEGImages" / category).mkdir(parents=True)
        for pair in range(pairs_per_category):
            number += 1
            names = (f"{category}_{pair}_s", f"{category}_{pair}_t")
            for name in names:
                Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(
                    archive / "JPEGImages" / category / f"{name}.jpg", quality=100
                )
            line = f"{number:06d}-{names[0]}-{names[1]}:{category}"
            lines.append(line)
            keypoints = [[int(x), int(y)] for x, y in zip(rng.integers(0, 56, 4), rng.integers(0, 40, 4))]
            annotation = {
                "category": category,
                "src_imname": f"{names[0]}.jpg",
                "trg_imname": f"{names[1]}.jpg",
                "src_imsize": [56, 40, 3],
                "trg_imsize": [56, 40, 3],
                "src_bndbox": [0, 0, 56, 40],
                "trg_bndbox": [0, 0, 56, 40],
                "src_kps": keypoints,
                "trg_kps": keypoints,
                "viewpoint_variation": pair % 2,
            }
            folder = archive / "PairAnnotation" / "test"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{line}.json").write_text(json.dumps(annotation))
    for layout in ("large", "small"):
        (archive / "Layout" / layout).mkdir(parents=True)
        for split in ("trn", "val"):
            (archive / "Layout" / layout / f"{split}.txt").write_text("")
        (archive / "Layout" / layout / "test.txt").write_text("\n".join(lines) + "\n")
    return archive


def write_depth_folder(root: Path, sizes: dict[str, int] | None = None, seed: int = 0) -> Path:
    """``root/<split>/images/<i>.png`` (28 x 42 noise) with ``root/<split>/depth/<i>.npy`` (metres in 1..5, a few
    zeros for missing values), 4 training and 2 test images by default."""
    rng = np.random.default_rng(seed)
    for split, n in (sizes or {"train": 4, "test": 2}).items():
        (root / split / "images").mkdir(parents=True)
        (root / split / "depth").mkdir(parents=True)
        for i in range(n):
            image = rng.integers(0, 255, (28, 42, 3), dtype=np.uint8)
            depth = (1.0 + 4.0 * image[..., 0] / 255.0).astype(np.float32)  # depth follows the red channel
            depth[:2, :2] = 0.0
            Image.fromarray(image).save(root / split / "images" / f"{i}.png")
            np.save(root / split / "depth" / f"{i}.npy", depth)
    return root


def write_nyu_mat(root: Path, num_images: int = 5, height: int = 24, width: int = 32) -> tuple[Path, Path]:
    """``root/nyu_depth_v2_labeled.mat`` (MATLAB v7.3: HDF5 with every axis reversed, after a 512-byte header) of
    ``num_images`` noise frames with depth in metres, and ``root/splits.mat`` (1-based ``trainNdxs`` 1..3,
    ``testNdxs`` 4..5). Needs h5py and SciPy."""
    import h5py
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (height, width, 3, num_images), dtype=np.uint8)  # MATLAB's H x W x 3 x N
    depths = (1.0 + images[:, :, 0, :] / 64.0).astype(np.float32)  # H x W x N metres
    path = root / "nyu_depth_v2_labeled.mat"
    with h5py.File(path, "w", userblock_size=512) as handle:
        for name, value in (("images", images), ("depths", depths), ("rawDepths", depths)):
            handle[name] = value.transpose()  # reverses every axis, as MATLAB's column-major arrays appear in HDF5
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    with open(path, "r+b") as handle:
        handle.write((text.ljust(116, b" ") + b" " * 8 + b"\x00\x02IM").ljust(512, b"\x00"))
    splits = root / "splits.mat"
    savemat(splits, {"trainNdxs": np.array([[1], [2], [3]]), "testNdxs": np.array([[4], [5]])})
    return path, splits
