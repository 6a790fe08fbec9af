"""Cost of the PaKA parts (alignment + loss) against the bare backbone step, on CPU.

One step, ViT-S/14 shape (random init), B images, 2 global views of 224 and 4 local views of 98:

    full:      render views → teacher fwd (globals) → student fwd (locals) → RoIAlign → 1 − CKA → backward
    baseline:  render views → teacher fwd (globals) → student fwd (locals) → sum of student tokens → backward

Steps are interleaved (full, baseline, full, ...) so that machine noise hits both alike; the
ratio of medians is reported, with the absolute times. ``--head`` adds the projection head
(2048/2048/256) to the full step, and measures a third step, ``baseline + heads``: the baseline plus both
heads on as many tokens as the full step aligns (B · n_local · roi² per side, straight from the grids),
so that full / (baseline + heads) is the cost of alignment and loss over the method's own arithmetic.

    python benchmarks/core_step.py [--batch 2] [--repeats 10] [--threads 2] [--head]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from paka_hf.modeling.backbones import PatchBackbone, ProjectionHead
from paka_hf.modeling.model import PaKAModel
from paka_hf.testing import random_image, vit_s14_config
from paka_hf.views.glim import GlimTransform, collate_views


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--head", action="store_true", help="add the projection head to the full step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rng = np.random.default_rng(0)
    images = [random_image(rng, 360, 480) for _ in range(args.batch)]
    transform = GlimTransform(224, 98, n_local=4, patch_size=14)
    head = ProjectionHead(384) if args.head else None
    model = PaKAModel(PatchBackbone.from_config(vit_s14_config(drop_path_rate=0.0)), head).train()

    def views():
        return collate_views([transform(im) for im in images])

    def full_step() -> dict[str, float]:
        t0 = time.perf_counter()
        batch = views()
        t1 = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        t2 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        return {"views": t1 - t0, "model": t2 - t1, "total": t2 - t0}

    roi_tokens = model.roi_size**2

    def baseline_step(with_heads: bool = False) -> dict[str, float]:
        t0 = time.perf_counter()
        batch = views()
        t1 = time.perf_counter()
        with torch.no_grad():
            teacher_grids = model.teacher(batch["global_views"].flatten(0, 1))
        student_grids = model.student(batch["local_views"].flatten(0, 1))
        if with_heads:  # both heads on as many tokens as the full step aligns, straight from the grids
            teacher_index = (torch.arange(args.batch)[:, None] * 2 + batch["pair_index"]).flatten()
            with torch.no_grad():
                model.teacher_head(teacher_grids.flatten(2).transpose(1, 2)[teacher_index, :roi_tokens])
            student_grids = model.student_head(student_grids.flatten(2).transpose(1, 2)[:, :roi_tokens])
        student_grids.sum().backward()
        t2 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        return {"views": t1 - t0, "model": t2 - t1, "total": t2 - t0}

    # PaKA parts alone (alignment + loss + backward through them), on grids of the real shapes.
    d, b = 384, args.batch
    t_grids = torch.randn(b * 2, d, 16, 16)
    s_grids = torch.randn(b * 4, d, 7, 7, requires_grad=True)
    batch = views()

    def paka_parts() -> float:
        from paka_hf.losses import cka_loss
        from paka_hf.views.align import align_pairs
        from paka_hf.views.geometry import ViewGeometry

        t0 = time.perf_counter()
        a = align_pairs(t_grids, s_grids, ViewGeometry.from_batch(batch))
        cka_loss(a.student, a.teacher, a.mask).backward()
        return time.perf_counter() - t0

    for _ in range(2):  # warm-up
        full_step(), baseline_step(), paka_parts()
    full, base, base_heads, parts = [], [], [], []
    for _ in range(args.repeats):
        full.append(full_step())
        base.append(baseline_step())
        if args.head:
            base_heads.append(baseline_step(with_heads=True))
        parts.append(paka_parts())

    def med(rows, key):
        return statistics.median(r[key] for r in rows)

    print(
        f"ViT-S/14 random init, batch {args.batch} images, 2x224 + 4x98 views, threads {args.threads}, "
        f"head {'on (full step only)' if args.head else 'off'}, repeats {args.repeats}"
    )
    print(f"{'':28s}{'views':>10s}{'model':>10s}{'total':>10s}   (median seconds)")
    print(f"{'full PaKA step':28s}{med(full, 'views'):10.4f}{med(full, 'model'):10.4f}{med(full, 'total'):10.4f}")
    print(
        f"{'baseline (sum of tokens)':28s}{med(base, 'views'):10.4f}{med(base, 'model'):10.4f}{med(base, 'total'):10.4f}"
    )
    print(f"alignment + loss + their backward alone: {statistics.median(parts) * 1e3:.2f} ms")
    if args.head:
        print(
            f"{'baseline + heads':28s}{med(base_heads, 'views'):10.4f}{med(base_heads, 'model'):10.4f}"
            f"{med(base_heads, 'total'):10.4f}"
        )
    ratio = med(full, "total") / med(base, "total")
    print(f"ratio full / baseline (total): {ratio:.3f}  -> PaKA parts add {100 * (ratio - 1):+.1f} %")
    if args.head:
        ratio_heads = med(full, "total") / med(base_heads, "total")
        print(
            f"ratio full / (baseline + heads) (total): {ratio_heads:.3f}  -> alignment + loss add "
            f"{100 * (ratio_heads - 1):+.1f} % over the backbones and heads"
        )
    print(
        f"alignment + loss as a share of the baseline step: {100 * statistics.median(parts) / med(base, 'total'):.2f} %"
    )


if __name__ == "__main__":
    main()
