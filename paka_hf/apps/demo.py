"""Offline demo assets: a tiny random-init DINOv2-with-registers and a folder of generated images.

``python -m paka_hf.apps.demo DIR`` writes ``DIR/model`` (a ``transformers`` model folder with its
image processor) and ``DIR/images`` (procedural scenes: smooth colour fields with rectangles,
discs and stripes, as JPEG and PNG in several sizes and modes), so that ``configs/demo.yaml``
trains end to end with no network. Deterministic for a given seed; skips what already exists.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

TINY_MODEL = dict(
    patch_size=14,
    hidden_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    mlp_ratio=2,
    image_size=112,
    num_register_tokens=4,
    layerscale_value=1.0,
)


def save_random_model(path: Path, config, seed: int = 0, image_processor: bool = True) -> Path:
    """Write a random-init ``AutoModel`` of ``config`` (weights drawn after ``torch.manual_seed(seed)``) to ``path``.

    Args:
        path: The model folder, created if missing.
        config: A ``transformers`` config of a supported backbone family.
        seed: Seed of torch's global generator before the weights are drawn.
        image_processor: Also save the family's reference image processor (``preprocessor_config.json``).

    Returns:
        ``path``.
    """
    import torch
    from transformers import AutoModel

    from paka_hf.modeling.backbones import load_image_processor

    torch.manual_seed(seed)
    model = AutoModel.from_config(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    if image_processor:
        load_image_processor(str(path)).save_pretrained(path)
    return path


def make_tiny_model(path: Path, seed: int = 0) -> Path:
    """A random-init ``Dinov2WithRegistersModel`` (patch 14, width 64, 3 layers, 4 registers).

    Args:
        path: the folder to write; kept as it is when it already holds a model.
        seed: the seed of the random init.

    Returns:
        ``path``.
    """
    from transformers import Dinov2WithRegistersConfig

    from paka_hf.utils.files import MODEL_CONFIG_FILE, WEIGHTS_FILE

    if (path / MODEL_CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file():
        return path
    return save_random_model(path, Dinov2WithRegistersConfig(**TINY_MODEL), seed)


def synthetic_scene(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth colour field with a few flat-coloured shapes: regions a dense model can separate.

    Args:
        rng: the random generator.
        width: the image width in pixels (at least 9).
        height: the image height in pixels (at least 9).

    Returns:
        The RGB image.
    """
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack(
        [0.5 + 0.4 * np.sin(2 * np.pi * (f * x + g * y) + p) for f, g, p in rng.uniform(0.2, 1.5, (3, 3))], -1
    )
    image = Image.fromarray((base * 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 6))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0 = int(rng.integers(0, width - 8)), int(rng.integers(0, height - 8))
        x1, y1 = x0 + int(rng.integers(8, max(9, width // 2))), y0 + int(rng.integers(8, max(9, height // 2)))
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.rectangle([x0, y0, x1, y1], fill=colour)
        elif kind == 1:
            draw.ellipse([x0, y0, x1, y1], fill=colour)
        else:
            for offset in range(x0, x1, 6):
                draw.line([offset, y0, offset, y1], fill=colour, width=2)
    return image


def make_images(path: Path, count: int = 96, seed: int = 0) -> Path:
    """``count`` generated images, 96–320 px wide, mostly JPEG RGB, some PNG grayscale / RGBA.

    Args:
        path: the folder to write; kept as it is when it already holds ``count`` files.
        count: the number of images.
        seed: the seed of the generator.

    Returns:
        ``path``.
    """
    path.mkdir(parents=True, exist_ok=True)
    if len(list(path.glob("*.*"))) >= count:
        return path
    rng = np.random.default_rng(seed)
    for index in range(count):
        width, height = int(rng.integers(96, 321)), int(rng.integers(72, 241))
        image = synthetic_scene(rng, width, height)
        if index % 8 == 3:
            image.convert("L").save(path / f"scene_{index:04d}.png")
        elif index % 8 == 5:
            image.convert("RGBA").save(path / f"scene_{index:04d}.png")
        else:
            image.save(path / f"scene_{index:04d}.jpg", quality=90)
    return path


def make_demo_assets(root: str | Path, num_images: int = 96, seed: int = 0) -> dict[str, Path]:
    """Write (or keep) the demo's tiny model and images under ``root``.

    Args:
        root: the folder for ``model/`` and ``images/``.
        num_images: the number of images.
        seed: the seed of the model's init and the images.

    Returns:
        ``{"model": path, "images": path}``.
    """
    root = Path(root)
    return {"model": make_tiny_model(root / "model", seed), "images": make_images(root / "images", num_images, seed)}


def main() -> None:
    """The ``paka-demo`` command: parse ``root``, ``--num_images`` and ``--seed``, write the assets and print where."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", nargs="?", default=".demo", help="folder for model/ and images/ (default .demo)")
    parser.add_argument("--num_images", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    paths = make_demo_assets(args.root, args.num_images, args.seed)
    print(f"demo model: {paths['model']}\ndemo images: {paths['images']}")


if __name__ == "__main__":
    main()
