#!/usr/bin/env python
"""Dense evaluation of a supported ViT checkpoint (DINOv2, DINOv2R, DINOv3, SigLIP / SigLIP 2, CLIP): linear probe, overclustering, Hummingbird.

Examples::

    python scripts/evaluate.py --model_name_or_path facebook/dinov2-small --dataset_name voc \\
        --data_dir data/VOCdevkit --protocol linear --output_file results.json
    python scripts/evaluate.py --model_name_or_path out/ --dataset_name folder --data_dir data/my_set \\
        --class_names sky,road,car --ignore_index 255 --protocol overcluster --num_clusters 3,100
    python scripts/evaluate.py --model_name_or_path out/ --dataset_name camvid --data_dir data/camvid \\
        --protocol all --input_size 224,308 --max_images 50     # a quick CPU run

A user error (missing folder, bad mask, missing class names) prints one line ``error: ...`` and exits
with status 2; ``--debug`` shows its traceback.

Defaults are the protocols' settings (docs/EVALUATION.md); ``--published_conventions`` reproduces
the published ADE20K-over-151-classes and Hummingbird std-0.255 conventions.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from paka_hf.cli import run_script  # noqa: E402
from paka_hf.paths import check_local_path  # noqa: E402
from paka_hf.evaluation import (  # noqa: E402
    BENCHMARKS,
    PROTOCOLS,
    EvaluationSettings,
    HubSpec,
    HummingbirdConfig,
    LinearProbeConfig,
    OverclusterConfig,
    read_class_names,
    run_evaluation,
)


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err


def _size(text: str) -> int | tuple[int, int]:
    values = _ints(text)
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return (values[0], values[1])
    raise argparse.ArgumentTypeError(f"--input_size takes N or H,W, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model and data")
    g.add_argument("--model_name_or_path", required=True, help="Hub id or local directory of a supported checkpoint (DINOv2, DINOv3, SigLIP, CLIP...)")
    g.add_argument("--dataset_name", required=True, help=f"one of {', '.join(BENCHMARKS)}")
    g.add_argument("--data_dir", default=None, help="on-disk dataset root; without it the Hub copy is used")
    g.add_argument("--protocol", default="linear",
                   help=f"{', '.join(PROTOCOLS)}, a comma-separated list, or 'all' (features are shared)")
    g.add_argument("--output_file", default="results.json", help="results JSON (see docs/EVALUATION.md)")
    g.add_argument("--train_split", default="train")
    g.add_argument("--val_split", default="val")
    g.add_argument("--class_names", default=None, help="folder datasets: 'a,b,c' or a file with one name per line")
    g.add_argument("--ignore_index", type=int, default=None, help="folder datasets: mask value to ignore (255)")
    g.add_argument("--on_missing", choices=["raise", "skip"], default="raise", help="image without mask")
    g.add_argument("--on_size_mismatch", choices=["raise", "resize"], default="raise", help="mask size != image size")
    g.add_argument("--on_unknown_label", choices=["raise", "ignore"], default="raise", help="unexpected mask values")
    g.add_argument("--mask_dir", default=None,
                   help="voc: mask folder inside VOC2012 (SegmentationClassAug with --train_split trainaug); "
                   "coco-*: mask folder relative to --data_dir")
    g.add_argument("--hub_dataset_id", default=None, help="Hub dataset id (overrides the benchmark's default)")
    g.add_argument("--hub_config", default=None)
    g.add_argument("--image_column", default="image")
    g.add_argument("--mask_column", default="annotation")

    g = p.add_argument_group("features")
    g.add_argument("--input_size", type=_size, default=None,
                   help="N or H,W (multiples of the patch size); default 448 (linear, overcluster) / 504 (hummingbird)")
    g.add_argument("--batch_size", type=int, default=16, help="images per backbone forward")
    g.add_argument("--max_images", type=int, default=None, help="use only the first N images of each split")
    g.add_argument("--max_train_images", type=int, default=None, help="override --max_images for the train split")
    g.add_argument("--augment_passes", type=int, default=2,
                   help="augmented passes over train (linear views and Hummingbird memory passes); 0 = none")
    g.add_argument("--device", default="cuda" if _cuda() else "cpu")
    g.add_argument("--num_workers", type=int, default=0)
    g.add_argument("--published_conventions", action="store_true",
                   help="ADE20K over 151 classes and Hummingbird std 0.255, as in published tables")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no_progress", action="store_true", help="disable progress bars")

    g = p.add_argument_group("linear")
    g.add_argument("--epochs", type=int, default=25)
    g.add_argument("--lr", type=float, default=0.01)
    g.add_argument("--linear_batch_size", type=int, default=128)
    g.add_argument("--lr_step_epoch", type=int, default=20)
    g.add_argument("--eval_size", type=int, default=100, help="linear and overclustering evaluation resolution")

    g = p.add_argument_group("overclustering")
    g.add_argument("--num_clusters", type=_ints, default=None, help="K list, default '#classes,100,300,500'")
    g.add_argument("--seeds", type=_ints, default=[0, 1, 2, 3, 4])
    g.add_argument("--pca_dim", type=int, default=50)
    g.add_argument("--max_fit_patches", type=int, default=None, help="fit k-means on a random subset of tokens")

    g = p.add_argument_group("hummingbird")
    g.add_argument("--num_neighbors", type=int, default=30)
    g.add_argument("--temperature", type=float, default=0.02)
    g.add_argument("--memory_size", type=int, default=None, help="memory-bank size; default: every labelled patch")
    g.add_argument("--hummingbird_eval_size", type=int, default=None, help="default: the input resolution")
    g.add_argument("--knn_backend", choices=["auto", "torch", "faiss"], default="auto")
    return p


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    check_local_path(args.model_name_or_path, "--model_name_or_path")  # a mistyped folder never reaches the Hub
    check_local_path(args.data_dir, "--data_dir", always=True)
    protocols = list(PROTOCOLS) if args.protocol == "all" else [p.strip() for p in args.protocol.split(",")]
    settings = EvaluationSettings(
        linear=LinearProbeConfig(epochs=args.epochs, lr=args.lr, batch_size=args.linear_batch_size,
                                 lr_step_epoch=args.lr_step_epoch, eval_size=args.eval_size, seed=args.seed),
        overcluster=OverclusterConfig(num_clusters=args.num_clusters, seeds=args.seeds, pca_dim=args.pca_dim,
                                      eval_size=args.eval_size, max_fit_patches=args.max_fit_patches),
        hummingbird=HummingbirdConfig(num_neighbors=args.num_neighbors, temperature=args.temperature,
                                      memory_size=args.memory_size, eval_size=args.hummingbird_eval_size,
                                      backend=args.knn_backend, seed=args.seed),
        input_size=args.input_size, augment_passes=args.augment_passes, batch_size=args.batch_size,
        max_images=args.max_images, max_train_images=args.max_train_images,
        published_conventions=args.published_conventions, device=args.device, num_workers=args.num_workers,
        seed=args.seed, progress=not args.no_progress,
    )  # fmt: skip
    dataset_kwargs = dict(on_size_mismatch=args.on_size_mismatch, on_unknown_label=args.on_unknown_label)
    if args.data_dir is not None:
        dataset_kwargs["on_missing"] = args.on_missing
    if args.mask_dir:
        dataset_kwargs["mask_dir"] = args.mask_dir
    if args.class_names:
        dataset_kwargs["class_names"] = read_class_names(args.class_names)
    if args.ignore_index is not None:
        dataset_kwargs["ignore_index"] = args.ignore_index
    if args.hub_dataset_id:
        dataset_kwargs["hub_spec"] = HubSpec(args.hub_dataset_id, args.image_column, args.mask_column, args.hub_config)
    timings: dict[str, float] = {}
    report = run_evaluation(args.model_name_or_path, args.dataset_name, protocols, data_dir=args.data_dir,
                            train_split=args.train_split, val_split=args.val_split, settings=settings,
                            timings=timings, **dataset_kwargs)  # fmt: skip
    report.save(args.output_file)
    for result in report.results:
        spread = f" ± {result.std:.2f}" if result.std is not None else ""
        print(f"{result.dataset_name} {result.split} {result.metric_name}: {result.value:.2f}{spread}")
    print("wall seconds:", json.dumps({k: round(v, 1) for k, v in timings.items()}))
    print(f"results written to {args.output_file}")
    return report.to_dict()


if __name__ == "__main__":
    sys.exit(run_script(main))
