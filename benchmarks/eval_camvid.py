#!/usr/bin/env python
r"""CamVid benchmark of the dense evaluation suite (run by hand; not part of the tests).

Pretrained DINOv2 ViT-S/14 versus a random-init ViT-S/14 of the same shape, on CamVid (train = linear
training / Hummingbird memory split, val = evaluation split): linear mIoU, overclustering mIoU at
K = 11 and K = 100 (5 seeds), Hummingbird mIoU with the full memory bank, and the wall time of each
step. Writes the two results JSON files and a Markdown table (the one in docs/EVALUATION.md).

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/eval_camvid.py \
        --model_dir ../shared/models/dinov2-small-imgfocus --data_dir ../shared/datasets/camvid \
        --input_size 224,308 --output_dir outputs/bench_camvid

The default input (224 × 308, aspect close to CamVid's 480 × 360) keeps the whole benchmark under
~15 minutes on one CPU core; ``--input_size 448`` gives the protocol's size (≈ 4× slower).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import AutoConfig  # noqa: E402

from paka_hf.evaluation import (  # noqa: E402
    CamVid,
    EvaluationSettings,
    FeatureCache,
    HummingbirdConfig,
    LinearProbeConfig,
    OverclusterConfig,
    run_evaluation,
)
from paka_hf.modeling.backbones import PatchBackbone  # noqa: E402


def evaluate_camvid(
    backbone,
    name: str,
    datasets,
    settings: EvaluationSettings,
    protocols,
    long_linear_epochs: int,
    timings: dict[str, float],
):
    """``protocols`` on one backbone, plus (when ``long_linear_epochs`` and the linear protocol) the linear
    probe trained ``long_linear_epochs`` on the same cached features, reported second as
    ``mIoU (linear, N epochs)`` with its wall time in ``timings["linear_long"]``. Returns the report."""
    cache = FeatureCache(
        backbone, batch_size=settings.batch_size, crop_scale=settings.crop_scale, seed=0, progress=settings.progress
    )
    report = run_evaluation(
        name,
        "camvid",
        list(protocols),
        backbone=backbone,
        datasets=datasets,
        settings=settings,
        timings=timings,
        feature_cache=cache,
    )
    if long_linear_epochs and "linear" in protocols:
        long_settings = replace(
            settings, linear=LinearProbeConfig(epochs=long_linear_epochs, lr_step_epoch=int(0.8 * long_linear_epochs))
        )
        long_timings: dict[str, float] = {}
        extra = run_evaluation(
            name,
            "camvid",
            ["linear"],
            backbone=backbone,
            datasets=datasets,
            settings=long_settings,
            timings=long_timings,
            feature_cache=cache,
        )
        assert not any(k.startswith("features/") for k in long_timings), "features were recomputed"
        extra.results[0].metric_name = f"mIoU (linear, {long_linear_epochs} epochs)"
        report.results.insert(1, extra.results[0])
        timings["linear_long"] = long_timings["linear"]
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", default="../shared/models/dinov2-small-imgfocus")
    p.add_argument("--data_dir", default="../shared/datasets/camvid")
    p.add_argument("--input_size", default="224,308", help="N or H,W")
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--augment_passes", type=int, default=2)
    p.add_argument("--max_images", type=int, default=None)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--output_dir", default="outputs/bench_camvid")
    p.add_argument("--models", default="pretrained,random")
    p.add_argument("--protocols", default="linear,overcluster,hummingbird")
    p.add_argument(
        "--long_linear_epochs",
        type=int,
        default=100,
        help="also train the linear probe this long on the same features (0: skip); the 25-epoch "
        "schedule is sized for VOC and under-trains on CamVid's 367 images",
    )
    args = p.parse_args()

    size = [int(v) for v in args.input_size.split(",")]
    input_size = size[0] if len(size) == 1 else tuple(size)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    train = CamVid(args.data_dir, "train")
    val = CamVid(args.data_dir, "val")
    settings = EvaluationSettings(
        linear=LinearProbeConfig(epochs=args.epochs),
        overcluster=OverclusterConfig(num_clusters=[11, 100]),
        hummingbird=HummingbirdConfig(memory_size=None),
        input_size=input_size,
        augment_passes=args.augment_passes,
        batch_size=args.batch_size,
        max_images=args.max_images,
    )
    rows = []
    for which in args.models.split(","):
        torch.manual_seed(0)
        if which == "pretrained":
            backbone = PatchBackbone.from_pretrained(args.model_dir)
            name = args.model_dir
        else:
            backbone = PatchBackbone.from_config(AutoConfig.from_pretrained(args.model_dir))
            name = f"random-init ViT-S/14 ({args.model_dir} config)"
        timings: dict[str, float] = {}
        start = time.perf_counter()
        report = evaluate_camvid(
            backbone, name, (train, val), settings, args.protocols.split(","), args.long_linear_epochs, timings
        )
        total = time.perf_counter() - start
        report.save(out / f"{which}.json")
        (out / f"{which}_timings.json").write_text(json.dumps({**timings, "total": total}, indent=2))
        feats = {k: v for k, v in timings.items() if k.startswith("features/")}
        train_s = sum(v for k, v in feats.items() if "/train/" in k)
        val_s = sum(v for k, v in feats.items() if "/val/" in k)
        for r in report.results:
            step = "linear_long" if "epochs)" in r.metric_name else r.protocol
            rows.append((which, r.metric_name, r.value, r.std, timings[step]))
        rows.append((which, "features: train (2 aug passes) / val", None, None, (train_s, val_s)))
        rows.append((which, "total wall time", None, None, total))
        print(f"{which}: " + ", ".join(f"{r.metric_name} {r.value:.2f}" for r in report.results), flush=True)

    lines = ["| model | metric | mIoU (%) | wall time (s) |", "| --- | --- | ---: | ---: |"]
    for which, metric, value, std, secs in rows:
        val_text = "" if value is None else f"{value:.1f}" + (f" ± {std:.1f}" if std is not None else "")
        secs_text = " / ".join(f"{s:.0f}" for s in secs) if isinstance(secs, tuple) else f"{secs:.0f}"
        lines.append(f"| {which} | {metric} | {val_text} | {secs_text} |")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
