#!/usr/bin/env python
r"""Hummingbird mIoU at several memory-bank sizes, features extracted once per model (run by hand; not a test).

For each model, the CamVid training split is encoded once (``--augment_passes`` augmented passes, the memory
bank's maps) and the val split once, into one :class:`~paka_hf.evaluation.features.FeatureCache`; then
Hummingbird runs once per ``--memory_sizes`` entry on those same features (``full`` = every labelled patch).
Prints one line per (model, memory size) with the mIoU, the bank size and the search's wall seconds, and writes
every report to ``--output`` (JSON: ``{model: {memory size: report}}``)::

    OMP_NUM_THREADS=2 python benchmarks/hummingbird_memory.py \
        --models base=../shared/models/dinov2-small-imgfocus paka=outputs/repro/paka/seed0 \
        --data_dir ../shared/datasets/camvid --input_size 448,616 --memory_sizes 102400 full \
        --output outputs/hummingbird_memory.json

The reference evaluator's bounded banks are 102,400 / 1,024,000 / 10,240,000 patches (open-hummingbird-eval v2);
CamVid's 367 training images × 2 passes at 448 × 616 hold 1,018,658 labelled patches, so ``full`` ≈ 1.02 M.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from paka_hf.evaluation import (  # noqa: E402
    CamVid,
    EvaluationSettings,
    FeatureCache,
    HummingbirdConfig,
    run_evaluation,
)
from paka_hf.modeling.backbones import PatchBackbone  # noqa: E402


def parse_size(text: str) -> int | tuple[int, int]:
    """``"448"`` → 448, ``"448,616"`` → ``(448, 616)``."""
    sides = [int(v) for v in text.split(",")]
    return sides[0] if len(sides) == 1 else (sides[0], sides[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", required=True, help="NAME=PATH pairs")
    p.add_argument("--data_dir", default="../shared/datasets/camvid")
    p.add_argument("--input_size", default="448,616")
    p.add_argument("--memory_sizes", nargs="+", default=["102400", "full"], help="patch counts, or 'full'")
    p.add_argument("--augment_passes", type=int, default=2)
    p.add_argument("--knn_backend", default="auto")
    p.add_argument("--device", default="cpu")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args()

    models = [entry.split("=", 1) for entry in args.models]
    if any(len(pair) != 2 for pair in models):
        raise SystemExit("--models takes NAME=PATH pairs")
    sizes = [None if size == "full" else int(size) for size in args.memory_sizes]
    datasets = (CamVid(args.data_dir, "train"), CamVid(args.data_dir, "val"))
    settings = EvaluationSettings(
        input_size=parse_size(args.input_size), augment_passes=args.augment_passes, device=args.device
    )
    out: dict[str, dict[str, dict]] = {}
    for name, path in models:
        backbone = PatchBackbone.from_pretrained(path).to(args.device).eval()
        cache = FeatureCache(
            backbone,
            batch_size=settings.batch_size,
            device=args.device,
            crop_scale=settings.crop_scale,
            seed=settings.seed,
            progress=settings.progress,
        )
        out[name] = {}
        for size in sizes:
            hummingbird = HummingbirdConfig(memory_size=size, backend=args.knn_backend)
            timings: dict[str, float] = {}
            start = time.perf_counter()
            report = run_evaluation(
                path,
                "camvid",
                ["hummingbird"],
                settings=replace(settings, hummingbird=hummingbird),
                backbone=backbone,
                datasets=datasets,
                feature_cache=cache,
                timings=timings,
            )
            result = report.results[0]
            label = "full" if size is None else str(size)
            print(
                f"{name} memory {label}: mIoU {result.value:.2f}, bank {result.settings['memory_bank_size']:,} "
                f"patches, search {timings['hummingbird']:.0f} s "
                f"(this size's call {time.perf_counter() - start:.0f} s, features included the first time), "
                f"{result.settings['knn_index']}",
                flush=True,
            )
            out[name][label] = {**report.to_dict(), "timings": timings}
        if args.output is not None:  # after each model, so an interrupted sweep keeps what it measured
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
