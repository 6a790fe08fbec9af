"""The test kit: tiny models, tiny runs and generated images that the tests and the benchmarks share.

Like ``transformers.testing_utils``, this module sits above every layer of the package and no runtime module
imports it. Nothing here needs a checkout: paths to the repository or to ``../shared`` assets stay with the
tests (``tests/conftest.py`` fixtures). Everything is deterministic for a given seed, small enough for
forwards of milliseconds on a CPU, and random-init (nothing is downloaded).

    from paka_hf.testing import tiny_dinov2_config, tiny_run_config, write_tiny_run_assets

    write_tiny_run_assets(tmp_path, (48, 64))  # tmp_path/model, tmp_path/images
    PaKATrainer(args=tiny_run_config(tmp_path / "out", tmp_path / "model", tmp_path / "images")).train()
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
from transformers import TrainerCallback

from paka_hf.apps.demo import save_random_model, synthetic_scene

#: Command-line flags of a 2-step training run of a tiny model on CPU (the commands' tests add model, data,
#: output): 56-pixel global and 28-pixel local views, a 32/16 projection head, no workers, no reporting.
TINY_RUN = (
    "--max_steps 2 --save_steps 1 --per_device_train_batch_size 2 --global_size 56 --local_size 28 --n_local 2 "
    "--head_hidden_dim 32 --head_out_dim 16 --dataloader_num_workers 0 --shuffle_buffer_size 4 --use_cpu true "
    "--report_to none --disable_tqdm true --logging_steps 1"
).split()

#: Width, depth and heads of every tiny backbone of :func:`tiny_family_config` but the DINOv2 ones.
TINY_ARCHITECTURE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)

#: ViT-S/14 (DINOv2's small model: width 384, 12 layers, 6 heads, patch 14), the shape the CPU benchmarks time.
VIT_S14 = dict(
    hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=14, image_size=518
)


#: :func:`tiny_run_config`'s fields beside the paths: 6 steps of 2 images, 56/28-pixel views, a checkpoint every
#: 3 steps.
TINY_RUN_FIELDS = dict(
    max_steps=6,
    per_device_train_batch_size=2,
    global_size=56,
    local_size=28,
    n_local=2,
    head_hidden_dim=32,
    head_out_dim=16,
    learning_rate=1e-3,
    head_learning_rate=1e-2,
    teacher_momentum=0.9,
    drop_path_rate=0.1,
    dataloader_num_workers=0,
    shuffle_buffer_size=8,
    logging_steps=2,
    save_steps=3,
    save_total_limit=3,
    use_cpu=True,
    disable_tqdm=True,
    seed=0,
)


def tiny_run_config(output_dir, model_dir, images, **overrides):
    """A :class:`~paka_hf.PaKAConfig` for a few CPU steps of a tiny model on a folder of images.

    Args:
        output_dir: The run's output folder.
        model_dir: The backbone (a folder such as :func:`write_tiny_run_assets` writes).
        images: The folder of training images.
        **overrides: Fields that replace :data:`TINY_RUN_FIELDS`.

    Returns:
        The config.
    """
    from paka_hf import PaKAConfig

    values = dict(output_dir=str(output_dir), model_name_or_path=str(model_dir), dataset_name=str(images))
    return PaKAConfig(**{**values, **TINY_RUN_FIELDS, **overrides})


def tiny_dinov2_config(registers: int = 0, patch_size: int = 14, hidden_size: int = 32, layers: int = 2):
    """A DINOv2 (or DINOv2-with-registers) config small enough for millisecond forwards on CPU.

    Args:
        registers: Register tokens; 0 gives a plain ``Dinov2Config``.
        patch_size: Patch side in pixels; the config's ``image_size`` is 4 patches.
        hidden_size: Token width (2 heads, MLP ratio 2).
        layers: Transformer blocks.

    Returns:
        A ``Dinov2Config`` or ``Dinov2WithRegistersConfig``.
    """
    common = dict(
        patch_size=patch_size,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=2,
        mlp_ratio=2,
        image_size=patch_size * 4,
    )
    if registers:
        from transformers import Dinov2WithRegistersConfig

        return Dinov2WithRegistersConfig(num_register_tokens=registers, **common)
    from transformers import Dinov2Config

    return Dinov2Config(**common)


def tiny_family_config(variant: str):
    """A tiny config of each checkpoint kind the backbone registry supports (``paka_hf.modeling.backbones``).

    Vision towers have width 32 and 2 layers (patch 16, 64-pixel images but DINOv2's patch 14); full CLIP and
    SigLIP checkpoints hold a tiny text tower too, as the released ones do.

    Args:
        variant: ``dinov2``, ``dinov2_with_registers`` (4 registers), ``dinov3_vit``, ``dinov3_vit_gated``,
            ``siglip_vision_model``, ``siglip2_vision_model``, ``clip_vision_model``, ``clip``, ``siglip``
            or ``siglip2``.

    Returns:
        The ``transformers`` config.

    Raises:
        KeyError: For any other variant.
    """
    from transformers import (
        CLIPConfig,
        CLIPVisionConfig,
        DINOv3ViTConfig,
        Siglip2Config,
        Siglip2VisionConfig,
        SiglipConfig,
        SiglipVisionConfig,
    )

    vision16 = dict(TINY_ARCHITECTURE, patch_size=16, image_size=64)
    if variant == "dinov2":
        return tiny_dinov2_config()
    if variant == "dinov2_with_registers":
        return tiny_dinov2_config(registers=4)
    if variant in ("dinov3_vit", "dinov3_vit_gated"):
        return DINOv3ViTConfig(**vision16, num_register_tokens=4, use_gated_mlp=variant.endswith("gated"))
    if variant == "siglip_vision_model":
        return SiglipVisionConfig(**vision16)
    if variant == "siglip2_vision_model":
        return Siglip2VisionConfig(**TINY_ARCHITECTURE, patch_size=16, num_patches=16)
    if variant == "clip_vision_model":
        return CLIPVisionConfig(**vision16)
    text = dict(TINY_ARCHITECTURE, vocab_size=64, max_position_embeddings=16)
    if variant == "clip":
        return CLIPConfig(vision_config=vision16, text_config=text, projection_dim=16)
    if variant == "siglip":
        return SiglipConfig(vision_config=vision16, text_config=text)
    if variant == "siglip2":
        return Siglip2Config(vision_config=dict(TINY_ARCHITECTURE, patch_size=16, num_patches=16), text_config=text)
    raise KeyError(variant)


def vit_s14_config(**overrides):
    """A ``Dinov2Config`` of ViT-S/14's shape (:data:`VIT_S14`), random weights once built.

    Args:
        **overrides: Fields that replace or add to :data:`VIT_S14` (e.g. ``drop_path_rate``).

    Returns:
        The config.
    """
    from transformers import Dinov2Config

    return Dinov2Config(**{**VIT_S14, **overrides})


class StopAt(TrainerCallback):
    """Stops training after optimizer step ``step``: an interrupted run, to resume.

    Args:
        step: The last optimizer step the run takes.
    """

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        """Ask the trainer to stop once ``state.global_step`` reaches :attr:`step`.

        Args:
            args: The run's training arguments (unused).
            state: The trainer state.
            control: The trainer control; its ``should_training_stop`` is set.
            **kwargs: The other objects ``Trainer`` passes to callbacks (unused).
        """
        if state.global_step == self.step:
            control.should_training_stop = True


def random_image(rng: np.random.Generator, height: int, width: int):
    """Uniform RGB noise: a ``PIL.Image`` of ``height`` × ``width`` with no structure a model could learn.

    Args:
        rng: The generator drawn from.
        height: Rows.
        width: Columns.

    Returns:
        The image (mode RGB).
    """
    from PIL import Image

    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def batch_of_views(n_images: int = 2, global_size: int = 56, local_size: int = 28, seed: int = 0) -> dict:
    """A collated batch of GLIM views of noise images, as the data workers ship it to the model.

    Images are ``(60 + 10 i) × 80`` pixels; each gets 2 global and 4 local views with random flips, normalized
    with the tiny DINOv2 backbones' reference image processor (:func:`tiny_dinov2_config`, patch 14).

    Args:
        n_images: Images in the batch.
        global_size: Side of the global views in pixels.
        local_size: Side of the local views in pixels.
        seed: Seed of the images and of the view draws.

    Returns:
        ``paka_hf.views.glim.collate_views`` of the views: ``global_views`` ``(n_images, 2, 3, G, G)``,
        ``local_views`` ``(n_images, 4, 3, L, L)``, boxes, pair indices and flips.
    """
    import torch

    from paka_hf.modeling.backbones import default_image_processor
    from paka_hf.views.glim import GlimTransform, collate_views

    rng = np.random.default_rng(seed)
    reference = default_image_processor("dinov2")
    transform = GlimTransform(
        global_size,
        local_size,
        n_local=4,
        flip=True,
        patch_size=14,
        mean=reference.image_mean,
        std=reference.image_std,
    )
    images = [random_image(rng, 60 + 10 * i, 80) for i in range(n_images)]
    generator = torch.Generator().manual_seed(seed)
    return collate_views([transform(image, generator) for image in images])


def write_random_images(
    folder: Path,
    count: int,
    image_hw: tuple[int, int] | None = None,
    seed: int = 0,
    *,
    side_range: tuple[int, int] | None = None,
) -> Path:
    """``count`` noise JPEGs (:func:`random_image`), all of one size or each of its own, named ``0.jpg``,
    ``1.jpg``, ... with the numbers zero-padded to one width (``00.jpg`` to ``15.jpg`` for 16), so that names
    sort as numbers.

    Args:
        folder: Created if missing.
        count: Number of images.
        image_hw: ``(height, width)`` of every image.
        seed: Seed of the generator.
        side_range: ``(low, high)``: instead of ``image_hw``, each image's height and then width are drawn from
            ``[low, high)`` by the same generator, before its pixels: a folder of mixed sizes, as real ones are.

    Returns:
        ``folder``.

    Raises:
        ValueError: neither or both of ``image_hw`` and ``side_range`` given.
    """
    if (image_hw is None) == (side_range is None):
        raise ValueError("write_random_images takes one of image_hw (one size) and side_range (mixed sizes)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    digits = len(str(max(count - 1, 0)))
    for i in range(count):
        if side_range is not None:
            image_hw = int(rng.integers(*side_range)), int(rng.integers(*side_range))
        random_image(rng, *image_hw).save(folder / f"{i:0{digits}d}.jpg")
    return folder


def synthetic_jpegs(path: Path, count: int, width: int = 640, height: int = 480, seed: int = 0) -> Path:
    """``count`` JPEG scenes of one size (640 × 480 like COCO's by default), the demo's generated scenes.

    Args:
        path: Folder, created if missing; the files are ``0000.jpg``, ``0001.jpg``, ...
        count: Number of images.
        width: Width in pixels.
        height: Height in pixels.
        seed: Seed of the generator.

    Returns:
        ``path``.
    """
    rng = np.random.default_rng(seed)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        synthetic_scene(rng, width, height).save(path / f"{index:04d}.jpg", quality=90)
    return path


def write_tiny_run_assets(root: Path, image_hw: tuple[int, int], count: int = 8, registers: int = 2) -> None:
    """What a short training run needs: ``root/model``, a tiny random-init DINOv2(-with-registers) (seed 0,
    no image processor: the family's reference one is used), and ``root/images``, ``count`` noise JPEGs.

    Args:
        root: An existing folder.
        image_hw: ``(height, width)`` of the images.
        count: Number of images.
        registers: Register tokens of the model (:func:`tiny_dinov2_config`).
    """
    save_random_model(Path(root) / "model", tiny_dinov2_config(registers=registers), seed=0, image_processor=False)
    write_random_images(Path(root) / "images", count, image_hw, seed=0)


def load_file_module(path: Path, name: str) -> ModuleType:
    """Execute a Python file that is not part of a package (a benchmark script) as a module.

    Args:
        path: The ``.py`` file.
        name: The module's name (it is not put in ``sys.modules``).

    Returns:
        The module.
    """
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
