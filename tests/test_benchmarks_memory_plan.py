"""benchmarks/memory_plan.py: the one-GPU prediction equals, byte for byte, what a real AdamW step holds (full
post-training and LoRA); the parameter counts of the released architectures; the strategies' arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from paka_hf.modeling.backbones import PatchBackbone, ProjectionHead
from paka_hf.modeling.model import PaKAModel
from paka_hf.testing import batch_of_views, load_file_module, tiny_dinov2_config
from paka_hf.training.optimization import optimizer_groups

REPO_ROOT = Path(__file__).resolve().parents[1]
HEAD = (64, 16)  # the tiny models' projection head: ProjectionHead(32, 64, 16)


@pytest.fixture(scope="module")
def memory_plan():
    return load_file_module(REPO_ROOT / "benchmarks" / "memory_plan.py", "memory_plan")


def one_step(model: PaKAModel) -> torch.optim.Optimizer:
    """One AdamW step (fused, as ``Trainer``'s default ``adamw_torch_fused``) on a real batch; gradients kept."""
    groups = optimizer_groups(model, learning_rate=1e-3, head_learning_rate=1e-3, weight_decay=0.04)
    optimizer = torch.optim.AdamW(groups, fused=True)
    model.train()
    model(**batch_of_views(n_images=2, global_size=56, local_size=28)).loss.backward()
    optimizer.step()
    model.update_teacher(0.99)
    return optimizer


def held_bytes(model: PaKAModel, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of the storages the model and optimizer hold, each storage once: parameters and buffers (student,
    teacher, heads), gradients, optimizer state; of a sharded (DTensor) tensor, the storage of this process's shard."""
    from torch.distributed.tensor import DTensor

    seen: set[int] = set()

    def storage_bytes(tensors) -> int:
        total = 0
        for tensor in tensors:
            storage = (tensor.to_local() if isinstance(tensor, DTensor) else tensor).untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
        return total

    state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    return {
        "tensors": storage_bytes([*model.parameters(), *model.buffers()]),
        "gradients": storage_bytes(p.grad for p in model.parameters() if p.grad is not None),
        "optimizer": storage_bytes(state),
    }


def tiny_model(lora=None) -> PaKAModel:
    torch.manual_seed(0)
    backbone = PatchBackbone.from_config(tiny_dinov2_config())
    if lora is not None:
        from paka_hf.modeling.lora import add_lora

        add_lora(backbone, lora)
    return PaKAModel(backbone, ProjectionHead(32, *HEAD))


def check_prediction(memory_plan, lora=None) -> None:
    """The plan of the config built on ``meta`` (no storage) against the storages of a real model after one step."""
    model = tiny_model(lora)
    held = held_bytes(model, one_step(model))
    predicted = memory_plan.plan_bytes(
        memory_plan.build_model(tiny_dinov2_config(), head=HEAD, lora=lora), strategy="ddp", world_size=1
    )
    assert predicted["weights"] + predicted["teacher"] + predicted["buffers"] == held["tensors"]
    assert predicted["gradients"] == held["gradients"]
    assert predicted["optimizer"] == held["optimizer"]
    assert predicted["total"] == sum(held.values())
    assert predicted["ddp_buckets"] == predicted["fsdp_working_set"] == 0


def test_the_full_plan_is_what_one_adamw_step_holds(memory_plan):
    check_prediction(memory_plan)
    counts = memory_plan.count_model(tiny_model())
    # the mask token (32 numbers) is frozen: it is held by student and teacher, but has no gradient and no AdamW state
    assert counts.frozen == 32
    assert counts.teacher == counts.trainable + counts.frozen


def test_the_lora_plan_is_what_one_adamw_step_holds(memory_plan):
    pytest.importorskip("peft")
    from paka_hf.modeling.lora import LoRASettings

    check_prediction(memory_plan, LoRASettings(rank=4, alpha=8.0))


def test_the_lora_plan_with_an_unfrozen_block_and_norms_is_what_one_adamw_step_holds(memory_plan):
    pytest.importorskip("peft")
    from paka_hf.modeling.lora import LoRASettings

    settings = LoRASettings(rank=4, alpha=8.0, unfrozen_blocks=1, train_norms=True)
    check_prediction(memory_plan, settings)
    plain = memory_plan.count_model(tiny_model(LoRASettings(rank=4, alpha=8.0)))
    extended = memory_plan.count_model(tiny_model(settings))
    # the unfrozen block and the norms train, with AdamW state and their own EMA copy in the teacher
    assert extended.trainable > plain.trainable and extended.teacher > plain.teacher


def test_the_dora_plan_is_what_one_adamw_step_holds(memory_plan):
    pytest.importorskip("peft")
    from paka_hf.modeling.lora import LoRASettings

    settings = LoRASettings(rank=4, alpha=8.0, variant="dora")
    check_prediction(memory_plan, settings)
    plain = memory_plan.count_model(tiny_model(LoRASettings(rank=4, alpha=8.0)))
    dora = memory_plan.count_model(tiny_model(settings))
    # one trained magnitude per output row of each wrapped layer (tiny DINOv2: 2 blocks, D = 32, MLP 64)
    assert dora.trainable - plain.trainable == 2 * (4 * 32 + 64 + 32)


def test_the_variant_and_targets_reach_the_plan_and_the_table(memory_plan, capsys):
    pytest.importorskip("peft")
    args = ["--backbones", "dinov2_s14", "--no_head", "--lora_variant", "dora", "--lora_target_modules", "q_proj"]
    memory_plan.main(["--json", *args])
    out = json.loads(capsys.readouterr().out)
    assert (out["lora_variant"], out["lora_target_modules"]) == ("dora", ["q_proj"])
    # rank-16 A and B plus 384 magnitudes on the 12 query projections of ViT-S/14
    assert out["backbones"]["dinov2_s14"]["counts"]["lora"]["trainable"] == 12 * (2 * 384 * 16 + 384)
    memory_plan.main(args)
    assert "DoRA rank 16 on q_proj" in capsys.readouterr().out


def test_the_lora_options_reach_the_plan_and_the_table(memory_plan, capsys):
    pytest.importorskip("peft")
    memory_plan.main(["--json", "--backbones", "dinov2_s14", "--no_head", "--lora_unfrozen_blocks", "1"])
    out = json.loads(capsys.readouterr().out)
    assert (out["lora_unfrozen_blocks"], out["lora_train_norms"]) == (1, False)
    counts = out["backbones"]["dinov2_s14"]["counts"]
    # rank-16 adapters on 11 blocks (4·(384+384)·16 + 2·(384+1536)·16 per block) plus one whole block of ViT-S/14
    block = 4 * 384 * 384 + 4 * 384 + 2 * 384 * 1536 + 1536 + 384 + 2 * 2 * 384 + 2 * 384
    assert counts["lora"]["trainable"] == 11 * (4 * 768 * 16 + 2 * 1920 * 16) + block
    memory_plan.main(["--backbones", "dinov2_s14", "--no_head", "--lora_unfrozen_blocks", "1"])
    table = capsys.readouterr().out
    assert "the last 1 block(s) trained fully" in table and "LoRA ÷ full (1 GPU)" in table


def test_the_released_architectures_have_their_published_sizes(memory_plan):
    # DINOv2: the facebook/dinov2-small and -giant checkpoints' sizes. DINOv3, by hand (no key bias, RoPE):
    # H+ 32 blocks of 4·1280² + 3·1280·5120 + 3·1280 + 2·5120 + 1280 + 8·1280 = 26,237,440, plus the patch embedding
    # (3·16²·1280 + 1280), class, mask and 4 register tokens, final norm (994,560); 7B 40 blocks of 167,821,312
    # plus 3,182,592 (the released ~840 M and ~6.7 B)
    sizes = {
        "dinov2_s14": 22_056_576,
        "dinov2_g14": 1_136_480_768,
        "dinov3_hplus16": 32 * 26_237_440 + 994_560,
        "dinov3_7b16": 40 * 167_821_312 + 3_182_592,
    }
    for name, size in sizes.items():
        model = memory_plan.build_model(memory_plan.BACKBONES[name].config())
        counts = memory_plan.count_model(model)
        assert counts.backbone == size, name
        assert counts.frozen == model.student.model.config.hidden_size  # the mask token


def test_fsdp_divides_the_persistent_parts_and_adds_its_working_set(memory_plan):
    args = dict(trainable_tensors=10, buffer_bytes=24, units=(100, 300, 200))
    single = memory_plan.weight_side_bytes(1600, 16, 1616, strategy="single", **args)
    ddp = memory_plan.weight_side_bytes(1600, 16, 1616, strategy="ddp", world_size=4, **args)
    fsdp = memory_plan.weight_side_bytes(1600, 16, 1616, strategy="fsdp", world_size=8, padding=(5, 1, 6), **args)
    assert ddp["total"] == single["total"] + 4 * 1600
    assert fsdp["weights"] == 4 * (200 + 5 + 2 + 1)
    assert fsdp["gradients"] == 4 * 205
    assert fsdp["optimizer"] == 8 * 205 + 4 * 10  # AdamW's step counters are not sharded
    assert fsdp["teacher"] == 4 * (202 + 6) and fsdp["buffers"] == 24
    assert fsdp["fsdp_working_set"] == 8 * 300 + 2 * 200
    with pytest.raises(ValueError):
        memory_plan.weight_side_bytes(1, 0, 1, strategy="zero3")


def test_the_json_names_every_column(memory_plan, capsys):
    memory_plan.main(["--json", "--backbones", "dinov2_s14"])
    out = json.loads(capsys.readouterr().out)
    assert set(out["backbones"]["dinov2_s14"]["bytes"]) == {key for key, *_ in memory_plan.COLUMNS}


def fsdp_worker(rank: int, world_size: int, port: int, out: str) -> None:
    """One process of the FSDP2 check: shard the tiny model (full and LoRA), one step, write what this rank holds."""
    import os

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from paka_hf.modeling.lora import LoRASettings
    from paka_hf.modeling.sharding import shard_paka_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    mesh = init_device_mesh("cpu", (world_size,))
    memory_plan = load_file_module(REPO_ROOT / "benchmarks" / "memory_plan.py", "memory_plan")
    result = {}
    for case, lora in (("full", None), ("lora", LoRASettings(rank=4, alpha=8.0))):
        model = shard_paka_model(tiny_model(lora), mesh)
        held = held_bytes(model, one_step(model))
        plan = memory_plan.plan_bytes(
            memory_plan.build_model(tiny_dinov2_config(), head=HEAD, lora=lora), "fsdp", world_size
        )
        result[case] = {"held": held, "plan": plan}
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


@pytest.mark.slow
def test_the_fsdp2_plan_is_what_the_first_of_two_processes_holds(tmp_path):
    """Two CPU processes (gloo) shard the tiny model with paka_hf.modeling.sharding: process 0 holds exactly the
    plan's persistent bytes (padded shards included), process 1 no more."""
    import socket

    import torch.multiprocessing as mp

    pytest.importorskip("peft")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(fsdp_worker, args=(2, port, str(tmp_path)), nprocs=2)
    for case in ("full", "lora"):
        for rank in (0, 1):
            result = json.loads((tmp_path / f"rank{rank}.json").read_text())[case]
            held, plan = result["held"], result["plan"]
            assert held["tensors"] == plan["weights"] + plan["teacher"] + plan["buffers"], (case, rank)
            assert held["gradients"] == plan["gradients"], (case, rank)
            # AdamW's state follows the unpadded rows: whole one-row tensors on process 0, none on process 1
            assert (held["optimizer"] == plan["optimizer"]) if rank == 0 else (held["optimizer"] <= plan["optimizer"])
