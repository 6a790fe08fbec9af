#!/usr/bin/env python
"""Step time and peak memory of reproduction recipes (``configs/repro/<run>.yaml``), alternated, on this machine.

Each round trains every named recipe for ``--steps`` optimizer steps, one after the other, each in a fresh
process (``scripts/train.py``'s config parsing, the recipe's own batch, views, loss and data workers) and
reports its median step time after ``--warmup`` steps and the process's peak resident memory (its own plus
its data workers'). Alternating the recipes round by round keeps the load that other users of a shared
machine put on it roughly the same for each; the ratio to the first run is reported per round, then the
median and range of the ratios over the rounds. The main process's CPU time per step (all its threads,
not the data workers') is reported beside the wall time: on a machine loaded by others it is the steadier
of the two.

    python benchmarks/recipe_step.py --runs paka neco --rounds 3 --steps 10 --shared ../shared
    python benchmarks/recipe_step.py --runs paka paka_lora --rounds 3 --steps 10 --shared ../shared   # LoRA against full

It also reports, per recipe, the trainable parameters (against the backbone's), the tensors the training module
holds (student, teacher and heads, each storage once) and the optimizer's state. This is how ``configs/repro/neco_equal_time.yaml`` got its step count (see that file).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs" / "repro"


def measure_one(run: str, steps: int, warmup: int, shared: Path | None) -> dict:
    """In this process: ``steps`` steps of the recipe; median seconds per step after ``warmup``, peak RSS."""
    sys.path.insert(0, str(REPO))
    import torch
    from transformers import TrainerCallback

    from paka_hf import PaKATrainer
    from paka_hf.commands import train as script

    class StepEnds(TrainerCallback):
        def __init__(self):
            self.ends: list[float] = []
            self.cpu_ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())
            self.cpu_ends.append(time.process_time())

    extra = [
        "--max_steps",
        str(steps),
        "--save_strategy",
        "no",
        "--logging_steps",
        str(steps),
        "--disable_tqdm",
        "true",
    ]
    if shared is not None:  # the recipes name ../shared relative to the repository's parent
        extra += [
            "--model_name_or_path",
            str(shared / "models" / "dinov2-small-imgfocus"),
            "--dataset_name",
            str(shared / "datasets" / "camvid" / "train" / "images"),
        ]
    with tempfile.TemporaryDirectory(prefix=f"recipe_step_{run}_") as out:
        config = script.parse_config(["--config", str(CONFIG_DIR / f"{run}.yaml"), "--output_dir", out, *extra])
        timer = StepEnds()
        trainer = PaKATrainer(args=config, callbacks=[timer])
        trainer.train()
        model = trainer.model
        backbone_params = sum(p.numel() for p in model.student.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        # every tensor the training module holds (student, teacher, heads, buffers), each storage once
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in model.state_dict().values()}
        optimizer_bytes = sum(
            v.numel() * v.element_size()
            for state in trainer.optimizer.state.values()
            for v in state.values()
            if torch.is_tensor(v)
        )
    gaps = [b - a for a, b in zip(timer.ends[warmup:], timer.ends[warmup + 1 :])]
    cpu = [b - a for a, b in zip(timer.cpu_ends[warmup:], timer.cpu_ends[warmup + 1 :])]
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux -> MiB
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**10
    return {
        "run": run,
        "loss": config.loss,
        "use_head": config.use_head,
        "batch": config.per_device_train_batch_size,
        "step_s": statistics.median(gaps),
        "step_s_all": gaps,
        "step_cpu_s": statistics.median(cpu),
        "step_cpu_s_all": cpu,
        "peak_rss_mib": own,
        "peak_rss_worker_mib": workers,
        "use_lora": config.use_lora,
        "backbone_params": backbone_params,
        "trainable_params": trainable,
        "model_tensors_mib": sum(storages.values()) / 2**20,
        "optimizer_state_mib": optimizer_bytes / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--runs", nargs="+", default=["paka", "neco"], help="configs/repro/<run>.yaml; ratios are to the first"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the median (the first ones are slow)")
    parser.add_argument(
        "--shared",
        type=Path,
        default=None,
        help="folder holding models/ and datasets/camvid/ (default: the recipes' ../shared)",
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: measure this run in this process
    args = parser.parse_args()
    if args.warmup + 2 > args.steps:
        parser.error(f"--steps must exceed --warmup by at least 2 to time a step, got {args.steps} and {args.warmup}")
    if args.one is not None:
        print(json.dumps(measure_one(args.one, args.steps, args.warmup, args.shared)))
        return

    rounds = []
    for index in range(args.rounds):
        results = {}
        for run in args.runs:
            command = [
                sys.executable,
                __file__,
                "--one",
                run,
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
            ]
            if args.shared is not None:
                command += ["--shared", str(args.shared)]
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            results[run] = json.loads(done.stdout.strip().splitlines()[-1])
            r = results[run]
            print(
                f"round {index}  {run:>16}: {r['step_s']:.3f} s/step ({r['step_cpu_s']:.3f} CPU-s)  peak RSS {r['peak_rss_mib']:.0f} MiB "
                f"(workers {r['peak_rss_worker_mib']:.0f} MiB)",
                flush=True,
            )
        rounds.append(results)
    first = args.runs[0]
    summary = {}
    for run in args.runs:
        ratios = [r[run]["step_s"] / r[first]["step_s"] for r in rounds]
        cpu_ratios = [r[run]["step_cpu_s"] / r[first]["step_cpu_s"] for r in rounds]
        summary[run] = {
            "step_s_median": statistics.median(r[run]["step_s"] for r in rounds),
            "ratio_to_first_median": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "cpu_ratio_to_first_median": statistics.median(cpu_ratios),
            "cpu_ratio_min": min(cpu_ratios),
            "cpu_ratio_max": max(cpu_ratios),
            "peak_rss_mib_max": max(r[run]["peak_rss_mib"] for r in rounds),
        }
        last = rounds[-1][run]
        s = summary[run]
        print(
            f"{run:>16}: {last['trainable_params']:,} trainable parameters of {last['backbone_params']:,} in the backbone "
            f"({100 * last['trainable_params'] / last['backbone_params']:.2f} %); tensors held {last['model_tensors_mib']:.0f} MiB, "
            f"optimizer state {last['optimizer_state_mib']:.0f} MiB"
        )
        print(
            f"{run:>16}: {s['step_s_median']:.3f} s/step, {s['ratio_to_first_median']:.2f}x {first} "
            f"(rounds {s['ratio_min']:.2f}-{s['ratio_max']:.2f}); main-process CPU time {s['cpu_ratio_to_first_median']:.2f}x "
            f"(rounds {s['cpu_ratio_min']:.2f}-{s['cpu_ratio_max']:.2f}); peak RSS {s['peak_rss_mib_max']:.0f} MiB"
        )
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {"args": {k: str(v) for k, v in vars(args).items()}, "rounds": rounds, "summary": summary}, indent=2
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
