"""Every backbone family of the registry, on tiny random-init configs (2 layers, width 32, small images).

Per family: the dropped prefix tokens are exactly the CLS/register tokens; any input size runs; the
parameters frozen as unused are exactly those that get no gradient; the normalization comes from the
checkpoint's image processor; LoRA targets match the loaded modules; and end to end: a few steps through
``PaKATrainer``, a bit-exact resume, an export that ``AutoModel`` (and the vision-model class) loads with
the trained student's outputs, ``scripts/evaluate.py`` and ``scripts/visualize.py`` on it, and its card.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoModel,
    CLIPImageProcessor,
    ViTConfig,
)

import paka_hf.modeling.backbones as backbones
from paka_hf import PaKAConfig, PaKATrainer
from paka_hf.commands import evaluate as evaluate_command
from paka_hf.commands import visualize as visualize_command
from paka_hf.hub import render_model_card
from paka_hf.modeling.backbones import FAMILIES, PatchBackbone, patchify, resolve_lora_targets
from paka_hf.modeling.model import PaKAModel
from paka_hf.testing import TINY_ARCHITECTURE as TINY
from paka_hf.testing import StopAt, tiny_run_config, write_random_images
from paka_hf.testing import tiny_family_config as tiny_config
from paka_hf.utils.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]

VISION_VARIANTS = [
    "dinov2",
    "dinov2_with_registers",
    "dinov3_vit",
    "dinov3_vit_gated",
    "siglip_vision_model",
    "siglip2_vision_model",
    "clip_vision_model",
]
# Tokens before the patches, from each model's own documentation: CLS (+ registers); SigLIP has none.
EXPECTED_PREFIX = {
    "dinov2": 1,
    "dinov2_with_registers": 5,
    "dinov3_vit": 5,
    "dinov3_vit_gated": 5,
    "siglip_vision_model": 0,
    "siglip2_vision_model": 0,
    "clip_vision_model": 1,
}


def tiny_backbone(variant: str, **kwargs) -> PatchBackbone:
    torch.manual_seed(0)
    return PatchBackbone.from_config(tiny_config(variant), **kwargs)


def test_every_family_has_a_variant_here():
    assert {tiny_config(v).model_type for v in VISION_VARIANTS} == set(FAMILIES)


@pytest.mark.parametrize("variant", VISION_VARIANTS)
def test_dropped_prefix_tokens_are_exactly_the_cls_and_register_tokens(variant):
    backbone = tiny_backbone(variant).eval()
    p = backbone.patch_size
    pixels = torch.randn(2, 3, 3 * p, 5 * p)  # non-square, not the config's image size
    with torch.no_grad():
        grid = backbone(pixels)
        tokens = backbone.tokens(pixels)
    prefix = EXPECTED_PREFIX[variant]
    assert backbone.num_prefix_tokens == prefix
    assert grid.shape == (2, 32, 3, 5) and tokens.shape == (2, prefix + 15, 32)
    manual = tokens[:, prefix:].reshape(2, 3, 5, 32).permute(0, 3, 1, 2)  # token prefix + 5 i + j is cell (i, j)
    assert torch.equal(grid, manual)
    model = backbone.model
    with torch.no_grad():
        if variant.startswith("dinov3"):  # the CLS token is token 0, the registers the next 4
            out = model(pixel_values=pixels)
            assert (
                torch.equal(out.pooler_output, out.last_hidden_state[:, 0]) and model.config.num_register_tokens == 4
            )
            assert torch.equal(tokens, out.last_hidden_state)
        elif variant == "clip_vision_model":  # token 0 is the CLS the pooler normalizes; the grid is post-LN too
            out = model(pixel_values=pixels, interpolate_pos_encoding=True)
            assert torch.equal(out.pooler_output, tokens[:, 0])
            assert torch.equal(model.post_layernorm(out.last_hidden_state), tokens)
        elif variant == "siglip2_vision_model":  # patchified exactly as Siglip2ImageProcessor does
            from transformers.models.siglip2.image_processing_siglip2 import convert_image_to_patches

            patches = torch.stack([convert_image_to_patches(image, p) for image in pixels])
            assert torch.equal(patchify(pixels, p), patches)
            out = model(
                pixel_values=patches,
                pixel_attention_mask=torch.ones(2, 15, dtype=torch.long),
                spatial_shapes=torch.tensor([[3, 5], [3, 5]]),
            )
            assert torch.allclose(out.last_hidden_state, tokens, atol=1e-6)
        elif variant == "siglip_vision_model":
            out = model(pixel_values=pixels, interpolate_pos_encoding=True)
            assert torch.equal(out.last_hidden_state, tokens)
        else:
            assert torch.equal(model(pixel_values=pixels).last_hidden_state, tokens)


@pytest.mark.parametrize("variant", VISION_VARIANTS)
def test_frozen_unused_parameters_are_exactly_those_without_gradient(variant):
    backbone = tiny_backbone(variant).train()
    model = PaKAModel(backbone, None, roi_size=2)
    p = backbone.patch_size
    model.student(torch.randn(2, 3, 2 * p, 3 * p)).square().mean().backward()
    no_grad = {name for name, param in model.student.named_parameters() if param.grad is None}
    frozen = {name for name, param in model.student.named_parameters() if not param.requires_grad}
    assert no_grad == frozen == set(backbone.unused_parameter_names())
    if variant.startswith("siglip"):
        assert frozen and all(name.startswith("model.head.") for name in frozen)  # the attention-pooling head


@pytest.mark.parametrize("variant", ["clip", "siglip", "siglip2"])
def test_a_full_checkpoint_loads_its_vision_tower(tmp_path, variant):
    torch.manual_seed(0)
    full = AutoModel.from_config(tiny_config(variant))
    full.save_pretrained(tmp_path)
    backbone = PatchBackbone.from_pretrained(tmp_path)
    family = FAMILIES[f"{variant}_vision_model"]
    assert backbone.family is family and type(backbone.model).__name__ == family.model_class
    vision = full.vision_model.state_dict()
    for name, tensor in backbone.model.state_dict().items():
        assert torch.equal(tensor, vision[name.removeprefix("vision_model.")]), name
    with pytest.raises(ConfigError, match="pass its vision tower"):
        PatchBackbone(full)


def test_normalization_comes_from_the_checkpoint_processor(tmp_path, caplog):
    torch.manual_seed(0)
    AutoModel.from_config(tiny_config("clip_vision_model")).save_pretrained(tmp_path / "with")
    CLIPImageProcessor(image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6]).save_pretrained(tmp_path / "with")
    backbone = PatchBackbone.from_pretrained(tmp_path / "with")
    assert backbone.image_mean == (0.1, 0.2, 0.3) and backbone.image_std == (0.4, 0.5, 0.6)
    model = PaKAModel(backbone, None, roi_size=2)
    assert model.pixel_mean.tolist() == pytest.approx([0.1, 0.2, 0.3]) and model.pixel_std.tolist() == pytest.approx(
        [0.4, 0.5, 0.6]
    )
    # no processor saved: the family's reference one (SigLIP: 0.5 / 0.5), said in a warning
    AutoModel.from_config(tiny_config("siglip_vision_model")).save_pretrained(tmp_path / "without")
    with caplog.at_level(logging.WARNING, logger="paka_hf.modeling.backbones"):
        siglip = PatchBackbone.from_pretrained(tmp_path / "without")
    assert siglip.image_mean == (0.5, 0.5, 0.5) and siglip.image_std == (0.5, 0.5, 0.5)
    assert "has no image processor" in caplog.text and "SiglipImageProcessor" in caplog.text
    assert tiny_backbone("dinov2").image_std == pytest.approx((0.229, 0.224, 0.225))  # facebook/dinov2's processor


def test_unsupported_model_type_is_a_one_line_config_error(tmp_path):
    AutoModel.from_config(ViTConfig(**TINY)).save_pretrained(tmp_path)
    with pytest.raises(ConfigError) as error:
        PatchBackbone.from_pretrained(tmp_path)
    message = str(error.value)
    assert "\n" not in message and "'vit' model" in message
    for model_type in (
        "dinov2",
        "dinov2_with_registers",
        "dinov3_vit",
        "siglip_vision_model",
        "siglip2_vision_model",
        "clip_vision_model",
        "clip",
    ):
        assert model_type in message


@pytest.mark.parametrize("variant", VISION_VARIANTS)
def test_lora_targets_match_every_block_and_nothing_else(variant):
    backbone = tiny_backbone(variant)
    family = backbone.family
    targets = family.lora_targets(backbone.model.config)
    names = resolve_lora_targets(backbone)
    assert len(names) == 2 * len(targets)  # every target in each of the 2 blocks
    assert {name.rsplit(".", 1)[1] for name in names} == set(targets)
    assert not any(name.startswith("head.") for name in names)  # SigLIP's pooling head has fc1/fc2 too
    if variant == "dinov3_vit_gated":
        assert "gate_proj" in targets
    with pytest.raises(ConfigError, match=r"\['query', 'dense'\] match no linear layer.*q_proj"):
        resolve_lora_targets(backbone, ["q_proj", "query", "dense"])  # transformers 4.x names on a 5.x model


@pytest.mark.parametrize("variant", VISION_VARIANTS)
def test_the_attention_and_mlp_groups_name_each_familys_own_projections(variant):
    """``attention`` is the attention's four projections in the family's names (CLIP and SigLIP: out_proj, the DINOs:
    o_proj), ``mlp`` the rest of the default; together, in either order and with a repeat, they are the default."""
    backbone = tiny_backbone(variant)
    short = lambda names: [name.rsplit(".", 1)[1] for name in names]  # noqa: E731
    attention = short(resolve_lora_targets(backbone, ["attention"]))
    output = "out_proj" if variant.startswith(("siglip", "clip")) else "o_proj"
    assert set(attention) == {"q_proj", "k_proj", "v_proj", output} and len(attention) == 8  # 2 blocks
    mlp = set(short(resolve_lora_targets(backbone, ["mlp"])))
    expected = {"gate_proj", "up_proj", "down_proj"} if variant == "dinov3_vit_gated" else {"fc1", "fc2"}
    expected = {"up_proj", "down_proj"} if variant == "dinov3_vit" else expected
    assert mlp == expected
    assert resolve_lora_targets(backbone, ["mlp", "attention", "q_proj"]) == resolve_lora_targets(backbone)
    with pytest.raises(ConfigError, match=r"\['fc9'\] match no linear layer"):
        resolve_lora_targets(backbone, ["attention", "fc9"])


def test_a_dinov2_with_a_swiglu_mlp_gets_its_gated_projections_as_default_lora_targets():
    """DINOv2 ViT-g/14 (use_swiglu_ffn) has gate_proj, up_proj and down_proj where the smaller sizes have fc1, fc2."""
    from paka_hf.testing import tiny_dinov2_config

    config = tiny_dinov2_config()
    config.use_swiglu_ffn = True
    backbone = PatchBackbone.from_config(config)
    targets = backbone.family.lora_targets(backbone.model.config)
    assert {"gate_proj", "up_proj", "down_proj"} <= set(targets) and "fc1" not in targets
    assert len(resolve_lora_targets(backbone)) == 2 * len(targets)  # the defaults: no ConfigError


def test_dinov3_rope_jitter_is_off_for_the_student_unless_asked():
    config = tiny_config("dinov3_vit")
    assert config.pos_embed_rescale == 2.0  # what the released checkpoints train with
    pixels = torch.randn(1, 3, 48, 64)
    exact = tiny_backbone("dinov3_vit").train()
    with torch.no_grad():
        reference = exact.eval()(pixels)
        assert torch.equal(exact.train()(pixels), reference)  # training mode, exact coordinates
        jittered = tiny_backbone("dinov3_vit", rope_augment=True).train()
        torch.manual_seed(1)
        a = jittered(pixels)
        torch.manual_seed(1)
        assert torch.equal(jittered(pixels), a)  # the draw comes from the global RNG
        assert not torch.equal(a, reference)
    assert jittered.model.config.pos_embed_rescale == 2.0  # the config (and so the export) is untouched
    with pytest.raises(ConfigError, match="RoPE backbones"):
        tiny_backbone("dinov2", rope_augment=True)


# --------------------------------------------------------------------------------------------------
# end to end through PaKATrainer, per family
# --------------------------------------------------------------------------------------------------

END_TO_END = [
    "dinov2",
    "dinov2_with_registers",
    "dinov3_vit",
    "dinov3_vit_gated",
    "siglip_vision_model",
    "siglip2",
    "clip",
]  # "siglip2" and "clip" are full checkpoints: their vision towers train


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_random_images(tmp_path_factory.mktemp("images"), 12, side_range=(50, 90))


def family_run_config(model_dir, images, output_dir, patch_size, **overrides) -> PaKAConfig:
    sizes = dict(global_size=4 * patch_size, local_size=2 * patch_size)
    defaults = dict(max_steps=4, shuffle_buffer_size=4, save_steps=2, roi_size=3, **sizes)
    return tiny_run_config(output_dir, model_dir, images, **{**defaults, **overrides})


def _segmentation_folder(root):
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(n):
            mask = np.zeros((40, 50), np.uint8)
            mask[:, 25:] = 1
            Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(
                root / split / "images" / f"{i}.png"
            )
            Image.fromarray(mask).save(root / split / "masks" / f"{i}.png")


@pytest.mark.slow
@pytest.mark.parametrize("variant", END_TO_END)
def test_family_end_to_end(variant, images, tmp_path):
    torch.manual_seed(0)
    model_dir = tmp_path / "base"
    AutoModel.from_config(tiny_config(variant)).save_pretrained(model_dir)
    family = backbones.family_for(tiny_config(variant).model_type)
    patch = 14 if family.name.startswith("dinov2") else 16
    # DINOv3: the student's RoPE jitter on, so resume is checked with its random draws too
    extra = dict(student_rope_augment=True) if family.rope_module else {}

    straight = PaKATrainer(args=family_run_config(model_dir, images, tmp_path / "a", patch, **extra))
    straight.train()
    assert straight.state.global_step == 4
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in straight.state.log_history if "loss" in e)
    first = PaKATrainer(
        args=family_run_config(model_dir, images, tmp_path / "b", patch, **extra), callbacks=[StopAt(2)]
    )
    first.train()
    resumed = PaKATrainer(args=family_run_config(model_dir, images, tmp_path / "b", patch, **extra))
    resumed.train(resume_from_checkpoint="latest")
    for network in ("student", "teacher"):
        a = getattr(straight.model, network).state_dict()
        b = getattr(resumed.model, network).state_dict()
        for name in a:
            assert torch.equal(a[name], b[name]), f"{network} {name} differs after resume"

    # export: plain transformers, the trained student's outputs exactly
    export = straight.export_backbone(tmp_path / "export")
    loaded = AutoModel.from_pretrained(export).eval()
    assert type(loaded).__name__ == family.model_class and loaded.config.model_type == family.name
    student = straight.model.student.eval()
    pixels = torch.randn(2, 3, 3 * patch, 4 * patch)
    with torch.no_grad():
        expected = student(pixels)
        assert torch.equal(PatchBackbone(loaded)(pixels), expected)
        assert torch.equal(PatchBackbone.from_pretrained(export).eval()(pixels), expected)
        vision_class = getattr(__import__("transformers"), family.model_class)
        assert torch.equal(PatchBackbone(vision_class.from_pretrained(export).eval())(pixels), expected)
    assert PatchBackbone.from_pretrained(export).image_mean == student.image_mean  # the processor travels along

    # the model card: base, licence, pipeline_tag
    card = render_model_card(export, "org/paka-tiny", base_model=family.example_ids[0])
    assert card.data.base_model == family.example_ids[0] and card.data.pipeline_tag == "image-feature-extraction"
    assert str(model_dir) in str(card) or family.example_ids[0] in str(card)
    if family.name == "dinov3_vit":
        assert card.data.license == "other" and card.data.license_name == "dinov3-license"
        assert card.data.license_link.startswith("https://ai.meta.com/") and "Built with DINOv3" in str(card)
    else:
        assert card.data.license == family.card.license and "Built with DINOv3" not in str(card)

    # the card's usage snippet runs as written on the export and gives the patch grid PatchBackbone gives
    (snippet,) = re.findall(r"```python\n(.*?)```", card.text, flags=re.S)
    namespace: dict = {}
    exec(snippet.replace('"org/paka-tiny"', repr(str(export))), namespace)  # our own card's code
    inputs, grid = namespace["inputs"], namespace["patch_grid"]
    if family.input_mode != "naflex":  # (NaFlex: the processor's own resize and padding, compared by shape)
        with torch.no_grad():
            assert torch.allclose(
                grid, PatchBackbone.from_pretrained(export).eval()(inputs["pixel_values"]), atol=1e-5
            )
    assert grid.shape[:2] == (1, 32)

    # scripts/evaluate.py and scripts/visualize.py on the export
    data = tmp_path / "seg"
    _segmentation_folder(data)
    report = evaluate_command.main(
        [
            "--model_name_or_path",
            str(export),
            "--dataset_name",
            "folder",
            "--data_dir",
            str(data),
            "--class_names",
            "left,right",
            "--protocol",
            "all",
            "--input_size",
            f"{2 * patch},{3 * patch}",
            "--epochs",
            "1",
            "--num_clusters",
            "2",
            "--seeds",
            "0",
            "--batch_size",
            "2",
            "--output_file",
            str(tmp_path / "eval.json"),
            "--no_progress",
            "--device",
            "cpu",
        ]
    )
    assert len(report["results"]) == 3 and all(0.0 <= r["value"] <= 100.0 for r in report["results"])
    status = visualize_command.main(
        [
            str(export),
            "--base",
            str(model_dir),
            "--images",
            *map(str, sorted(images.iterdir())[:2]),
            "--resolution",
            str(3 * patch),
            "--n_clusters",
            "3",
        ]
    )
    assert status == 0 and all((export / "pictures" / f"{n}.png").is_file() for n in ("pca", "clusters", "retrieval"))


@pytest.mark.parametrize(
    "name, model_type",
    [("dinov3_vits16_coco", "dinov3_vit"), ("dinov3_vitb16_coco", "dinov3_vit"), ("siglip2_b16_coco", "siglip")],
)
def test_paper_scale_configs_parse_with_patch16_views(name, model_type, tmp_path):
    from paka_hf.commands import train

    config = train.parse_config(
        [
            "--config",
            str(REPO_ROOT / "configs" / f"{name}.yaml"),
            "--output_dir",
            str(tmp_path),
            "--use_cpu",
            "true",
            "--bf16",
            "false",
        ]
    )
    config.check_patch_size(16)  # raises unless both view sizes are multiples of 16
    assert (config.global_size, config.local_size) == (512, 96)
    assert config.max_steps == 46_206  # ceil(25 x 118,287 / 64): 25 epochs of COCO at batch 64
    assert config.drop_path_rate == (0.1 if model_type == "dinov3_vit" else 0.0)
