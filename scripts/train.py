#!/usr/bin/env python
"""PaKA post-training of a supported ViT checkpoint (DINOv2, DINOv2 with registers, DINOv3, SigLIP / SigLIP 2, CLIP).

    accelerate launch scripts/train.py --config configs/dinov2r_s14_coco.yaml [--any_field value ...]

Every field of ``paka_hf.PaKAConfig`` (the method's settings and all of ``TrainingArguments``)
can be set in the YAML file and overridden on the command line; ``--help`` lists them. At the
end ``output_dir`` holds the adapted backbone as a plain ``transformers`` model folder. Resume an
interrupted run with ``--resume_from_checkpoint latest`` (or a checkpoint folder).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from paka_hf import PaKAConfig, PaKATrainer


def yaml_to_argv(values: dict) -> list[str]:
    """``{"max_steps": 10, "global_scale": [0.25, 1.0], "flip": true}`` → ``--max_steps 10 --global_scale 0.25 1.0 --flip true``."""
    argv: list[str] = []
    for key, value in values.items():
        if value is None:
            continue
        argv.append(f"--{key}")
        if isinstance(value, (list, tuple)):
            argv.extend(str(v) for v in value)
        elif isinstance(value, dict):
            argv.append(json.dumps(value))
        else:
            argv.append(str(value))
    return argv


# transformers 5.20 renamed ``gradient_checkpointing[_kwargs]`` to ``activation_checkpointing[_kwargs]``: the old
# names warn and go in v6, and versions before 5.20 know only them. A config may use either name; it is passed on
# under the one the installed transformers has.
CHECKPOINTING_RENAMES = {
    "gradient_checkpointing": "activation_checkpointing",
    "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs",
}


def to_installed_names(argv: list[str], field_names: set[str]) -> list[str]:
    """``--gradient_checkpointing true`` → ``--activation_checkpointing true`` where ``field_names`` has the new
    name, and the reverse where it has only the old one; every other argument as is."""
    renames = {}
    for old, new in CHECKPOINTING_RENAMES.items():
        if new in field_names:
            renames[old] = new
        else:
            renames[new] = old
    out = []
    for token in argv:
        if token.startswith("--"):
            key, equals, value = token[2:].partition("=")
            token = f"--{renames.get(key, key)}{equals}{value}"
        out.append(token)
    return out


def parse_config(argv: list[str]) -> PaKAConfig:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path, default=None)
    known, rest = pre.parse_known_args(argv)
    from_file: list[str] = []
    if known.config is not None:
        if not known.config.is_file():
            raise SystemExit(f"config file {known.config} not found")
        values = yaml.safe_load(known.config.read_text()) or {}
        if not isinstance(values, dict):
            raise SystemExit(f"{known.config} must hold a mapping of field: value")
        from_file = yaml_to_argv(values)
    parser = HfArgumentParser(PaKAConfig, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, help="YAML file of PaKAConfig fields; command-line flags override it")
    args = to_installed_names(from_file + rest, {f.name for f in dataclasses.fields(PaKAConfig)})
    parsed = parser.parse_args_into_dataclasses(args=args, return_remaining_strings=True)
    config, unknown = parsed[0], parsed[-1]  # (PaKAConfig, namespace holding --config, remaining strings)
    if unknown:
        parser.error(f"unknown arguments: {' '.join(unknown)}")
    return config


def main(argv: list[str] | None = None) -> None:
    config = parse_config(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO if config.should_log else logging.WARNING)
    trainer = PaKATrainer(args=config)
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    output = trainer.export_backbone(config.output_dir)
    if config.should_save:
        print(f"adapted backbone ({config.export}) written to {output}; load it with AutoModel.from_pretrained({str(output)!r})")
    if config.push_to_hub:
        # One commit with the backbone, a regenerated model card and the training configuration; evaluation
        # results written as output_dir/eval_results*.json by then are included in the card.
        results = sorted(Path(config.output_dir).glob("eval_results*.json"))
        info = trainer.push_to_hub(eval_results=results)
        if info is not None:
            print(f"pushed to {config.hub_model_id}: {getattr(info, 'commit_url', info)}")


if __name__ == "__main__":
    main()
