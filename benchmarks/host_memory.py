#!/usr/bin/env python
"""What keeping freed host memory in the process (paka_hf/utils/host_memory.py) saves on a CPU (run by hand).

Each case runs in its own process twice, alternately, with glibc's defaults and with
:func:`paka_hf.utils.host_memory.keep_freed_host_memory` (mallopt is process-wide and cannot be undone):

- ``extract``: :func:`paka_hf.evaluation.extract_features` over the first ``--images`` CamVid val images at
  ``--input_size`` (what ``paka-evaluate`` spends most of its time in);
- ``train``: forward and backward of the backbone on ``--batch`` images of 224² with AdamW (a training step's
  large tensors, without the data pipeline).

Prints seconds, minor page faults and system CPU seconds per case and mode, the ratio, and whether the features
are bit-identical (they must be: only where memory comes from changes).

    python benchmarks/host_memory.py --shared ../shared
    python benchmarks/host_memory.py --shared ../shared --images 64 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _usage() -> tuple[float, int, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), r.ru_minflt, r.ru_stime


def run_case(case: str, keep: bool, args: argparse.Namespace) -> dict:
    """One measurement in this process (called in a child by :func:`main`)."""
    import torch

    from paka_hf.evaluation import extract_features, load_segmentation_dataset
    from paka_hf.modeling.backbones import PatchBackbone
    from paka_hf.utils.host_memory import keep_freed_host_memory

    applied = keep_freed_host_memory() if keep else False
    backbone = PatchBackbone.from_pretrained(str(args.shared / "models" / "dinov2-small-imgfocus"))
    if case == "extract":
        data = load_segmentation_dataset("camvid", "val", data_dir=str(args.shared / "datasets" / "camvid"))
        h, _, w = args.input_size.partition(",")
        kwargs = dict(input_size=(int(h), int(w or h)), batch_size=args.batch_size, progress=False)
        extract_features(backbone, data, max_images=2, **kwargs)  # warm-up
        t0, f0, s0 = _usage()
        features = extract_features(backbone, data, max_images=args.images, **kwargs).features
        t1, f1, s1 = _usage()
        digest = float(features.float().double().sum())
    else:
        torch.manual_seed(0)
        optimizer = torch.optim.AdamW([p for p in backbone.parameters() if p.requires_grad], lr=1e-5)
        pixels = torch.randn(args.batch, 3, 224, 224)

        def step() -> None:
            backbone(pixels).float().square().mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        step()  # warm-up
        t0, f0, s0 = _usage()
        for _ in range(args.steps):
            step()
        t1, f1, s1 = _usage()
        digest = float(sum(p.double().sum() for p in backbone.parameters()))
    return {
        "case": case,
        "keep": keep,
        "applied": applied,
        "seconds": t1 - t0,
        "minflt": f1 - f0,
        "sys_s": s1 - s0,
        "digest": digest,
    }


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    p.add_argument("--cases", nargs="+", choices=["extract", "train"], default=["extract", "train"])
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--input_size", default="448,616")
    p.add_argument("--batch_size", type=int, default=16, help="extraction batch (paka-evaluate's default)")
    p.add_argument("--batch", type=int, default=8, help="training images per step")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=1, help="alternating rounds of both modes")
    p.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child:
        case, keep = args._child
        print(json.dumps(run_case(case, keep == "1", args)))
        return []
    rows = []
    for case in args.cases:
        for _ in range(args.rounds):
            for keep in (False, True):
                cmd = [sys.executable, __file__, "--_child", case, str(int(keep)), *(argv or sys.argv[1:])]
                env = dict(os.environ, PAKA_KEEP_FREED_HOST_MEMORY="1" if keep else "0")
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
                r = rows[-1]
                print(
                    f"{case:8s} keep={int(keep)} applied={int(r['applied'])}: {r['seconds']:7.1f} s, "
                    f"{r['minflt']:>10,} minor faults, {r['sys_s']:5.1f} s system",
                    flush=True,
                )
        base = [r for r in rows if r["case"] == case and not r["keep"]]
        kept = [r for r in rows if r["case"] == case and r["keep"]]
        ratio = sum(r["seconds"] for r in base) / sum(r["seconds"] for r in kept)
        same = {r["digest"] for r in base} == {r["digest"] for r in kept}
        print(f"{case}: {ratio:.2f}x faster with freed memory kept; identical results: {same}", flush=True)
    return rows


if __name__ == "__main__":
    main()
