#!/usr/bin/env python
r"""The linear depth probe on a folder or NYUv2's .mat, on CPU or GPU (run by hand; not part of the tests).

Prints the test RMSE (m), δ₁ (%), AbsRel and the wall time of feature extraction, training and scoring
(:mod:`paka_hf.evaluation.depth`), and optionally the same probe on a random-init backbone of the same shape
(a floor every trained backbone should clear).

    # a folder with train/{images,depth} and test/{images,depth}
    OMP_NUM_THREADS=1 python benchmarks/depth_probe.py --data path/to/folder --crop none

    # NYUv2's labelled set with the official split
    python benchmarks/depth_probe.py --data nyu_depth_v2_labeled.mat --splits_file splits.mat --device cuda

    # no depth data at hand: generated scenes (a textured ground plane in perspective and a back wall)
    OMP_NUM_THREADS=1 python benchmarks/depth_probe.py --synthetic 160,40 --data outputs/depth_scenes \
        --input_size 224,308 --epochs 20 --crop none --compare_random

The generated scenes put depth where a ViT can see it (the ground's texture shrinks with distance, the wall's
tiles with the wall's distance), so they check the pipeline end to end; their numbers are not NYUv2's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import AutoConfig  # noqa: E402

from paka_hf.evaluation.depth import (  # noqa: E402
    DepthProbeConfig,
    load_depth_dataset,
    run_depth_probe,
)
from paka_hf.modeling.backbones import PatchBackbone  # noqa: E402


def scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One generated scene: ``(uint8 RGB (H, W, 3), float32 depth (H, W) metres)``.

    A pinhole camera (focal ``f`` = 0.9 · width px) at height ``c`` ∈ [1, 2] m looks level at a ground plane
    tiled with 0.5 m squares; a wall at ``Z_w`` ∈ [3.5, 9] m, tiled with 0.4 m squares, closes the view. Row
    ``y`` below the horizon ``y_h`` sees the ground at ``Z = f c / (y − y_h)`` until the wall is nearer.
    """
    f = 0.9 * width
    camera, horizon, wall = rng.uniform(1.0, 2.0), rng.uniform(0.3, 0.55) * height, rng.uniform(3.5, 9.0)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    below = ys - horizon
    ground = np.where(below > 0, f * camera / np.maximum(below, 1e-6), np.inf)
    on_ground = ground < wall
    depth = np.where(on_ground, ground, wall)
    x_world = (xs - width / 2) * depth / f
    y_world = camera - below * depth / f  # height above the ground, on the wall
    ground_tiles = (np.floor(x_world / 0.5) + np.floor(depth / 0.5)) % 2
    wall_tiles = (np.floor(x_world / 0.4) + np.floor(y_world / 0.4)) % 2
    colours = rng.uniform(40, 215, (4, 3))
    rgb = np.where(
        on_ground[..., None],
        np.where(ground_tiles[..., None] > 0, colours[0], colours[1]),
        np.where(wall_tiles[..., None] > 0, colours[2], colours[3]),
    )
    rgb = rgb * (0.6 + 0.4 * np.exp(-depth / 8))[..., None] + rng.normal(0, 6, rgb.shape)  # haze with distance
    return np.clip(rgb, 0, 255).astype(np.uint8), depth.astype(np.float32)


def write_scenes(root: Path, train: int, test: int, size: tuple[int, int] = (240, 320), seed: int = 0) -> Path:
    """``root/{train,test}/{images,depth}``: train depth as 16-bit PNG millimetres, test depth as ``.npy`` metres
    (both encodings the folder reader takes)."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("test", test)):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "depth").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            rgb, depth = scene(rng, *size)
            Image.fromarray(rgb).save(root / split / "images" / f"{i:05d}.jpg", quality=92)
            if split == "train":
                Image.fromarray(np.round(depth * 1000).astype(np.uint16)).save(root / split / "depth" / f"{i:05d}.png")
            else:
                np.save(root / split / "depth" / f"{i:05d}.npy", depth)
    return root


def parse_size(text: str | None):
    if not text:
        return None
    sides = [int(s) for s in text.split(",")]
    return sides[0] if len(sides) == 1 else tuple(sides)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a folder with train/ and test/, or nyu_depth_v2_labeled.mat")
    p.add_argument("--splits_file", default=None, help="NYUv2's splits.mat (with a .mat --data)")
    p.add_argument("--synthetic", default=None, help="TRAIN,TEST: first write that many generated scenes to --data")
    p.add_argument("--model_dir", default="../shared/models/dinov2-small-imgfocus")
    p.add_argument("--compare_random", action="store_true", help="also probe a random-init backbone of that shape")
    p.add_argument("--input_size", default=None, help="N or H,W; default NYUv2's 480x640 rounded to patches")
    p.add_argument("--epochs", type=int, default=DepthProbeConfig.epochs)
    p.add_argument("--lr", type=float, default=DepthProbeConfig.lr)
    p.add_argument("--num_bins", type=int, default=DepthProbeConfig.num_bins)
    p.add_argument("--crop", default=DepthProbeConfig.crop, choices=("eigen", "none"))
    p.add_argument("--use_cls_token", action="store_true")
    p.add_argument("--max_images", type=int, default=None)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()

    data = Path(args.data)
    if args.synthetic:
        train_count, test_count = (int(n) for n in args.synthetic.split(","))
        start = time.perf_counter()
        write_scenes(data, train_count, test_count)
        print(f"wrote {train_count} + {test_count} generated scenes to {data} in {time.perf_counter() - start:.1f} s")
    train = load_depth_dataset(data, "train", splits_file=args.splits_file)
    test = load_depth_dataset(data, "test", splits_file=args.splits_file)
    config = DepthProbeConfig(
        input_size=parse_size(args.input_size),
        use_cls_token=args.use_cls_token,
        num_bins=args.num_bins,
        crop=args.crop,
        epochs=args.epochs,
        lr=args.lr,
    )
    backbones = {"pretrained": lambda: PatchBackbone.from_pretrained(args.model_dir)}
    if args.compare_random:
        torch.manual_seed(0)
        backbones["random-init"] = lambda: PatchBackbone.from_config(AutoConfig.from_pretrained(args.model_dir))
    print(
        f"device {args.device}, torch threads {torch.get_num_threads()}, {len(train)} train / {len(test)} test images"
    )
    rows = []
    for name, build in backbones.items():
        backbone = build().to(args.device)
        result = run_depth_probe(
            backbone, train, test, config, device=args.device, batch_size=args.batch_size, max_images=args.max_images
        )
        s = result.scores
        rows.append((name, s, result.seconds, result.grid_size))
        print(json.dumps({"backbone": name, **result.to_dict()}, default=str))
    print(f"\ninput {result.input_size}, grid {result.grid_size}, {args.epochs} epochs, crop {args.crop}")
    print("| backbone | RMSE (m) | δ₁ (%) | AbsRel | extract (s) | train (s) | evaluate (s) |")
    print("|---|---|---|---|---|---|---|")
    for name, s, seconds, _ in rows:
        print(
            f"| {name} | {s.rmse:.3f} | {s.delta1:.1f} | {s.abs_rel:.3f} | {seconds['extract']:.1f} | "
            f"{seconds['train']:.1f} | {seconds['evaluate']:.1f} |"
        )


if __name__ == "__main__":
    main()
