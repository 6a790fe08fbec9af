#!/usr/bin/env python
"""PaKA post-training of a supported ViT checkpoint (DINOv2, DINOv2 with registers, DINOv3, SigLIP / SigLIP 2, CLIP).

    accelerate launch scripts/train.py --config configs/dinov2r_s14_coco.yaml [--any_field value ...]

Every field of ``paka_hf.PaKAConfig`` (the method's settings and all of ``TrainingArguments``)
can be set in the YAML file and overridden on the command line; ``--help`` lists them. At the
end ``output_dir`` holds the adapted backbone as a plain ``transformers`` model folder. Resume an
interrupted run with ``--resume_from_checkpoint latest`` (or a checkpoint folder); a new run into an
``output_dir`` that holds checkpoints stops unless ``--overwrite_output_dir true`` (which removes them).

Pushing to the Hub (``--push_to_hub true --hub_model_id org/name``) uses the token of ``hf auth login``
or the ``HF_TOKEN`` environment variable. ``--hub_token`` still works but warns: a command line is visible
to every user of the machine (``ps``). A user error (bad value, missing path, no checkpoint to resume)
prints one line ``error: ...`` and exits with status 2; ``--debug`` shows its traceback.
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
from paka_hf.cli import run_script
from paka_hf.config import secret_fields
from paka_hf.errors import ConfigError
from paka_hf.paths import check_local_path

logger = logging.getLogger("train")


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
    return parse_config_and_origins(argv)[0]


def parse_config_and_origins(argv: list[str]) -> tuple[PaKAConfig, dict[str, str]]:
    """The config from ``--config FILE`` and the command line (which wins), and for each field set in the
    file and not on the command line, the file's name (for messages about the value)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(argv)
    from_file: list[str] = []
    values: dict = {}
    if known.config is not None:
        check_local_path(known.config, "--config", always=True)
        config_file = Path(known.config)
        try:
            values = yaml.safe_load(config_file.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{config_file} is not valid YAML: {error}") from error
        if not isinstance(values, dict):
            raise ConfigError(f"{config_file} must hold a mapping of field: value, got {type(values).__name__}")
        from_file = yaml_to_argv(values)
    parser = HfArgumentParser(PaKAConfig, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, help="YAML file of PaKAConfig fields; command-line flags override it")
    args = to_installed_names(from_file + rest, {f.name for f in dataclasses.fields(PaKAConfig)})
    parsed = parser.parse_args_into_dataclasses(args=args, return_remaining_strings=True)
    config, unknown = parsed[0], parsed[-1]  # (PaKAConfig, namespace holding --config, remaining strings)
    if unknown:
        parser.error(f"unknown arguments: {' '.join(unknown)}")
    on_command_line = {token[2:].partition("=")[0] for token in rest if token.startswith("--")}
    origins = {key: str(known.config) for key in values if key not in on_command_line}
    for name in secret_fields(on_command_line):
        logger.warning(
            "--%s on the command line is visible to every user of this machine (ps, shell history); run "
            "`hf auth login` once or set the HF_TOKEN environment variable instead", name,
        )
    for name in secret_fields(origins):
        logger.warning(
            "%s in %s: a token in a config file travels with the file; run `hf auth login` once or set the "
            "HF_TOKEN environment variable instead", name, origins[name],
        )
    return config, origins


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    config, origins = parse_config_and_origins(sys.argv[1:] if argv is None else argv)
    logging.getLogger().setLevel(logging.INFO if config.should_log else logging.WARNING)
    config.check_local_paths(origins)  # before anything is loaded: a mistyped folder never reaches the Hub
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
    sys.exit(run_script(main))
