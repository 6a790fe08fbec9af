"""Full PaKA training step against the bare backbone step, ViT-S/14 shape, on this machine.

    full:  PaKATrainer step = DataLoader (JPEG decode + GLIM views in `--workers` processes) → teacher fwd
           (globals) → student fwd (locals) → RoIAlign → head → 1 − CKA → backward → AdamW → EMA
    bare:  teacher fwd (globals) + student fwd/backward (locals, loss = sum of patch tokens) on the same
           views, pre-rendered in memory: the backbone's own arithmetic
    bare + heads (with the head on, reported beside): the same plus the projection heads on as many tokens as
           the full step aligns (B · n_local · roi² per side, taken from the grids without RoIAlign): the
           method's own arithmetic; full / (bare + heads) is then the cost of alignment, loss, optimizer,
           EMA and data loading alone

Reports the median seconds per step of each (after warm-up), their ratio, and images/s. Both run in the
same process, one after the other. Images: CamVid train from ../shared if present, else synthetic
640x480 JPEGs.

    python benchmarks/train_step.py [--batch 8] [--steps 14] [--workers 2] [--no_head] [--images DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoModel, TrainerCallback

from paka_hf import PaKAConfig, PaKATrainer
from paka_hf.testing import synthetic_jpegs, vit_s14_config
from paka_hf.utils.imaging import is_image_file
from paka_hf.views.glim import collate_views, normalize_views

CAMVID = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "camvid" / "train" / "images"


class StepTimer(TrainerCallback):
    def __init__(self):
        self.ends = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no_head", action="store_true")
    parser.add_argument("--images", type=Path, default=None)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="paka_bench_"))
    images = args.images or (CAMVID if CAMVID.is_dir() else synthetic_jpegs(work / "images", 64))
    torch.manual_seed(0)
    AutoModel.from_config(vit_s14_config()).save_pretrained(work / "model")

    config = PaKAConfig(
        output_dir=str(work / "out"),
        model_name_or_path=str(work / "model"),
        dataset_name=str(images),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch,
        dataloader_num_workers=args.workers,
        use_head=not args.no_head,
        use_cpu=True,
        save_steps=10_000,
        logging_steps=10_000,
        disable_tqdm=True,
        shuffle_buffer_size=64,
        report_to="none",
    )
    timer = StepTimer()
    trainer = PaKATrainer(args=config, callbacks=[timer])
    start = time.perf_counter()
    trainer.train()
    full_steps = np.diff([start, *timer.ends])[args.warmup :]

    # Bare backbone on the same kind of views, rendered beforehand.
    model = trainer.model
    transform = trainer.view_transform
    files = sorted(p for p in Path(images).iterdir() if is_image_file(p))[: args.batch]
    batch = collate_views([transform(Image.open(f).convert("RGB")) for f in files])
    batch = {
        k: normalize_views(v) if k.endswith("_views") else v for k, v in batch.items()
    }  # the model's own first op
    roi_tokens = model.roi_size**2
    teacher_index = (
        torch.arange(args.batch)[:, None] * batch["global_boxes"].shape[1] + batch["pair_index"]
    ).flatten()

    def bare_step(with_heads: bool) -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            teacher_grids = model.teacher(batch["global_views"].flatten(0, 1))
        student_grids = model.student(batch["local_views"].flatten(0, 1))
        if with_heads and model.student_head is not None:
            # The heads' own arithmetic on as many tokens as the full step aligns (P = B·n_local pairs × roi²
            # per side), taken straight from the grids: the method's FLOPs, without alignment and loss.
            with torch.no_grad():
                model.teacher_head(teacher_grids.flatten(2).transpose(1, 2)[teacher_index, :roi_tokens])
            student_grids = model.student_head(student_grids.flatten(2).transpose(1, 2)[:, :roi_tokens])
        student_grids.sum().backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    bare_steps, heads_steps = [], []
    for i in range(args.steps):  # interleaved, so that machine noise hits both alike
        plain, heads = bare_step(False), bare_step(True)
        if i >= args.warmup:
            bare_steps.append(plain)
            heads_steps.append(heads)

    full, bare, bare_heads = (
        statistics.median(full_steps),
        statistics.median(bare_steps),
        statistics.median(heads_steps),
    )
    print(
        f"images: {images} | batch {args.batch} | views 2x{config.global_size} + {config.n_local}x{config.local_size} | "
        f"head {'on' if config.use_head else 'off'} | data workers {args.workers} | torch threads {torch.get_num_threads()}"
    )
    print(f"full PaKA step (trainer, data included): {full:.3f} s/step  ({args.batch / full:.1f} images/s)")
    print(f"bare backbone fwd/bwd on the same views: {bare:.3f} s/step  ({args.batch / bare:.1f} images/s)")
    print(f"ratio full / bare: {full / bare:.3f}")
    if config.use_head:
        print(
            f"bare + heads (teacher fwd + student fwd/bwd incl. both heads on the B·n_local·roi² tokens the full step "
            f"aligns): {bare_heads:.3f} s/step"
        )
        print(f"ratio full / (bare + heads): {full / bare_heads:.3f}")


if __name__ == "__main__":
    main()
