"""Which ATen ops the full PaKA step runs that the bare step does not, and how many bytes they touch.

The GPU ratio full / bare (``gpu_step.py``) says *how much* the full step adds; on a device a profile says
which kernels took the time. This script says *what work* is added, on any machine, from the same steps
as ``gpu_step.py`` (same model, views, optimizer; ``--smoke``, ``--batch``, ``--precision`` … as there):
each step runs once under a ``TorchDispatchMode`` that records every ATen op it dispatches. View ops
(``view``, ``t``, ``expand``, ``detach`` …: no kernel, no memory traffic) are left out; every other op
launches at least one kernel on an accelerator (the ``_foreach_*`` and fused optimizer ops one per chunk of
tensors), so on a GPU each costs a few microseconds even when tiny.

Per op: the calls, the MB of its tensor arguments (what it may read) and the MB of the tensors it
returns (what it writes; in-place ops such as ``_fused_adamw_`` and ``_foreach_lerp_`` return nothing,
so count their arguments twice for the traffic). Figures are for the batch run; parameter-sized ops
(optimizer, EMA, clipping) do not grow with the batch, the rest does linearly.

    python benchmarks/step_ops.py                                   # ViT-S/14, batch 2, bf16 autocast, paper crops
    python benchmarks/step_ops.py --precision fp32 --models b14     # without autocast (no _to_copy casts)
    python benchmarks/step_ops.py --smoke                           # tiny shapes, a second or two
"""

from __future__ import annotations

import argparse
import collections
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parent))
if __name__ == "__main__":  # run as a script: where torchvision or Pillow do not import, stand-ins take their place
    from _stand_ins import install_stand_ins

    install_stand_ins()  # before gpu_step imports paka_hf
import gpu_step  # noqa: E402  (the steps, model and views measured here are gpu_step's)

# ops that only make a new view of existing memory (or record a profiler range): no kernel, no traffic
VIEW_OPS = frozenset(
    {
        "aten.alias.default",
        "aten.as_strided.default",
        "aten.detach.default",
        "aten.expand.default",
        "aten.permute.default",
        "aten.select.int",
        "aten.slice.Tensor",
        "aten.split.Tensor",
        "aten.split_with_sizes.default",
        "aten.squeeze.dim",
        "aten.squeeze.dims",
        "aten.t.default",
        "aten.transpose.int",
        "aten.unbind.int",
        "aten.unsqueeze.default",
        "aten.view.default",
        "aten._unsafe_view.default",
        "aten._reshape_alias.default",
        "profiler._record_function_enter_new.default",
        "profiler._record_function_exit._RecordFunction",
    }
)


@dataclass
class OpTally:
    """Calls and bytes per ATen op name."""

    calls: collections.Counter = field(default_factory=collections.Counter)
    bytes_in: collections.Counter = field(default_factory=collections.Counter)
    bytes_out: collections.Counter = field(default_factory=collections.Counter)

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())


def tensor_bytes(tree) -> int:
    return sum(t.numel() * t.element_size() for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor))


class RecordOps(TorchDispatchMode):
    """Tallies every non-view ATen op dispatched inside the ``with`` block."""

    def __init__(self):
        super().__init__()
        self.tally = OpTally()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = str(func)
        if name not in VIEW_OPS:
            self.tally.calls[name] += 1
            self.tally.bytes_in[name] += tensor_bytes((args, kwargs))
            self.tally.bytes_out[name] += tensor_bytes(out)
        return out


def megabytes(count: int) -> float:
    """Bytes → MB rounded to 0.1 (a difference of calls can be a tiny negative: no "-0.0")."""
    return round(count / 1e6, 1) + 0.0


def record(step) -> OpTally:
    with RecordOps() as recorder:
        step()
    return recorder.tally


def added_ops(full: OpTally, bare: OpTally) -> list[tuple[str, int, int, int]]:
    """(op, calls, bytes in, bytes out) that ``full`` has beyond ``bare``, most bytes first; ops with
    fewer calls in ``full`` are left out (the bare step's stand-in loss, e.g. its ``sum``)."""
    rows = []
    for name in full.calls:
        calls = full.calls[name] - bare.calls[name]
        if calls > 0:
            rows.append(
                (name, calls, full.bytes_in[name] - bare.bytes_in[name], full.bytes_out[name] - bare.bytes_out[name])
            )
    return sorted(rows, key=lambda row: (row[2] + row[3], row[1]), reverse=True)


def run_model(name: str, args) -> dict:
    torch.manual_seed(0)
    model = gpu_step.build_model(name, args)
    batch = gpu_step.synthetic_batch(args.batch, args.global_size, args.local_size, args.n_local, args.device)
    steps = gpu_step.Steps(model, batch, args)
    for step in (steps.full, steps.bare, steps.bare_heads):  # lazy state first (optimizer moments, step counters)
        step()
    tallies = {"full": record(steps.full), "bare": record(steps.bare), "bare+heads": record(steps.bare_heads)}
    rows = added_ops(tallies["full"], tallies["bare"])
    print(
        f"\n{gpu_step.LABELS[name]}: non-view ATen ops per step: "
        + ", ".join(f"{kind} {tally.total_calls}" for kind, tally in tallies.items())
    )
    print(f"what the full step runs beyond the bare step ({sum(r[1] for r in rows)} op calls), most bytes first:")
    print(f"  {'op':44s}{'calls':>7s}{'MB args':>10s}{'MB out':>10s}")
    for op, calls, b_in, b_out in rows[: args.top]:
        print(f"  {op:44s}{calls:7d}{megabytes(b_in):10.1f}{megabytes(b_out):10.1f}")
    if len(rows) > args.top:
        rest = rows[args.top :]
        print(
            f"  … {len(rest)} more ops, {sum(r[1] for r in rest)} calls, "
            f"{megabytes(sum(r[2] + r[3] for r in rest)):.1f} MB"
        )
    return {
        "ops": {kind: dict(tally.calls) for kind, tally in tallies.items()},
        "optimized_parameters": sum(p.numel() for p in steps.params),
        # what the EMA averages: every parameter of the student and its head (frozen ones too)
        "ema_parameters": sum(
            p.numel() for module in (model.student, model.student_head) for p in module.parameters()
        ),
        "added": [{"op": op, "calls": c, "bytes_in": i, "bytes_out": o} for op, c, i, o in rows],
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--top", type=int, default=30, help="rows of the table")
    own, rest = parser.parse_known_args(argv)
    if "-h" in rest or "--help" in rest:
        print(__doc__)
        print(
            "Options: --top N (table rows, default 30), and the model and shape options of gpu_step.py "
            "(--models, --batch, --precision, --global_size, --local_size, --n_local, --head_hidden, --head_out, "
            "--max_grad_norm, --device, --smoke; see python benchmarks/gpu_step.py --help)"
        )
        sys.exit(0)
    # gpu_step's defaults, but ViT-S/14 only and batch 2 (one step of each kind is enough to count ops) unless given
    defaults = (["--batch", "2"] if "--batch" not in rest else []) + (
        ["--models", "s14"] if "--models" not in rest else []
    )
    args = gpu_step.parse_args(defaults + rest)
    args.top = own.top
    precision = "bf16 autocast" if args.precision == "bf16" else "fp32 (no autocast)"
    print(
        f"ATen ops of one step on {gpu_step.device_name(args.device)} | torch {torch.__version__} | batch "
        f"{args.batch}, {args.global_size}/{args.local_size} px views, head {args.head_hidden}/{args.head_hidden}/{args.head_out}, "
        f"{precision}"
    )
    return {name: run_model(name, args) for name in args.models}


if __name__ == "__main__":
    main()
