"""PaKAConfig declares the choices of its enumerated fields: --help lists them, the parser refuses a bad value,
and a config built in Python fails in __post_init__ with the same choices."""

from __future__ import annotations

import ast
import inspect
from dataclasses import fields

import pytest
from transformers import HfArgumentParser, TrainingArguments

import paka_hf.training.config as config_module
from paka_hf.losses import KERNELS, LOSSES, SCOPES
from paka_hf.modeling.lora import LORA_VARIANTS
from paka_hf.modeling.model import STUDENT_VIEWS
from paka_hf.training.config import COLLAPSE_ACTIONS, DATASET_FORMATS, PaKAConfig
from paka_hf.utils.errors import ConfigError
from paka_hf.views.glim import RENDERINGS

ENUMERATED = {
    "loss": LOSSES,
    "kernel": KERNELS,
    "kernel_scope": SCOPES,
    "export": ("student", "teacher"),
    "student_views": STUDENT_VIEWS,
    "view_rendering": RENDERINGS,
    "dataset_format": DATASET_FORMATS,
    "collapse_action": COLLAPSE_ACTIONS,
    "lora_variant": LORA_VARIANTS,
}


def test_every_enumerated_field_declares_its_choices():
    trainer_fields = {spec.name for spec in fields(TrainingArguments)}
    declared = {
        spec.name: spec.metadata["choices"]
        for spec in fields(PaKAConfig)
        if "choices" in spec.metadata and spec.name not in trainer_fields
    }
    assert declared == ENUMERATED
    defaults = {spec.name: spec.default for spec in fields(PaKAConfig)}
    assert all(defaults[name] in choices for name, choices in declared.items())


def test_help_lists_the_choices():
    text = HfArgumentParser(PaKAConfig).format_help()
    assert "{cka,gram,cosine,neco}" in text
    assert "{cpu,device}" in text and "{student,teacher}" in text


@pytest.mark.parametrize("name", sorted(ENUMERATED))
def test_a_bad_value_fails_at_parse_time_naming_the_choices(name, capsys):
    parser = HfArgumentParser(PaKAConfig)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args_into_dataclasses([f"--{name}", "bad", "--output_dir", "unused", "--max_steps", "1"])
    assert exit_info.value.code == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"--{name}" in last_line and "invalid choice: 'bad'" in last_line, last_line
    assert all(repr(choice) in last_line for choice in ENUMERATED[name]), last_line


def test_a_good_value_parses():
    parser = HfArgumentParser(PaKAConfig)
    (config,) = parser.parse_args_into_dataclasses(
        ["--loss", "gram", "--kernel", "rbf", "--output_dir", "unused", "--max_steps", "1"]
    )
    assert (config.loss, config.kernel) == ("gram", "rbf")


@pytest.mark.parametrize("name", sorted(ENUMERATED))
def test_a_bad_value_in_python_fails_in_post_init_naming_the_choices(name, tmp_path):
    with pytest.raises(ConfigError) as error:
        PaKAConfig(output_dir=str(tmp_path), max_steps=1, **{name: "bad"})
    assert str(error.value) == f"{name} must be one of {ENUMERATED[name]}, got 'bad'"


def test_rules_have_one_wording_wherever_they_are_checked(tmp_path):
    from paka_hf.modeling.backbones import PatchBackbone
    from paka_hf.modeling.model import PaKAModel
    from paka_hf.testing import tiny_dinov2_config
    from paka_hf.views.glim import GlimTransform

    config = PaKAConfig(output_dir=str(tmp_path), max_steps=1, global_size=225)
    with pytest.raises(ConfigError) as from_config:
        config.check_patch_size(14)
    with pytest.raises(ConfigError) as from_views:
        GlimTransform(225, 98, patch_size=14)
    assert str(from_config.value) == str(from_views.value)
    with pytest.raises(ConfigError) as from_config:
        PaKAConfig(output_dir=str(tmp_path), max_steps=1, roi_size=1)
    with pytest.raises(ConfigError) as from_model:
        PaKAModel(PatchBackbone.from_config(tiny_dinov2_config()), roi_size=1)
    assert str(from_config.value) == str(from_model.value)


def test_the_config_is_a_leaf_of_the_training_layer():
    """config.py imports nothing from paka_hf.training: data, trainer and the commands build on it, never it on them."""
    tree = ast.parse(inspect.getsource(config_module))
    imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert "paka_hf.modeling.teacher" in imported  # the walk sees the module's imports
    assert [name for name in imported if name.startswith("paka_hf.training")] == []


def test_defaults_come_from_the_modules_that_use_them(tmp_path):
    from PIL import Image

    from paka_hf.modeling.teacher import DEFAULT_TEACHER_MOMENTUM, teacher_momentum_at
    from paka_hf.training import data

    config = PaKAConfig(output_dir=str(tmp_path), max_steps=1)
    assert config.teacher_momentum == DEFAULT_TEACHER_MOMENTUM == teacher_momentum_at(0, 10) == 0.9995
    assert config.max_image_pixels == data.DEFAULT_MAX_IMAGE_PIXELS == Image.MAX_IMAGE_PIXELS
    assert data.DATASET_FORMATS is DATASET_FORMATS
    assert inspect.signature(data.decode_image).parameters["max_pixels"].default == config.max_image_pixels
