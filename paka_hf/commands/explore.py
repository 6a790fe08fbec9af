"""``paka-explore`` (and ``scripts/explore.py``): serve the feature explorer of :mod:`paka_hf.apps.explorer`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from paka_hf.apps.explorer import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_RESOLUTION,
    build_app,
    default_base,
    gallery_images,
    require_gradio,
)
from paka_hf.commands import StrictArgumentParser
from paka_hf.commands.cli import configure_logging, run_script
from paka_hf.utils.errors import ConfigError


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line of ``paka-explore``.

    Args:
        argv: the arguments; ``sys.argv[1:]`` when ``None``.

    Returns:
        The options: ``model``, ``base``, ``images``, ``resolution``, ``max_pixels``, ``host``, ``port``.

    Raises:
        ConfigError: for an unknown option (naming the closest one) or a bad value.
    """
    parser = StrictArgumentParser(  # no abbreviated options; a bad one is one line naming the closest
        prog="paka-explore",
        description="Explore base vs PaKA-adapted dense features in the browser (Gradio, on localhost).",
        epilog="Example: paka-explore out/ --base facebook/dinov2-with-registers-small --images photos/",
    )
    parser.add_argument("model", metavar="MODEL", help="adapted model: Hub id or folder (a PaKA output folder)")
    parser.add_argument(
        "--base",
        metavar="BASE",
        help="base model: Hub id or folder (default: model_name_or_path of MODEL's training_config.yaml)",
    )
    parser.add_argument("--images", metavar="DIR", help="folder of images shown as a gallery")
    parser.add_argument(
        "--resolution",
        type=int,
        default=DEFAULT_RESOLUTION,
        help=f"short side in pixels before cropping to patch multiples (default {DEFAULT_RESOLUTION})",
    )
    parser.add_argument(
        "--max_pixels",
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"largest input image in pixels (default {DEFAULT_MAX_PIXELS:,})",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    parser.add_argument("--port", type=int, default=None, help="port (default: Gradio's, 7860 or the next free one)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """``paka-explore``: build the app and serve it until interrupted. User errors raise
    :class:`~paka_hf.utils.errors.PaKAUserError` (the scripts print them as ``error: ...``, exit status 2).

    Args:
        argv: the command-line arguments; ``sys.argv[1:]`` when ``None``.

    Returns:
        0 once the server stops.

    Raises:
        ConfigError: when no ``--base`` is given and MODEL's ``training_config.yaml`` names no base model, or for
            a bad option.
        PaKAUserError: when Gradio is not installed, or the models or the images folder cannot be read (raised by
            :mod:`paka_hf.apps.explorer`).
    """
    args = parse_args(argv)
    configure_logging()
    require_gradio()
    images = gallery_images(args.images) if args.images else []
    base = args.base or default_base(args.model)
    if not base:
        raise ConfigError(
            f"no --base given and {args.model!r} names no base model (model_name_or_path in "
            "training_config.yaml): pass --base HUB_ID_OR_FOLDER"
        )
    demo = build_app(args.model, base, images=images, resolution=args.resolution, max_pixels=args.max_pixels)
    demo.launch(server_name=args.host, server_port=args.port, show_error=True)
    return 0


def cli_main() -> int:
    """The ``paka-explore`` console command: :func:`main` with user errors as one line ``error: ...``, exit 2.

    Returns:
        The exit status (:func:`~paka_hf.commands.cli.run_script`).
    """
    return run_script(main)
