#!/usr/bin/env python
r"""Known-warp correspondence of a frozen backbone on a folder of images (run by hand; not part of the tests).

Runs :func:`paka_hf.evaluation.correspondence.warp_correspondence` once per seed (each seed draws other warps
of the same images) and prints, per seed, the PCK at each threshold (in patches and pixels, with the
SPair-style α, the pooled and mutual-match PCK and the chance level) and the wall time, then the mean and
spread over seeds. Defaults: DINOv2 ViT-S/14 on CamVid's 101 val images (480 × 360), at 336 × 448 (CamVid's
aspect, 24 × 32 patches)::

    OMP_NUM_THREADS=2 python benchmarks/warp_correspondence.py \
        --model_dir ../shared/models/dinov2-small-imgfocus --images ../shared/datasets/camvid/val/images \
        --input_size 336,448 --seeds 0,1 --max_images 50

``--random_init`` also scores a random-init backbone of the same config, a floor to read the figures against.
``--output`` writes every run's :meth:`~paka_hf.evaluation.correspondence.CorrespondenceResult.to_dict` as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import AutoConfig  # noqa: E402

from paka_hf.evaluation.correspondence import CorrespondenceConfig, warp_correspondence  # noqa: E402
from paka_hf.modeling.backbones import PatchBackbone  # noqa: E402


def parse_size(text: str) -> int | tuple[int, int]:
    """``"448"`` → 448, ``"336,448"`` → ``(336, 448)``."""
    sides = [int(v) for v in text.split(",")]
    return sides[0] if len(sides) == 1 else (sides[0], sides[1])


def run_seeds(backbone, name: str, images: str, base: CorrespondenceConfig, seeds, device: str) -> list[dict]:
    """One run per seed: prints each table and time, then the mean ± std over seeds; returns the runs' dicts."""
    runs = []
    for seed in seeds:
        config = CorrespondenceConfig(**{**base.to_dict(), "seed": seed})
        start = time.perf_counter()
        result = warp_correspondence(backbone, images, config, device=device)
        seconds = time.perf_counter() - start
        print(f"\n{name}, seed {seed}: {seconds:.1f} s ({seconds / max(result.num_images, 1):.2f} s per image)")
        print(result.format_table(), flush=True)
        runs.append({"model": name, "seconds": seconds, **result.to_dict()})
    if len(runs) > 1:
        pck = np.array([run["pck"] for run in runs], dtype=float)
        spread = pck.std(axis=0, ddof=1)
        summary = ", ".join(
            f"PCK@{t:g} patch ({t * runs[0]['settings']['patch_size']:g} px) {m:.2f} ± {s:.2f}"
            for t, m, s in zip(runs[0]["thresholds"], pck.mean(axis=0), spread)
        )
        print(f"\n{name}, mean ± std over seeds {list(seeds)}: {summary}")
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", default="../shared/models/dinov2-small-imgfocus")
    p.add_argument("--images", default="../shared/datasets/camvid/val/images", help="a folder of images")
    p.add_argument("--input_size", default="336,448", help="N or H,W (multiples of the patch size)")
    p.add_argument("--thresholds", default="1,2,4", help="PCK thresholds in patches")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--max_images", type=int, default=50)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--random_init", action="store_true", help="also score a random-init backbone of this config")
    p.add_argument("--output", default=None, help="write the runs as JSON here")
    args = p.parse_args()

    base = CorrespondenceConfig(
        input_size=parse_size(args.input_size),
        thresholds=tuple(float(t) for t in args.thresholds.split(",")),
        batch_size=args.batch_size,
        max_images=args.max_images,
    )
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    print(f"settings: {json.dumps(base.to_dict())}")
    backbone = PatchBackbone.from_pretrained(args.model_dir).to(args.device)
    runs = run_seeds(backbone, args.model_dir, args.images, base, seeds, args.device)
    if args.random_init:
        torch.manual_seed(0)
        random_backbone = PatchBackbone.from_config(AutoConfig.from_pretrained(args.model_dir)).to(args.device)
        runs += run_seeds(random_backbone, "random-init (same config)", args.images, base, seeds, args.device)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
