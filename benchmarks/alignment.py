"""RoIAlign of every (global, local) pair at paper crops: undoing flips by mirroring boxes against flipping grids.

``paka_hf.views.align.align_pairs`` undoes the horizontal flips of the views by mirroring the RoI boxes of
flipped views and flipping their roi² outputs back (module docstring of ``paka_hf.views.align``). The
reference computation flips every flipped view's whole grid back first and aligns without flips
(what ``align_pairs`` did before): the same tokens (``tests/test_views_align.py``), with full copies of
the teacher's grids. Both are timed here, forward and backward (the student's side takes
gradients), on grids laid out as ``PatchBackbone`` returns them (a transposed view of the
backbone's tokens), ViT-S/14 width, 2 global views of 518 (37² patches) and 4 local views of 98
(7²) per image, half of the views flipped:

    python benchmarks/alignment.py [--batch 16] [--repeats 10] [--threads 1] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from paka_hf.views.align import align_pairs
from paka_hf.views.geometry import ViewGeometry
from paka_hf.views.glim import sample_boxes


def token_grids(
    views: int, side: int, dim: int, prefix: int, device: torch.device, requires_grad: bool
) -> torch.Tensor:
    """``(views, dim, side, side)`` grids as ``PatchBackbone`` returns them: a view of (views, prefix + side², dim) tokens."""
    tokens = torch.randn(views, prefix + side * side, dim, device=device, requires_grad=requires_grad)
    return tokens[:, prefix:].transpose(1, 2).reshape(views, dim, side, side)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16, help="images per batch")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls of each kind, interleaved")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dim", type=int, default=384, help="feature width (ViT-S: 384)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    boxes = [sample_boxes(480, 640, 4, generator=generator) for _ in range(args.batch)]
    global_boxes = torch.stack([b.global_boxes for b in boxes]).to(device)
    local_boxes = torch.stack([b.local_boxes for b in boxes]).to(device)
    pair_index = torch.stack([b.pair_index for b in boxes]).to(device)
    global_flips = (torch.rand(args.batch, 2, generator=generator) < 0.5).to(device)
    local_flips = (torch.rand(args.batch, 4, generator=generator) < 0.5).to(device)
    teacher = token_grids(2 * args.batch, 37, args.dim, 5, device, requires_grad=False)
    student = token_grids(4 * args.batch, 7, args.dim, 5, device, requires_grad=True)

    def mirrored_boxes() -> None:
        aligned = align_pairs(
            teacher, student, ViewGeometry(global_boxes, local_boxes, pair_index, global_flips, local_flips)
        )
        aligned.student.sum().backward()

    def flipped_grids() -> None:
        t = torch.where(global_flips.reshape(-1)[:, None, None, None], teacher.flip(-1), teacher)
        s = torch.where(local_flips.reshape(-1)[:, None, None, None], student.flip(-1), student)
        aligned = align_pairs(t, s, ViewGeometry(global_boxes, local_boxes, pair_index))
        aligned.student.sum().backward()

    def timed(step) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    kinds = {"mirrored boxes (align_pairs)": mirrored_boxes, "grids flipped first (reference)": flipped_grids}
    for step in kinds.values():
        step()  # warm-up
    times = {name: [] for name in kinds}
    for _ in range(args.repeats):
        for name, step in kinds.items():
            times[name].append(timed(step))
    print(
        f"align_pairs, batch {args.batch}: teacher grids {tuple(teacher.shape)}, student grids {tuple(student.shape)}, "
        f"{args.device}, {torch.get_num_threads()} threads; median of {args.repeats}, forward + backward"
    )
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, median in medians.items():
        print(f"  {name:34s} {1e3 * median:9.2f} ms")
    mirrored, reference = medians.values()
    print(f"  reference / mirrored: {reference / mirrored:.2f}x")


if __name__ == "__main__":
    main()
