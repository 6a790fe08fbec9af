"""``cka_loss`` forward + backward against lightly's ``PatchKernelAlignmentLoss`` on the same tensors.

Both losses compute the same number, ``1 − CKA`` of the linear kernels of each pair's aligned tokens,
averaged over the pairs (checked below before timing). They are timed interleaved, call for call, in
one process, so load from other processes hits both alike; the ratio is the figure to read.

lightly is a comparison only, never a dependency of ``paka_hf``. Install it beside the benchmark
without its dependencies (its loss modules need only torch and torchvision)::

    pip install --no-deps --target /tmp/lightly lightly==1.6.0
    PYTHONPATH=/tmp/lightly python benchmarks/loss_speed.py [--pairs 256] [--tokens 49] [--dim 256] [--threads 1]

The default shape is the paper-scale step's: 256 aligned pairs of 49 tokens (7 × 7 RoIAlign) of 256 dims (the
projection head's output). ``--tokens 512 --dim 64`` exercises the many-tokens / few-dims path.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from paka_hf.losses.cka import cka_loss


def time_call(loss_fn, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> float:
    """Seconds for one forward + backward of ``loss_fn(student, teacher, mask)``."""
    student.grad = None
    start = time.perf_counter()
    loss_fn(student, teacher, mask).backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=49)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=50, help="timed calls of each loss, interleaved")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--masked", action="store_true", help="pass a mask that ignores ~10%% of the tokens")
    args = parser.parse_args()

    try:
        from lightly.loss import PatchKernelAlignmentLoss
    except ImportError as err:
        raise SystemExit(f"lightly is needed for the comparison ({err}); see this file's docstring") from None

    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    shape = (args.pairs, args.tokens, args.dim)
    student = torch.randn(shape, generator=generator).requires_grad_(True)
    teacher = torch.randn(shape, generator=generator)
    mask = torch.rand(shape[:2], generator=generator) < 0.1 if args.masked else None

    # lightly's epsilon is 1e-6, ours 1e-12: neither clamp is active on random features.
    theirs = PatchKernelAlignmentLoss()
    ours_value, their_value = cka_loss(student, teacher, mask).item(), theirs(student, teacher, mask).item()
    if abs(ours_value - their_value) > 1e-5:
        raise SystemExit(f"the two losses disagree: paka_hf {ours_value:.7f}, lightly {their_value:.7f}")

    runs = {"paka_hf cka_loss": (cka_loss, []), "lightly PatchKernelAlignmentLoss": (theirs, [])}
    for step in range(args.warmup + args.repeats):
        for fn, times in runs.values():
            elapsed = time_call(fn, student, teacher, mask)
            if step >= args.warmup:
                times.append(elapsed)

    print(
        f"shape (P, N, d) = {shape}, mask {'on' if args.masked else 'off'}, {args.threads} threads, "
        f"{args.repeats} interleaved forward+backward calls each; loss {ours_value:.6f}"
    )
    medians = {name: statistics.median(times) for name, (_, times) in runs.items()}
    for name, median in medians.items():
        print(f"  {name:34s} median {median * 1e3:8.2f} ms")
    ours, theirs_ms = medians.values()
    print(f"  ratio paka_hf / lightly: {ours / theirs_ms:.3f}")


if __name__ == "__main__":
    main()
