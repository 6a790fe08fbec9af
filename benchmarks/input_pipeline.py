"""Input-pipeline throughput: JPEG files → decode → GLIM boxes → teacher and student views → batches.

Runs the real data path of training (``load_image_source`` → ``PaKAViewStream`` → ``PaKACollator``
in a ``DataLoader``) with no model, and reports images/s for 1 and 2 worker processes, at 224/98
and paper-scale 518/98 views (uint8, as training ships them; ``--float_views`` for float32), on CamVid train (480 × 360, from ../shared when present) and on
synthetic 640 × 480 JPEGs like COCO's. Each worker process uses one torch thread (the DataLoader
default), so images/s per worker is images/s per core.

With ``--view_rendering device`` the workers only decode the JPEG and make the random draws (boxes,
flips, photometric parameters); the views are rendered later by the model on its device
(``benchmarks/gpu_step.py --view_rendering device`` times that part). The figure is then the CPU side
alone: how many images/s one core can feed an accelerator.

    python benchmarks/input_pipeline.py [--batch 16] [--batches 12] [--workers 1 2] [--sizes 224 518]
                                        [--view_rendering cpu device]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

from paka_hf.testing import synthetic_jpegs
from paka_hf.training.data import PaKACollator, PaKAViewStream, load_image_source
from paka_hf.views.glim import GlimTransform

CAMVID = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "camvid" / "train" / "images"


def measure(
    images: Path,
    global_size: int,
    workers: int,
    batch: int,
    batches: int,
    warmup: int,
    normalize: bool,
    rendering: str = "cpu",
) -> float:
    """Images/s of the DataLoader after ``warmup`` batches (worker start-up excluded)."""
    source = load_image_source(str(images))
    transform = GlimTransform(global_size, 98, 4, patch_size=14, normalize=normalize, rendering=rendering)
    stream = PaKAViewStream(source, transform, seed=0, shuffle_buffer_size=0, num_workers=workers)
    loader = torch.utils.data.DataLoader(
        stream,
        batch_size=batch,
        num_workers=workers,
        collate_fn=PaKACollator(),
        prefetch_factor=4 if workers else None,
    )
    iterator = iter(loader)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    elapsed = time.perf_counter() - start
    del iterator
    return batch * batches / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 518], help="global view sizes (local: 98)")
    parser.add_argument(
        "--float_views",
        action="store_true",
        help="normalize to float32 in the workers (the old path) instead of shipping uint8 views",
    )
    parser.add_argument(
        "--view_rendering",
        nargs="+",
        choices=["cpu", "device"],
        default=["cpu"],
        help="'cpu': workers render the views; 'device': workers decode and draw only (the model "
        "renders on its device, not timed here). Several: measured side by side, same run",
    )
    args = parser.parse_args()
    logging.getLogger("paka_hf.training.data").setLevel(logging.ERROR)  # the stride warning, once per worker

    sets = {"synthetic 640x480": synthetic_jpegs(Path(tempfile.mkdtemp(prefix="paka_jpegs_")), 96)}
    if CAMVID.is_dir():
        sets = {"CamVid 480x360": CAMVID, **sets}
    print(
        f"batch {args.batch}, {args.batches} timed batches after {args.warmup}; 2 global + 4 local (98) views per image, "
        f"{'float32 normalized' if args.float_views else 'uint8'} views"
    )
    print(
        f"{'images':20s}{'global':>8s}{'workers':>9s}{'rendering':>11s}{'images/s':>10s}{'per worker':>12s}",
        flush=True,
    )
    for name, folder in sets.items():
        for size in args.sizes:
            for workers in args.workers:
                for rendering in args.view_rendering:
                    rate = measure(
                        folder,
                        size,
                        workers,
                        args.batch,
                        args.batches,
                        args.warmup,
                        normalize=args.float_views,
                        rendering=rendering,
                    )
                    print(
                        f"{name:20s}{size:8d}{workers:9d}{rendering:>11s}{rate:10.1f}{rate / max(workers, 1):12.1f}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
