#!/usr/bin/env python
"""What each LoRA option costs on ViT-S/14's shape (random weights), against full post-training, on this machine.

For each option set (``--sets``; full post-training, plain LoRA, rsLoRA, DoRA, LoRA + norms, LoRA + 1 or 2 unfrozen
blocks, everything at once) it builds the ``PaKAModel`` the trainer builds (no head, as ``configs/repro``'s recipes)
and reports:

- trainable parameters (student backbone; what ``training_summary.json`` records) and the share of the backbone's;
- the teacher's own tensors (a full copy for full post-training; the trained tensors only under LoRA);
- the weight side of training in MiB: every tensor of the model once (student, teacher), the gradients of the
  trainable parameters and AdamW's two fp32 moments of them;
- the median wall and process-CPU seconds of one optimizer step (teacher forward on the global views, student
  forward and backward on the local views, 1 - CKA, AdamW over the trainer's groups, EMA), on a batch of
  ``--batch`` images of 2 global ``--global_size`` and 4 local ``--local_size`` views, after ``--warmup`` steps.

The sets are timed in turns, one step of each per round, so the load others put on a shared machine falls on
all of them alike; the ratio to the first set is printed beside each. On a loaded machine run it on one thread
(``OMP_NUM_THREADS=1``): the CPU seconds per step are then the steadier figure. The process's peak resident memory
is printed last: with one set per process (``--sets dora``), it is that set's whole footprint, activations included.

    OMP_NUM_THREADS=1 python benchmarks/lora_options.py     # every set, batch 4, 224/98 views, 6 rounds
    python benchmarks/lora_options.py --sets full lora dora --rounds 10
    python benchmarks/lora_options.py --sets dora --rounds 2   # its peak resident memory
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from paka_hf.modeling.backbones import PatchBackbone
from paka_hf.modeling.lora import LoRASettings, add_lora
from paka_hf.modeling.model import PaKAModel
from paka_hf.testing import batch_of_views, vit_s14_config
from paka_hf.training.optimization import optimizer_groups

#: Option sets: None is full post-training; otherwise the LoRASettings (rank 16, alpha 16, the family's targets).
SETS = {
    "full": None,
    "lora": LoRASettings(),
    "rslora": LoRASettings(variant="rslora"),
    "dora": LoRASettings(variant="dora"),
    "lora+norms": LoRASettings(train_norms=True),
    "lora+1block": LoRASettings(unfrozen_blocks=1),
    "lora+2blocks": LoRASettings(unfrozen_blocks=2),
    "dora+1block+norms": LoRASettings(variant="dora", unfrozen_blocks=1, train_norms=True),
}
MIB = 2**20


def build(settings: LoRASettings | None) -> tuple[PaKAModel, torch.optim.Optimizer]:
    torch.manual_seed(0)
    backbone = PatchBackbone.from_config(vit_s14_config(drop_path_rate=0.1))
    if settings is not None:
        add_lora(backbone, settings)
    model = PaKAModel(backbone).train()
    groups = optimizer_groups(model, learning_rate=1e-4, head_learning_rate=1e-4, weight_decay=0.04)
    return model, torch.optim.AdamW(groups)


def weight_side_bytes(model: PaKAModel) -> dict[str, int]:
    """Bytes of every parameter and buffer of the model (each storage once), of the trainable parameters'
    gradients, and of AdamW's two moments of them (fp32, the model's dtype)."""
    storages = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
    trainable = sum(p.numel() * p.element_size() for p in model.student.parameters() if p.requires_grad)
    return {"model": sum(storages.values()), "gradients": trainable, "adamw": 2 * trainable}


def step(model: PaKAModel, optimizer: torch.optim.Optimizer, batch: dict) -> None:
    optimizer.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    optimizer.step()
    model.update_teacher(0.9995)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--global_size", type=int, default=224)
    parser.add_argument("--local_size", type=int, default=98)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()

    batch = batch_of_views(args.batch, args.global_size, args.local_size)
    runs = {name: build(SETS[name]) for name in args.sets}
    print(f"torch threads {torch.get_num_threads()}, batch {args.batch}, views {args.global_size}/{args.local_size}")
    print(f"{'set':<20}{'trainable':>12}{'share':>8}{'teacher':>12}{'model MiB':>11}{'grad+AdamW MiB':>16}")
    for name, (model, _) in runs.items():
        backbone = sum(p.numel() for p in model.student.parameters())
        trainable = sum(p.numel() for p in model.student.parameters() if p.requires_grad)
        teacher = sum(p.numel() for p in model.teacher.parameters())
        size = weight_side_bytes(model)
        print(
            f"{name:<20}{trainable:>12,}{100 * trainable / backbone:>7.1f}%{teacher:>12,}{size['model'] / MIB:>11.1f}"
            f"{(size['gradients'] + size['adamw']) / MIB:>16.1f}"
        )
    wall = {name: [] for name in runs}
    cpu = {name: [] for name in runs}
    for round_index in range(args.warmup + args.rounds):
        for name, (model, optimizer) in runs.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            step(model, optimizer, batch)
            if round_index >= args.warmup:
                wall[name].append(time.perf_counter() - start_wall)
                cpu[name].append(time.process_time() - start_cpu)
        print(f"round {round_index + 1}/{args.warmup + args.rounds} done", flush=True)
    first = args.sets[0]
    base_wall, base_cpu = statistics.median(wall[first]), statistics.median(cpu[first])
    print(f"{'set':<20}{'wall s/step':>12}{'x ' + first:>10}{'CPU s/step':>12}{'x ' + first:>10}")
    for name in runs:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f"{name:<20}{w:>12.2f}{w / base_wall:>10.2f}{c:>12.2f}{c / base_cpu:>10.2f}")
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(f"peak resident memory of this process: {peak_kib / 1024:.0f} MiB ({', '.join(runs)})")


if __name__ == "__main__":
    main()
