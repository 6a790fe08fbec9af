"""The accelerator step paths, checked on CPU: bf16 autocast, torch.compile and gradient checkpointing
give the loss (and gradients) of the eager fp32 step; ``benchmarks/gpu_step.py --smoke`` runs; the
model modules import without the trainer stack. One test needs CUDA: no host–device sync in the step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from paka_hf.modeling.backbones import PatchBackbone, ProjectionHead
from paka_hf.modeling.model import PaKAModel
from paka_hf.testing import load_file_module, tiny_dinov2_config
from paka_hf.views.glim import sample_boxes

REPO_ROOT = Path(__file__).resolve().parents[1]

# bf16 keeps 8 significant bits (relative rounding 2^-9 ≈ 0.2 % per op). Through a 2-layer ViT, the head
# and RoIAlign, the fp32 loss moves by at most ~1e-3 on these models (measured over 6 seeds); the
# tolerance leaves 5x margin. Gradients keep their direction: cosine ≥ 0.995 (measured ≥ 0.9994).
BF16_LOSS_ATOL = 5e-3
BF16_GRAD_COSINE = 0.995
# aot_eager runs the same ATen ops as eager, regrouped by AOTAutograd: round-off level differences only.
COMPILE_LOSS_ATOL = 1e-5
COMPILE_GRAD_RTOL, COMPILE_GRAD_ATOL = 1e-4, 1e-6


def tiny_model(seed: int = 0) -> PaKAModel:
    """A PaKA model at DINOv2R structure (4 registers, head), small enough for milliseconds on CPU."""
    torch.manual_seed(seed)
    backbone = PatchBackbone.from_config(tiny_dinov2_config(registers=4, hidden_size=64))
    return PaKAModel(backbone, ProjectionHead(64, 128, 32)).train()


def synthetic_batch(n_images: int = 2, global_size: int = 56, local_size: int = 28, seed: int = 0) -> dict:
    """Normalized random views and GLIM boxes sampled on a 640 × 480 image, as the benchmark builds them."""
    generator = torch.Generator().manual_seed(seed)
    boxes = [sample_boxes(480, 640, 4, generator=generator) for _ in range(n_images)]
    return {
        "global_views": torch.randn(n_images, 2, 3, global_size, global_size, generator=generator),
        "local_views": torch.randn(n_images, 4, 3, local_size, local_size, generator=generator),
        "global_boxes": torch.stack([b.global_boxes for b in boxes]),
        "local_boxes": torch.stack([b.local_boxes for b in boxes]),
        "pair_index": torch.stack([b.pair_index for b in boxes]),
        "global_flips": torch.tensor([[False, True]] * n_images),
        "local_flips": torch.tensor([[True, False, False, True]] * n_images),
    }


def loss_and_grads(
    model: PaKAModel, batch: dict, autocast: bool = False
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(**batch).loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def gpu_step():
    """benchmarks/gpu_step.py as a module (it is a script, not part of the package)."""
    return load_file_module(REPO_ROOT / "benchmarks" / "gpu_step.py", "gpu_step")


def flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([grads[name].flatten().float() for name in sorted(grads)])


# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_gpu_step_smoke_runs_on_cpu_and_prints_the_table(tmp_path):
    out = tmp_path / "figures.json"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "gpu_step.py"),
            "--smoke",
            "--device",
            "cpu",
            "--json",
            str(out),
            "--view_rendering",
            "cpu",
            "device",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("model"))
    for column in ("full ms", "bare ms", "ratio", "img/s", "peak GiB", "MFU", "paper h"):
        assert column in header
    assert "ratio b+h" in header
    assert any(line.startswith("tiny") and len(line.split()) == 13 for line in lines), result.stdout
    report = json.loads(out.read_text())
    (row,) = report["results"]
    assert row["loss_finite"] and 0.0 <= row["last_loss"] <= 2.0
    assert row["ratio_full_over_bare"] > 0 and row["images_per_s"] > 0
    assert row["ratio_full_over_bare_heads"] == pytest.approx(row["full_ms"] / row["bare_heads_ms"])
    parts = row["breakdown"]  # the full step's extra parts, each timed alone
    assert parts["objective_ms"] > 0 and parts["tail_ms"] > 0
    assert parts["parts_sum_ms"] == pytest.approx(parts["objective_ms"] + parts["tail_ms"])
    assert "what the full step adds" in result.stdout
    assert row["tflop_per_step"] > row["tflop_per_bare_step"] > 0  # the heads add FLOPs
    assert report["paper_images"] == 2_957_175
    # the full step from uint8 images (views rendered by the model) costs more than from rendered views
    assert "full+render ms" in result.stdout
    assert row["render_ms"] > 0 and row["full_render_ms"] > 0
    assert row["ratio_full_render_over_bare"] == pytest.approx(row["full_render_ms"] / row["bare_ms"])


@pytest.mark.slow
def test_gpu_step_smoke_times_neco_beside_paka_in_one_run(tmp_path):
    out = tmp_path / "figures.json"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "gpu_step.py"),
            "--smoke",
            "--device",
            "cpu",
            "--json",
            str(out),
            "--loss",
            "cka",
            "neco",
            "--no_sync_check",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    paka, neco = json.loads(out.read_text())["results"]
    assert (paka["model"], paka["loss"], neco["model"], neco["loss"]) == ("tiny", "cka", "tiny NeCo", "neco")
    assert any(line.startswith("tiny NeCo") and len(line.split()) == 14 for line in result.stdout.splitlines())
    assert neco["loss_finite"] and neco["last_loss"] > 0  # a cross-entropy of soft permutations: not bounded by 2
    assert neco["ratio_full_over_bare"] > 0 and neco["full_ms"] > 0
    assert neco["breakdown"]["objective_ms"] > 0 and neco["breakdown"]["heads_ms"] is None  # its queue needs the heads
    assert "tiny NeCo: what the full step adds" in result.stdout


def test_flops_formula_at_vit_s14_paper_crops():
    """F_view(518) of ViT-S/14 with 4 registers, by hand: 2·P_tok·N + 2·P_emb·n + 4·L·N²·D."""
    script = gpu_step()
    backbone = PatchBackbone.from_config(script.backbone_config("s14", 0.0))
    d, layers, n = 384, 12, 37 * 37
    tokens = n + 1 + 4
    expected = 2 * (12 * layers * d * d) * tokens + 2 * (3 * 14 * 14 * d) * n + 4 * layers * tokens**2 * d
    assert script.view_flops(backbone, 518) == pytest.approx(expected, rel=1e-12)


def test_roi_align_stand_in_matches_torchvision():
    """The plain-torch RoIAlign the device script falls back to when torchvision does not import."""
    from torchvision.ops import roi_align

    stand_ins = load_file_module(REPO_ROOT / "benchmarks" / "_stand_ins.py", "_stand_ins")
    stand_in = stand_ins.roi_align_stand_in
    generator = torch.Generator().manual_seed(0)
    for height, width in ((37, 37), (7, 7), (4, 6)):
        grids = torch.randn(6, 8, height, width, generator=generator)
        size = torch.tensor([width, height], dtype=torch.float32)
        corner = torch.rand(40, 2, generator=generator) * size * 1.1 - 0.1 * size  # some boxes cross the edges
        extent = torch.rand(40, 2, generator=generator) * size * 0.8 + 0.01
        boxes = torch.cat([torch.randint(0, 6, (40, 1), generator=generator).float(), corner, corner + extent], dim=1)
        for aligned in (True, False):
            expected = roi_align(grids, boxes, output_size=7, spatial_scale=1.0, sampling_ratio=2, aligned=aligned)
            torch.testing.assert_close(stand_in(grids, boxes, 7, 1.0, 2, aligned), expected, rtol=0, atol=1e-4)


def test_importing_the_script_leaves_sys_modules_alone():
    """The stand-ins go in only when gpu_step.py runs as a script (explicitly, benchmarks/_stand_ins.py)."""
    before = dict(sys.modules)
    script = gpu_step()
    replaced = {name for name, module in before.items() if sys.modules.get(name) is not module}
    assert not replaced, replaced
    assert script.STAND_INS == []


def test_cka_lora_times_the_lora_recipe_as_training_reads_it(tmp_path):
    """cka_lora's adapter is configs/repro/paka_lora.yaml's, read as the trainer reads that file (same settings)."""
    pytest.importorskip("peft")
    from paka_hf.commands import train

    script = gpu_step()
    config = train.parse_config(["--config", str(script.LORA_RECIPE), "--output_dir", str(tmp_path)])
    assert script.lora_recipe_settings() == config.lora_settings()
    other = tmp_path / "other.yaml"
    other.write_text("use_lora: true\nlora_rank: 8\nlora_unfrozen_blocks: 2\nlora_train_norms: true\n")
    settings = script.lora_recipe_settings(other)
    assert (settings.rank, settings.alpha, settings.unfrozen_blocks, settings.train_norms) == (8, 16.0, 2, True)
    assert script.lora_label(settings) == "LoRA r8 +2 blocks +norms"
    assert script.lora_label(script.lora_recipe_settings()) == "LoRA r16 attention"  # the default recipe


def test_gpu_step_times_the_trainers_optimizer_groups():
    """The benchmark's AdamW has PaKATrainer's groups (paka_hf.training.optimization.optimizer_groups), not a copy."""
    from paka_hf.training.optimization import optimizer_groups

    model = tiny_model()
    optimizer = gpu_step().make_optimizer(model, torch.device("cpu"))
    expected = optimizer_groups(model, 1e-5, 1e-4, 0.04)
    assert [g["name"] for g in optimizer.param_groups] == [g["name"] for g in expected]
    for group, reference in zip(optimizer.param_groups, expected):
        assert [id(p) for p in group["params"]] == [id(p) for p in reference["params"]]
        assert (group["lr"], group["weight_decay"]) == (reference["lr"], reference["weight_decay"])


def test_bf16_autocast_loss_matches_fp32_eager():
    model, batch = tiny_model(), synthetic_batch()
    loss32, grads32 = loss_and_grads(model, batch)
    loss16, grads16 = loss_and_grads(model, batch, autocast=True)
    assert loss16.dtype == torch.float32  # the loss is computed in fp32 under autocast
    assert abs(loss16.item() - loss32.item()) <= BF16_LOSS_ATOL, (loss16.item(), loss32.item())
    assert grads16.keys() == grads32.keys()
    cosine = torch.nn.functional.cosine_similarity(flat(grads16), flat(grads32), dim=0).item()
    assert cosine >= BF16_GRAD_COSINE, cosine


@pytest.mark.slow  # torch.compile: Inductor builds its kernels in compiler subprocesses (10-25 s of CPU)
def test_compiled_backbones_give_the_eager_loss_and_gradients():
    if not torch._dynamo.is_dynamo_supported():
        pytest.skip(f"torch.compile is not supported on this Python/platform (Python {sys.version.split()[0]})")
    model, batch = tiny_model(), synthetic_batch()
    loss_eager, grads_eager = loss_and_grads(model, batch)
    torch._dynamo.reset()
    try:
        # As benchmarks/gpu_step.py --compile, on CPU with the aot_eager backend (dynamo + AOTAutograd, no
        # codegen: inductor's C++ compile takes minutes on 2 cores). dynamic=False as there: the teacher and
        # the student run one code path at two input sizes.
        model.student.compile(backend="aot_eager", dynamic=False)
        model.teacher.compile(backend="aot_eager", dynamic=False)
        loss_compiled, grads_compiled = loss_and_grads(model, batch)
        loss_again, _ = loss_and_grads(model, batch)  # the cached graphs, no recompilation
    finally:
        torch._dynamo.reset()
    assert abs(loss_compiled.item() - loss_eager.item()) <= COMPILE_LOSS_ATOL
    assert abs(loss_again.item() - loss_eager.item()) <= COMPILE_LOSS_ATOL
    assert grads_compiled.keys() == grads_eager.keys()
    for name in grads_eager:
        torch.testing.assert_close(
            grads_compiled[name],
            grads_eager[name],
            rtol=COMPILE_GRAD_RTOL,
            atol=COMPILE_GRAD_ATOL,
            msg=lambda m, name=name: f"{name}: {m}",
        )
    # the state-dict names are untouched (Module.compile, not a wrapper): EMA and checkpoints still match
    assert set(dict(model.student.named_parameters())) == set(dict(model.teacher.named_parameters()))
    model.update_teacher(0.5)


@pytest.mark.slow  # torch.compile: Inductor builds its kernels in compiler subprocesses (10-25 s of CPU)
def test_compiled_whole_model_gives_the_eager_loss_and_gradients():
    """``torch.compile`` of the whole PaKAModel, what ``torch_compile: true`` does through Trainer and
    ``gpu_step.py --compile`` times: one graph (no break) from views and from images rendered on the
    device, and the eager loss and gradients."""
    if not torch._dynamo.is_dynamo_supported():
        pytest.skip(f"torch.compile is not supported on this Python/platform (Python {sys.version.split()[0]})")
    model, batch = tiny_model(), synthetic_batch()
    render_batch = gpu_step().synthetic_render_batch(2, 56, 28, 4, torch.device("cpu"))
    loss_eager, grads_eager = loss_and_grads(model, batch)
    torch._dynamo.reset()
    try:
        for inputs in (batch, render_batch):  # a graph break would split the step and cost a launch boundary
            explained = torch._dynamo.explain(model)(**inputs)
            assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
        torch._dynamo.reset()
        model.compile(backend="aot_eager", dynamic=False)
        loss_compiled, grads_compiled = loss_and_grads(model, batch)
    finally:
        torch._dynamo.reset()
    assert abs(loss_compiled.item() - loss_eager.item()) <= COMPILE_LOSS_ATOL
    assert grads_compiled.keys() == grads_eager.keys()
    for name in grads_eager:
        torch.testing.assert_close(
            grads_compiled[name],
            grads_eager[name],
            rtol=COMPILE_GRAD_RTOL,
            atol=COMPILE_GRAD_ATOL,
            msg=lambda m, name=name: f"{name}: {m}",
        )


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    model, batch = tiny_model(), synthetic_batch()
    loss_plain, grads_plain = loss_and_grads(model, batch)
    gpu_step().enable_checkpointing(model)  # what --grad_checkpointing does: PaKAModel.activation_checkpointing_enable
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.student.modules())
    assert not any(getattr(m, "gradient_checkpointing", False) for m in model.teacher.modules())
    loss_ckpt, grads_ckpt = loss_and_grads(model, batch)
    assert torch.allclose(loss_ckpt, loss_plain, rtol=0, atol=1e-7)
    assert grads_ckpt.keys() == grads_plain.keys()
    for name in grads_plain:
        torch.testing.assert_close(grads_ckpt[name], grads_plain[name], rtol=1e-5, atol=1e-8)


@pytest.mark.slow
def test_model_modules_import_without_the_trainer_stack():
    """What the device script imports must not pull in Trainer, the data stream or datasets."""
    code = (
        "import sys\n"
        "import paka_hf.modeling.model, paka_hf.modeling.backbones, paka_hf.views.glim, paka_hf.modeling.teacher, paka_hf.losses, paka_hf.views.align\n"
        "heavy = [m for m in ('paka_hf.training.trainer', 'paka_hf.training.data', 'paka_hf.hub', 'datasets', 'evaluate', 'sklearn') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from paka_hf import PaKAConfig, PaKATrainer\n"
        "import paka_hf\n"
        "assert paka_hf.PaKATrainer is PaKATrainer and 'PaKAConfig' in dir(paka_hf)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr


def test_trainer_loop_does_not_read_the_loss_every_step():
    """Trainer's logging_nan_inf_filter evaluates isnan(loss) on the host after each micro-batch: off by default."""
    from paka_hf.training.config import PaKAConfig

    assert {f.name: f.default for f in fields(PaKAConfig)}["logging_nan_inf_filter"] is False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: torch.cuda.set_sync_debug_mode")
def test_full_step_has_no_host_device_sync_on_cuda():
    device = torch.device("cuda")
    model = tiny_model().to(device)
    batch = {k: v.to(device) for k, v in synthetic_batch().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], fused=True)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.student.parameters(), 1.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.update_teacher(0.9995)

    step()  # allocations and lazy initialisation first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()


def test_step_ops_lists_what_the_full_step_adds_over_the_bare_step(capsys):
    """benchmarks/step_ops.py: the ops the full step adds are the alignment, the heads, the loss and the optimizer
    tail, with the bytes they touch; the bare step runs none of them; view ops are not counted."""
    step_ops = load_file_module(REPO_ROOT / "benchmarks" / "step_ops.py", "step_ops")
    (report,) = step_ops.main(["--smoke", "--device", "cpu"]).values()
    added = {row["op"]: row for row in report["added"]}
    bare = report["ops"]["bare"]
    # RoIAlign on the teacher's and the student's grids; backward for the student's only
    assert added["torchvision.roi_align.default"]["calls"] == 2
    assert added["torchvision._roi_align_backward.default"]["calls"] == 1
    assert "torchvision.roi_align.default" not in bare
    # the tail: one fused AdamW per parameter group (backbone and head, with and without decay), the EMA as
    # a single foreach op over the (teacher, student) pairs, clipping as one foreach norm
    assert added["aten._fused_adamw_.default"]["calls"] == 4
    assert added["aten._foreach_lerp_.Scalar"]["calls"] == 1
    assert added["aten._foreach_norm.Scalar"]["calls"] == 1
    lerp_bytes = added["aten._foreach_lerp_.Scalar"]["bytes_in"]
    assert lerp_bytes == 2 * 4 * report["ema_parameters"]  # teacher and student, fp32
    adamw_bytes = added["aten._fused_adamw_.default"]["bytes_in"]
    assert adamw_bytes == pytest.approx(4 * 4 * report["optimized_parameters"], rel=1e-2)  # p, g, m, v
    assert not any(op in step_ops.VIEW_OPS for kind in report["ops"].values() for op in kind)
    # the heads' matmuls: the full and bare+heads steps run more of them than the bare step
    assert report["ops"]["bare+heads"]["aten.addmm.default"] > bare.get("aten.addmm.default", 0)
    out = capsys.readouterr().out
    assert "what the full step runs beyond the bare step" in out and "_fused_adamw_" in out


@pytest.mark.slow
def test_device_suite_smoke_writes_every_figure(tmp_path):
    """benchmarks/device_suite.sh is what a lent GPU runs, once: its whole sequence (eager and whole-model
    compiled gpu_step, step_ops) runs with tiny shapes on CPU and leaves every result in $OUT."""
    out = tmp_path / "device_out"
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "benchmarks" / "device_suite.sh"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        env={**os.environ, "OUT": str(out), "PYTHON": sys.executable},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for run in ("eager", "compiled"):
        report = json.loads((out / f"{run}.json").read_text())
        (row,) = report["results"]
        assert "error" not in row and row["loss_finite"], row
        assert row["full_render_ms"] > 0  # the device-rendering step ran too
    assert json.loads((out / "compiled.json").read_text())["settings"]["compile"] is True
    assert not (out / "compiled_backbones.json").exists()  # the fallback runs only when the whole-model compile fails
    assert "what the full step runs beyond the bare step" in (out / "step_ops.log").read_text()
    neco = json.loads((out / "neco.json").read_text())["results"]  # NeCo's step beside PaKA's
    assert [(r["loss"], r["loss_finite"]) for r in neco] == [("cka", True), ("neco", True)]
    full, lora = json.loads((out / "lora.json").read_text())["results"]  # LoRA's step beside full's
    assert (full["loss"], lora["loss"]) == ("cka", "cka_lora") and lora["loss_finite"]
    assert lora["params_trainable"] - lora["params_head"] < 0.5 * (full["params_trainable"] - full["params_head"])
    (fsdp,) = json.loads((out / "fsdp_memory.json").read_text())  # FSDP2's sharded step, measured beside the plan
    assert fsdp["measured_over_planned"] == 1.0  # on the CPU: the step's tensors, byte for byte


@pytest.mark.slow
def test_gpu_step_smoke_times_every_backbone_family(tmp_path):
    """``--models`` takes the registry's families: each tiny variant runs one smoke step with its own patch size, in
    full post-training and in the default LoRA recipe (whose ``attention`` targets are out_proj in SigLIP and CLIP)."""
    out = tmp_path / "families.json"
    models = ["tiny_dinov3", "tiny_siglip", "tiny_siglip2", "tiny_clip"]
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "gpu_step.py"),
            "--smoke",
            "--device",
            "cpu",
            "--no_breakdown",
            "--no_sync_check",
            "--json",
            str(out),
            "--models",
            *models,
            "--loss",
            "cka",
            "cka_lora",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads(out.read_text())["results"]
    families = ["tiny DINOv3", "tiny SigLIP", "tiny SigLIP2", "tiny CLIP"]
    assert [row["model"] for row in rows] == [f"{m}{s}" for m in families for s in ("", " LoRA r16 attention")]
    for row in rows:
        assert "error" not in row, row
        assert row["loss_finite"] and row["view_sizes"] == [64, 32]  # 56/28 rounded to multiples of patch 16
        assert row["tflop_per_step"] > 0
