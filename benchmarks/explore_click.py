#!/usr/bin/env python
"""How long the feature explorer takes per image and per click (CPU), with the real ViT-S/14 at 448 px.

Loads base and adapted models into a :class:`paka_hf.apps.explorer.FeatureExplorer`, encodes one image (both
models' features, computed once and cached), then times 20 clicks at random patches. A click is what the
page runs for it: the similarity maps of both models and their pictures (``FeatureExplorer.click``), plus the
JPEG encoding Gradio does for the pictures it sends back (query, two heat maps and, with a second image, two
correspondence maps). Prints the median and the range. Gradio's HTTP round trip is not included.

    python benchmarks/explore_click.py                              # ViT-S/14 in ../shared, a CamVid image
    python benchmarks/explore_click.py --model out/ --base facebook/dinov2-small --image photo.jpg
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from paka_hf.apps.explorer import PANEL_FORMAT, FeatureExplorer  # noqa: E402

SHARED = REPO.parent / "shared"


def _encode(picture) -> int:
    """What Gradio does with a picture a handler returns: encode it in the panel's format (JPEG)."""
    try:
        from gradio.processing_utils import encode_pil_to_bytes
    except ImportError:  # no Gradio here: Pillow's JPEG with Gradio's (default) settings
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG")
        return buffer.tell()
    return len(encode_pil_to_bytes(picture, PANEL_FORMAT))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_model = SHARED / "models" / "dinov2-small-imgfocus"
    parser.add_argument(
        "--model", default=str(default_model), help="adapted model (default: the ViT-S/14 in ../shared)"
    )
    parser.add_argument("--base", default=str(default_model), help="base model (default: the same ViT-S/14)")
    camvid = sorted((SHARED / "datasets" / "camvid" / "val" / "images").glob("*.jpg"))
    parser.add_argument(
        "--image", default=str(camvid[0]) if camvid else None, help="image (default: first CamVid val image)"
    )
    parser.add_argument(
        "--second_image",
        default=str(camvid[1]) if len(camvid) > 1 else None,
        help="second image for correspondence (default: second CamVid val image; 'none' to skip)",
    )
    parser.add_argument("--resolution", type=int, default=448)
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.image is None:
        parser.error("no --image given and no CamVid images in ../shared")

    import torch

    start = time.perf_counter()
    explorer = FeatureExplorer.from_pretrained(args.model, args.base, resolution=args.resolution)
    print(f"models loaded in {time.perf_counter() - start:.1f} s (torch threads: {torch.get_num_threads()})")
    start = time.perf_counter()
    first = explorer.encode(args.image)
    print(
        f"features of {Path(args.image).name}: {first.grid[0]}x{first.grid[1]} patches at {first.shown.size[0]}x"
        f"{first.shown.size[1]} px, {time.perf_counter() - start:.2f} s for both models "
        f"({' / '.join(f'{s:.2f}' for s in first.seconds)} s)"
    )
    second = None
    if args.second_image and args.second_image.lower() != "none":
        second = explorer.encode(args.second_image)
    calls = explorer.forward_calls

    _encode(first.shown)  # warm-up: the first call imports Gradio's encoder
    rng = np.random.default_rng(args.seed)
    width, height = first.shown.size
    times = []
    for _ in range(args.clicks):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        start = time.perf_counter()
        query, heat, matches, _ = explorer.click(first, x, y, second)
        for picture in [query, *heat, *(matches or [])]:
            _encode(picture)
        times.append(time.perf_counter() - start)
    assert explorer.forward_calls == calls, "a click ran a forward pass: the cache was not used"
    what = "both heat maps + both correspondence maps" if second is not None else "both heat maps"
    print(
        f"click ({what}, encoded as sent), {args.clicks} clicks: median {statistics.median(times) * 1000:.1f} ms, "
        f"min {min(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
