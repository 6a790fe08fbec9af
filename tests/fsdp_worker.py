"""One process of tests/test_training_fsdp.py's runs, launched by ``accelerate launch`` (DDP or FSDP2, gloo on CPU).

``python fsdp_worker.py ASSETS OUT``: for each case (DINOv2 and DINOv3, full and LoRA; DINOv2 with activation
checkpointing and with gradient accumulation), train 4 steps from the same seed and data, export student and teacher
to ``OUT/<case>/student`` and ``.../teacher``, then resume a second run from its step-2 checkpoint and export its
student to ``OUT/<case>/resumed``. Under FSDP it also counts the collectives of every EMA step and of one student
forward (the counter's own check) and writes them to ``OUT/<case>/collectives_rank<r>.json``.

``python fsdp_worker.py ASSETS OUT push REPO``: one DINOv2 run of the training program itself (``scripts/train.py``'s
``main``) that pushes every save to the Hub (``HF_ENDPOINT``) and pushes at the end; each process then writes whether
its process group is still alive to ``OUT/process_group_alive_rank<r>.json``.

``... crash`` and ``... resume`` (one process, plain python with ``ACCELERATE_USE_FSDP=true``): a run that dies while
writing its second checkpoint, and its resume from ``latest``.
"""

import json
import logging
import os
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.tensor.debug import CommDebugMode

from paka_hf import PaKATrainer
from paka_hf.commands.train import main as train_main
from paka_hf.testing import TINY_RUN_FIELDS, tiny_run_config

#: case -> (model folder, settings beside the common ones)
LORA = dict(use_lora=True, lora_rank=4, learning_rate=1e-2)
CASES = {
    "dinov2": ("dinov2", {}),
    "dinov2_lora": ("dinov2", LORA),
    "dinov3": ("dinov3", {}),
    "dinov3_lora": ("dinov3", LORA),
    "dinov2_checkpointed": ("dinov2", dict(activation_checkpointing=True)),
    "dinov2_accumulated": ("dinov2", dict(per_device_train_batch_size=1, gradient_accumulation_steps=2)),
}
#: the c10d collectives FSDP2 and the trainer use
COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "reduce_scatter_tensor",
    "broadcast",
    "all_to_all_single",
)


class CollectiveCounter:
    """Counts c10d collectives (patched ``torch.distributed`` functions) and DTensor collectives (``CommDebugMode``)."""

    def __enter__(self):
        self.calls = []
        self.saved = {name: getattr(dist, name) for name in COLLECTIVES}
        for name, function in self.saved.items():

            def counted(*args, _name=name, _function=function, **kwargs):
                self.calls.append(_name)
                return _function(*args, **kwargs)

            setattr(dist, name, counted)
        self.debug = CommDebugMode()
        self.debug.__enter__()
        return self

    def __exit__(self, *exc):
        self.debug.__exit__(*exc)
        for name, function in self.saved.items():
            setattr(dist, name, function)

    @property
    def count(self) -> int:
        return len(self.calls) + self.debug.get_total_counts()


def settings(model: str, extra: dict) -> dict:
    overrides = dict(max_steps=4, save_steps=2, logging_steps=2, per_device_train_batch_size=2, drop_path_rate=0.0)
    if model == "dinov3":  # patch 16
        overrides.update(global_size=64, local_size=32)
    return {**overrides, **extra}


def train(assets: Path, case_out: Path, model: str, extra: dict, resume: str | None = None):
    overrides = settings(model, extra)
    output = case_out / ("resumed_run" if resume else "run")
    if resume:
        if dist.get_rank() == 0:
            shutil.copytree(case_out / "run", output, dirs_exist_ok=True)
            shutil.rmtree(output / "checkpoint-4")
        dist.barrier()
    config = tiny_run_config(output, assets / model / "model", assets / "images", **overrides)
    trainer = PaKATrainer(args=config)
    sharded = trainer.fsdp is not None
    counts = {"ema": [], "forward": None}
    if sharded and not resume:
        inner = trainer.model
        update = inner.update_teacher

        def counted_update(momentum):
            with CollectiveCounter() as counter:
                update(momentum)
            counts["ema"].append(counter.count)

        inner.update_teacher = counted_update
    trainer.train(resume_from_checkpoint=resume)
    if resume:
        trainer.export_backbone(case_out / "resumed")
        return
    trainer.export_backbone(case_out / "student")
    trainer.export_backbone(case_out / "teacher", network="teacher")
    if sharded:
        with CollectiveCounter() as counter, torch.no_grad():
            trainer.model.student(torch.randn(1, 3, 112, 112))  # 112: a multiple of patch 14 and 16
        counts["forward"] = counter.count
        (case_out / f"collectives_rank{dist.get_rank()}.json").write_text(json.dumps(counts))


def push(assets: Path, out: Path, repo: str):
    """The training program itself (``scripts/train.py``'s ``main``); then whether this process left its group."""
    overrides = settings(
        "dinov2", dict(push_to_hub=True, hub_model_id=repo, hub_strategy="every_save", hub_always_push=True)
    )
    paths = dict(
        output_dir=out / "run", model_name_or_path=assets / "dinov2" / "model", dataset_name=assets / "images"
    )
    argv = []
    for name, value in {**paths, **TINY_RUN_FIELDS, **overrides}.items():
        argv += [f"--{name}", str(value).lower() if isinstance(value, bool) else str(value)]
    train_main(argv)
    alive = dist.is_available() and dist.is_initialized()
    (out / f"process_group_alive_rank{os.environ['RANK']}.json").write_text(json.dumps(alive))


def crash_while_saving(assets: Path, out: Path):
    """One process asking for FSDP (world size 1): the second checkpoint save dies after the model's shards and
    before the optimizer's, as a run killed while saving would."""
    import paka_hf.training.trainer as trainer_module

    saves = []
    save = trainer_module.save_sharded_optimizer

    def dying_save(*args, **kwargs):
        saves.append(1)
        if len(saves) == 2:
            raise SystemExit("killed while saving")
        return save(*args, **kwargs)

    trainer_module.save_sharded_optimizer = dying_save
    config = tiny_run_config(out / "run", assets / "dinov2" / "model", assets / "images", **settings("dinov2", {}))
    PaKATrainer(args=config).train()


def resume_latest(assets: Path, out: Path):
    overrides = settings("dinov2", {})
    config = tiny_run_config(out / "run", assets / "dinov2" / "model", assets / "images", **overrides)
    trainer = PaKATrainer(args=config)
    trainer.train(resume_from_checkpoint="latest")
    trainer.export_backbone(config.output_dir)


def main():
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    assets, out = Path(sys.argv[1]), Path(sys.argv[2])
    if sys.argv[3:4] == ["push"]:
        push(assets, out, sys.argv[4])
        return
    if sys.argv[3:4] == ["crash"]:
        crash_while_saving(assets, out)
        return
    if sys.argv[3:4] == ["resume"]:
        resume_latest(assets, out)
        return
    for case, (model, extra) in CASES.items():
        case_out = out / case
        train(assets, case_out, model, extra)
        train(assets, case_out, model, extra, resume=str(case_out / "resumed_run" / "checkpoint-2"))
    dist.destroy_process_group()  # as the training program does: exiting with the group alive can abort


if __name__ == "__main__":
    main()
