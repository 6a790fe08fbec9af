#!/usr/bin/env python
"""FSDP2 on one device: measured memory of a sharded PaKA step beside benchmarks/memory_plan.py's prediction.

Shards a random-init ``PaKAModel`` (student, EMA teacher, head and its EMA copy) with
:func:`paka_hf.modeling.sharding.shard_paka_model` on a mesh of this one process (FSDP2 with world size 1: every
tensor is a one-shard DTensor, the code path of a multi-GPU run without the communication), runs a few AdamW steps
and EMA updates on random views, and prints per backbone:

- ``persistent``: what stays allocated after the optimizer step, before the gradients are dropped (weights,
  gradients, AdamW state, teacher, buffers): on CUDA ``torch.cuda.memory_allocated``, on the CPU (``--smoke``) the
  bytes of those tensors' storages;
- ``planned``: the same parts from :func:`memory_plan.plan_bytes` (strategy ``fsdp``, world size 1), and the ratio;
- ``peak``: ``torch.cuda.max_memory_allocated`` of the step (activations included; CUDA only);
- the step time.

    python benchmarks/fsdp_memory.py                       # on a GPU: ViT-S/14 and ViT-B/14, bf16, 448/98 views
    python benchmarks/fsdp_memory.py --smoke --device cpu  # tiny shapes, gloo, seconds (the suite's smoke run)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (local shards of DTensors), each counted once."""
    from paka_hf.modeling.sharding import local_tensor

    seen, total = set(), 0
    for tensor in tensors:
        local = local_tensor(tensor)
        storage = local.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def persistent_tensors(model, optimizer):
    """Every tensor a step keeps: parameters, their gradients, AdamW state, buffers (teacher included)."""
    yield from model.parameters()
    yield from (p.grad for p in model.parameters() if p.grad is not None)
    for state in optimizer.state.values():
        yield from (v for v in state.values() if torch.is_tensor(v))
    yield from model.buffers()


def measure(name: str, config, *, device: torch.device, bf16: bool, batch: int, sizes: tuple[int, int], steps: int):
    from memory_plan import build_model, plan_bytes

    from paka_hf.modeling.sharding import ShardingSettings, shard_paka_model
    from paka_hf.testing import batch_of_views
    from paka_hf.training.fsdp import FSDPPlan

    torch.manual_seed(0)
    planned = plan_bytes(build_model(config), "fsdp", 1)
    with torch.device(device):
        model = build_model(config, device=device)
    plan = FSDPPlan(1, device.type, ShardingSettings(param_dtype=torch.bfloat16 if bf16 else None))
    shard_paka_model(model, plan.device_mesh(), plan.settings)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=device.type == "cuda"
    )
    views = batch_of_views(batch, *sizes)
    views = {k: v.to(device) if torch.is_tensor(v) else v for k, v in views.items()}
    cuda = device.type == "cuda"
    times = []
    for _ in range(steps):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        model(**views).loss.backward()
        optimizer.step()
        model.update_teacher(0.999)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        persistent = torch.cuda.memory_allocated() if cuda else storage_bytes(persistent_tensors(model, optimizer))
        optimizer.zero_grad(set_to_none=True)
    expected = planned["total"] - planned["fsdp_working_set"]
    return {
        "backbone": name,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "bf16": bf16,
        "persistent_bytes": persistent,
        "planned_bytes": expected,
        "measured_over_planned": round(persistent / expected, 4),
        "peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "planned_working_set_bytes": planned["fsdp_working_set"],
        "step_s": round(min(times[1:] or times), 4),
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny backbone and views (CPU, seconds)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=["s14", "b14"], choices=["s14", "b14"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from paka_hf.testing import tiny_dinov2_config, vit_s14_config
    from paka_hf.training.fsdp import ensure_process_group

    device = torch.device(args.device)
    ensure_process_group(device.type)
    if args.smoke:
        cases = [("tiny", tiny_dinov2_config(registers=2), dict(batch=2, sizes=(56, 28)))]
    else:
        b14 = dict(hidden_size=768, num_attention_heads=12)
        configs = {"s14": ("ViT-S/14", vit_s14_config()), "b14": ("ViT-B/14", vit_s14_config(**b14))}
        cases = [(*configs[m], dict(batch=32, sizes=(448, 98))) for m in args.models]
    results = []
    for name, config, shape in cases:
        result = measure(
            name,
            config,
            device=device,
            bf16=device.type == "cuda",
            batch=shape["batch"],
            sizes=shape["sizes"],
            steps=args.steps,
        )
        results.append(result)
        gib = 2.0**30
        peak = f", peak {result['peak_bytes'] / gib:.2f} GiB" if result["peak_bytes"] else ""
        print(
            f"{name}: persistent {result['persistent_bytes'] / gib:.3f} GiB, planned {result['planned_bytes'] / gib:.3f} "
            f"GiB (measured / planned {result['measured_over_planned']}){peak}, step {result['step_s']} s",
            flush=True,
        )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    torch.distributed.destroy_process_group()
    return results


if __name__ == "__main__":
    os.environ.setdefault("MASTER_PORT", "29451")
    main()
