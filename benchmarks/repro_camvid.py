#!/usr/bin/env python
"""Small-scale PaKA reproduction on CamVid: post-train, evaluate, compare (run by hand).

Post-trains the real pretrained ViT-S/14 in ``../shared/models/dinov2-small-imgfocus`` with PaKA on the
367 images of ``../shared/datasets/camvid/train`` (labels unused), once per run config in
``configs/repro/`` and seed, and evaluates the base backbone and every adapted one on CamVid val with
the three dense protocols (linear probe, overclustering, Hummingbird retrieval). Then writes a table
of means over seeds, the spread (max − min), the wall times, and for each of the paper's claims
whether our measured direction agrees (or lies within the seed spread of the two runs).

    python benchmarks/repro_camvid.py                                  # everything (≈ 2 h on 2 cores)
    python benchmarks/repro_camvid.py --runs paka cosine --seeds 0 1   # some runs
    python benchmarks/repro_camvid.py --runs paka neco neco_equal_time --seeds 0 1   # PaKA against NeCo
    python benchmarks/repro_camvid.py --report                         # only rebuild the summary

Layout under ``--output_dir`` (default ``outputs/repro``)::

    base/eval.json                      the pretrained backbone
    <run>/seed<s>/                      the adapted student: a normal model folder (AutoModel loads it)
    <run>/seed<s>/eval.json             its results (EvaluationReport JSON) and timings
    <run>/seed<s>/train_cost.json       its training's steps, s/step and peak RSS (also in eval.json)
    <run>/seed<s>/teacher/              the EMA teacher of the same run (+ eval.json for --teacher_runs)
    summary.md, summary.json            the tables and claim checks

A run whose ``eval.json`` exists is not redone (``--force`` redoes it), so an interrupted sweep resumes.
Each training runs in its own process (``scripts/train.py``'s config parsing, so the YAML means exactly
what it means there) and writes both networks.

Evaluation settings (fixed before any run, the same for every backbone): input 224 × 308 (CamVid's
aspect; the protocol's 448 would take ≈ 4× longer), 2 augmented passes of the train split, the linear
probe at the protocol's schedule (25 epochs) and at 100 epochs on the same features (the 25-epoch schedule
under-trains 367 images: docs/EVALUATION.md), overclustering K = 11 (Hungarian) and K = 100
(many-to-one) over 5 seeds, Hummingbird retrieval with the full memory bank.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from paka_hf.evaluation import CamVid, EvaluationSettings, HummingbirdConfig, LinearProbeConfig, OverclusterConfig  # noqa: E402
from paka_hf.modeling.backbones import PatchBackbone  # noqa: E402
from paka_hf.testing import load_file_module  # noqa: E402
from paka_hf.utils.host_memory import keep_freed_host_memory  # noqa: E402

EVAL_CAMVID = load_file_module(REPO / "benchmarks" / "eval_camvid.py", "paka_eval_camvid")  # its evaluate_camvid
LONG_LINEAR_EPOCHS = 100

CONFIG_DIR = REPO / "configs" / "repro"
TRAIN_COST_FILE = "train_cost.json"  # per trained run: steps, s/step and peak memory of the training process
SHARED = REPO.parent / "shared"
# Run order: the main recipe and its control first (they carry the targets), then the ablations.
DEFAULT_RUNS = ("paka", "cosine", "gram", "min_intersection_0", "min_intersection_0.5", "teacher_augment", "head")
# PaKA against NeCo (not in the default sweep): NeCo at the PaKA recipe's steps and at its wall-clock.
# Like paka and cosine they carry a comparison, so they get every --seeds.
NECO_RUNS = ("neco", "neco_equal_time")
#: The LoRA recipe against the full recipe, and the settings of the LoRA sweep (configs/repro/paka_lora_*.yaml, each
#: the LoRA recipe with what its comment says changed); every one gets --seeds.
LORA_RUNS = ("paka_lora", *sorted(p.stem for p in CONFIG_DIR.glob("paka_lora_*.yaml")))
SEEDED_RUNS = ("paka", "cosine", *NECO_RUNS, *LORA_RUNS)
METRICS = {  # key: (metric name in the EvaluationReport, column title)
    "linear": (f"mIoU (linear, {LONG_LINEAR_EPOCHS} epochs)", "linear (100 ep)"),
    "linear25": ("mIoU (linear)", "linear (25 ep)"),
    "overcluster11": ("mIoU (overclustering, K=11)", "overcl. K=11"),
    "overcluster100": ("mIoU (overclustering, K=100)", "overcl. K=100"),
    "hummingbird": ("mIoU (hummingbird)", "Hummingbird"),
}
# The reproduction's targets for the main recipe against the base backbone (mean over seeds), set before the sweep.
TARGETS = {"overcluster100": 6.0, "hummingbird": 3.0, "linear": 3.0}
# The paper's claims: (description, better run, worse run, metric, minimum margin).
CLAIMS = (
    (
        "kernel alignment beats patch-feature distillation (the method's premise; target ≥ 2)",
        "paka",
        "cosine",
        "overcluster100",
        2.0,
    ),
    ("kernel alignment (CKA) beats Gram matching", "paka", "gram", "overcluster100", 0.0),
    ("high intersection helps: min_intersection 0.9 > 0.5", "paka", "min_intersection_0.5", "overcluster100", 0.0),
    (
        "high intersection helps: min_intersection 0.9 > 0 (plain random crops)",
        "paka",
        "min_intersection_0",
        "overcluster100",
        0.0,
    ),
    ("a clean teacher helps: clean > augmented teacher", "paka", "teacher_augment", "overcluster100", 0.0),
    ("the paper's projection head: head on ≥ head off", "head", "paka", "overcluster100", 0.0),
    ("the student is exported: student ≥ teacher", "paka", "paka/teacher", "overcluster100", 0.0),
    ("PaKA beats NeCo at equal steps", "paka", "neco", "overcluster100", 0.0),
    ("PaKA beats NeCo at equal wall-clock", "paka", "neco_equal_time", "overcluster100", 0.0),
)


def evaluation_settings(input_size: tuple[int, int], max_images: int | None) -> EvaluationSettings:
    return EvaluationSettings(
        linear=LinearProbeConfig(epochs=25),
        overcluster=OverclusterConfig(num_clusters=[11, 100]),
        hummingbird=HummingbirdConfig(memory_size=None),
        input_size=input_size,
        augment_passes=2,
        batch_size=16,
        max_images=max_images,
        progress=False,
    )


PROTOCOLS = ("linear", "overcluster", "hummingbird")


def evaluate(
    model_dir: Path,
    name: str,
    data_dir: Path,
    settings: EvaluationSettings,
    output: Path,
    protocols: tuple[str, ...] = PROTOCOLS,
) -> dict:
    """``protocols`` (default: all three) on one backbone; writes ``output`` (results + timings), returns its dict."""
    torch.manual_seed(0)
    backbone = PatchBackbone.from_pretrained(model_dir)
    datasets = (CamVid(data_dir, "train"), CamVid(data_dir, "val"))
    timings: dict[str, float] = {}
    start = time.perf_counter()
    report = EVAL_CAMVID.evaluate_camvid(
        backbone, name, datasets, settings, list(protocols), LONG_LINEAR_EPOCHS, timings
    )
    if "linear_long" in timings:
        timings["linear_100_epochs"] = timings.pop("linear_long")
    results = {r.metric_name: r.value for r in report.results}
    spreads = {r.metric_name: r.std for r in report.results if r.std is not None}
    data = {
        "model": str(model_dir),
        "results": results,
        "std_over_kmeans_seeds": spreads,
        "timings_s": {**timings, "total": time.perf_counter() - start},
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(data, indent=2) + "\n")
    return data


def train_one(config: Path, seed: int, output_dir: Path, extra: list[str]) -> None:
    """In a fresh process: PaKA training exactly as ``scripts/train.py`` runs it; writes student and teacher."""
    from paka_hf import PaKATrainer
    from paka_hf.commands import train as script

    args = script.parse_config(["--config", str(config), "--seed", str(seed), "--output_dir", str(output_dir), *extra])
    trainer = PaKATrainer(args=args)
    trainer.train()
    trainer.export_backbone(output_dir, network="student")
    trainer.export_backbone(output_dir / "teacher", network="teacher")
    history = [e for e in trainer.state.log_history if "loss" in e and "train_runtime" not in e]
    (output_dir / "train_log.json").write_text(json.dumps(history, indent=2) + "\n")
    # The cost side of an equal-compute comparison, measured in the training process itself: seconds per
    # optimizer step over the whole run (data loading included) and the peak resident memory (ru_maxrss is
    # KiB on Linux; data-loader workers are counted separately as children).
    runtime = next(e["train_runtime"] for e in trainer.state.log_history if "train_runtime" in e)
    cost = {
        "steps": trainer.state.global_step,
        "train_runtime_s": runtime,
        "step_s": runtime / max(trainer.state.global_step, 1),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10,
        "peak_rss_workers_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**10,
    }
    (output_dir / TRAIN_COST_FILE).write_text(json.dumps(cost, indent=2) + "\n")


def run_and_evaluate(run: str, seed: int, args, settings: EvaluationSettings) -> None:
    out = args.output_dir / run / f"seed{seed}"
    if (out / "eval.json").exists() and not args.force:
        print(f"[{run} seed {seed}] done already ({out / 'eval.json'})", flush=True)
    else:
        config = CONFIG_DIR / f"{run}.yaml"
        extra = [
            "--model_name_or_path",
            str(args.model_dir),
            "--dataset_name",
            str(args.data_dir / "train" / "images"),
            *args.train_args,
        ]
        print(f"[{run} seed {seed}] training ({config.relative_to(REPO)}) …", flush=True)
        start = time.perf_counter()
        command = [sys.executable, __file__, "--_train", str(config), str(seed), str(out), *extra]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        log_path = args.output_dir / run / f"seed{seed}.train.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "w") as log:
            result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        if result.returncode:
            raise SystemExit(f"training {run} seed {seed} failed (exit {result.returncode}); see {log_path}")
        train_s = time.perf_counter() - start
        print(f"[{run} seed {seed}] trained in {train_s / 60:.1f} min; evaluating …", flush=True)
        data = evaluate(out, f"{run} seed {seed}", args.data_dir, settings, out / "eval.json", args.protocols)
        data["train_wall_s"] = train_s
        data["train_cost"] = json.loads((out / TRAIN_COST_FILE).read_text())
        (out / "eval.json").write_text(json.dumps(data, indent=2) + "\n")
        print(f"[{run} seed {seed}] " + _short(data), flush=True)
    if run in args.teacher_runs and (not (out / "teacher" / "eval.json").exists() or args.force):
        data = evaluate(
            out / "teacher",
            f"{run} seed {seed} (teacher)",
            args.data_dir,
            settings,
            out / "teacher" / "eval.json",
            args.protocols,
        )
        print(f"[{run} seed {seed} teacher] " + _short(data), flush=True)


def _short(data: dict) -> str:
    r = data["results"]
    return ", ".join(f"{title} {r[name]:.1f}" for name, title in METRICS.values() if name in r)


# ---- summary ---------------------------------------------------------------------------------


def collect(output_dir: Path) -> dict[str, list[dict]]:
    """``{"base": [eval], "paka": [seed0 eval, seed1 eval], "paka/teacher": [...], ...}``."""
    found: dict[str, list[dict]] = {}
    if (output_dir / "base" / "eval.json").exists():
        found["base"] = [json.loads((output_dir / "base" / "eval.json").read_text())]
    for path in sorted(output_dir.glob("*/seed*/eval.json")):
        run = path.parent.parent.name
        found.setdefault(run, []).append({**json.loads(path.read_text()), "seed": int(path.parent.name[4:])})
    for path in sorted(output_dir.glob("*/seed*/teacher/eval.json")):
        run = path.parent.parent.parent.name + "/teacher"
        found.setdefault(run, []).append({**json.loads(path.read_text()), "seed": int(path.parent.parent.name[4:])})
    return found


def aggregate(evals: list[dict]) -> dict[str, dict[str, float]]:
    """Per metric key: mean, spread (max − min over seeds, 0 for one seed), n."""
    out = {}
    for key, (name, _) in METRICS.items():
        values = [e["results"][name] for e in evals if e["results"].get(name) is not None]
        if values:
            out[key] = {"mean": statistics.fmean(values), "spread": max(values) - min(values), "n": len(values)}
    return out


def summarize(found: dict[str, list[dict]]) -> tuple[str, dict]:
    """The Markdown tables (results, targets, claims) and the same as a dict."""
    stats = {run: aggregate(evals) for run, evals in found.items()}
    header = (
        "| run | seeds | "
        + " | ".join(title for _, title in METRICS.values())
        + " | train min | s/step | peak RSS MiB | eval min |"
    )
    lines = [header, "|" + " --- |" * (len(METRICS) + 6)]
    for run, evals in found.items():
        cells = []
        for key in METRICS:
            s = stats[run].get(key)
            cells.append("" if s is None else f"{s['mean']:.1f}" + (f" ± {s['spread'] / 2:.1f}" if s["n"] > 1 else ""))
        train = [e["train_wall_s"] / 60 for e in evals if "train_wall_s" in e]
        evaluation = [e["timings_s"]["total"] / 60 for e in evals]
        seeds = ",".join(str(e["seed"]) for e in evals) if run != "base" else "–"
        train_text = f"{statistics.fmean(train):.1f}" if train else "–"
        # Runs trained before train_cost.json existed show "–" rather than a figure from elsewhere.
        costs = [e["train_cost"] for e in evals if "train_cost" in e]
        step_text = f"{statistics.fmean(c['step_s'] for c in costs):.2f}" if costs else "–"
        rss_text = f"{max(c['peak_rss_mib'] for c in costs):.0f}" if costs else "–"
        lines.append(
            f"| {run} | {seeds} | "
            + " | ".join(cells)
            + f" | {train_text} | {step_text} | {rss_text} | {statistics.fmean(evaluation):.1f} |"
        )
    summary = {"runs": stats, "targets": [], "claims": []}
    lines += ["", "| target (paka − base, mean over seeds) | needed | measured | met |", "| --- | ---: | ---: | --- |"]
    for key, needed in TARGETS.items():
        if "paka" in stats and "base" in stats and key in stats["paka"]:
            delta = stats["paka"][key]["mean"] - stats["base"][key]["mean"]
            summary["targets"].append({"metric": key, "needed": needed, "delta": delta, "met": delta >= needed})
            lines.append(
                f"| {METRICS[key][1]} | ≥ +{needed:.0f} | {delta:+.1f} | {'yes' if delta >= needed else 'no'} |"
            )
    lines += [
        "",
        "| claim (paper) | comparison | Δ overcl. K=100 | Δ linear | Δ Hummingbird | verdict (K=100) |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for text, better, worse, key, margin in CLAIMS:
        if better not in stats or worse not in stats:
            continue
        deltas = {
            k: stats[better][k]["mean"] - stats[worse][k]["mean"]
            for k in ("overcluster100", "linear", "hummingbird")
            if k in stats[better] and k in stats[worse]
        }
        agrees = deltas[key] > margin
        # The seed spread (max − min) of either run on the claim's metric: a difference within it is not a finding.
        noise = max(stats[better][key]["spread"], stats[worse][key]["spread"])
        if noise > 0 and abs(deltas[key]) <= noise:
            verdict = f"inside the seed spread ({noise:.1f})"
        else:
            verdict = "yes" if agrees else ("no" if deltas[key] < 0 else "no (margin not reached)")
        summary["claims"].append(
            {
                "claim": text,
                "better": better,
                "worse": worse,
                "deltas": deltas,
                "agrees": agrees,
                "seed_spread": noise,
                "verdict": verdict,
            }
        )
        lines.append(
            f"| {text} | {better} − {worse} | {deltas.get('overcluster100', float('nan')):+.1f} | "
            f"{deltas.get('linear', float('nan')):+.1f} | {deltas.get('hummingbird', float('nan')):+.1f} | {verdict} |"
        )
    return "\n".join(lines) + "\n", summary


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--_train":  # the child process of one training run
        config, seed, output_dir, *extra = argv[1:]
        train_one(Path(config), int(seed), Path(output_dir), extra)
        return
    keep_freed_host_memory()  # this process evaluates: as paka-evaluate does (paka_hf/utils/host_memory.py)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--runs",
        nargs="*",
        default=list(DEFAULT_RUNS),
        help=f"configs/repro/<run>.yaml (default: {' '.join(DEFAULT_RUNS)})",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument(
        "--seeds_for_ablations",
        type=int,
        nargs="+",
        default=[0],
        help=f"seeds for runs other than {', '.join(SEEDED_RUNS)} (the target, its control, the NeCo "
        "comparison and the LoRA recipe get --seeds)",
    )
    p.add_argument("--teacher_runs", nargs="*", default=["paka"], help="runs whose EMA teacher is evaluated too")
    p.add_argument("--model_dir", type=Path, default=SHARED / "models" / "dinov2-small-imgfocus")
    p.add_argument("--data_dir", type=Path, default=SHARED / "datasets" / "camvid")
    p.add_argument("--output_dir", type=Path, default=REPO / "outputs" / "repro")
    p.add_argument("--input_size", default="224,308", help="evaluation input H,W")
    p.add_argument(
        "--max_images", type=int, default=None, help="evaluate on at most this many images per split (smoke runs)"
    )
    p.add_argument(
        "--train_args",
        nargs=argparse.REMAINDER,
        default=[],
        help="extra PaKAConfig flags for every training, e.g. --train_args --max_steps 10 (must come last)",
    )
    p.add_argument("--force", action="store_true", help="redo runs whose results exist")
    p.add_argument("--report", action="store_true", help="only rebuild summary.md / summary.json from what exists")
    p.add_argument(
        "--protocols",
        nargs="+",
        choices=PROTOCOLS,
        default=list(PROTOCOLS),
        help="evaluation protocols (Hummingbird at 448 costs ~10 more minutes per backbone on a 2-core CPU)",
    )
    p.add_argument(
        "--skip_base",
        action="store_true",
        help="do not evaluate the pretrained backbone (when its figures at these settings exist elsewhere)",
    )
    args = p.parse_args(argv)
    for run in args.runs:
        if not (CONFIG_DIR / f"{run}.yaml").is_file():
            known = sorted(f.stem for f in CONFIG_DIR.glob("*.yaml"))
            p.error(f"no config configs/repro/{run}.yaml; runs available: {', '.join(known)}")
    for path, what in ((args.model_dir, "--model_dir"), (args.data_dir / "val" / "images", "--data_dir")):
        if not args.report and not path.exists():
            p.error(f"{what}: {path} not found (the CamVid set and ViT-S/14 live in ../shared beside the repo)")
    h, _, w = args.input_size.partition(",")
    settings = evaluation_settings((int(h), int(w or h)), args.max_images)
    args.output_dir.mkdir(parents=True, exist_ok=True)

    if not args.report:
        if not args.skip_base and (not (args.output_dir / "base" / "eval.json").exists() or args.force):
            print("[base] evaluating the pretrained backbone …", flush=True)
            data = evaluate(
                args.model_dir, "base", args.data_dir, settings, args.output_dir / "base" / "eval.json", args.protocols
            )
            print("[base] " + _short(data), flush=True)
        main_runs = [r for r in args.runs if r in SEEDED_RUNS]
        # The target and its control over all seeds first, then the ablations.
        plan = [(r, s) for s in args.seeds for r in main_runs]
        plan += [(r, s) for s in args.seeds_for_ablations for r in args.runs if r not in main_runs]
        for run, seed in plan:
            run_and_evaluate(run, seed, args, settings)

    table, summary = summarize(collect(args.output_dir))
    (args.output_dir / "summary.md").write_text(table)
    (args.output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table)


if __name__ == "__main__":
    main()
