r"""Make the model card's pictures: base vs PaKA-adapted dense features on a few images.

Writes pca.png (PCA of patch features as RGB), clusters.png (k-means overclustering overlays) and
retrieval.png (cosine similarity to a query patch, nearest patches boxed) to OUTPUT_DIR/pictures, where
scripts/push_to_hub.py and paka_hf.hub.render_model_card pick them up.

Example (``paka-visualize`` is the same command):
    python scripts/visualize.py out/ --base facebook/dinov2-with-registers-small \
        --images street1.jpg street2.jpg street3.jpg
"""

from __future__ import annotations

import argparse
from pathlib import Path

from paka_hf.commands import StrictArgumentParser
from paka_hf.commands.cli import run_script
from paka_hf.hub import read_training_config
from paka_hf.utils.errors import ConfigError
from paka_hf.utils.files import PICTURES_DIR, TRAINING_CONFIG_FILE
from paka_hf.utils.imaging import IMAGE_SUFFIXES, is_image_file
from paka_hf.utils.paths import check_local_path


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line of ``visualize.py`` / ``paka-visualize``; description and epilog are this module's
    docstring.

    Args:
        argv: the arguments; ``sys.argv[1:]`` when ``None``.

    Returns:
        The options.

    Raises:
        ConfigError: for an unknown option, a bad value, or neither or both of ``--images`` and ``--image_dir``.
    """
    parser = StrictArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "output_dir", help="training output folder holding the adapted model (config.json, model.safetensors)"
    )
    parser.add_argument(
        "--base", help="base model: Hub id or folder (default: model_name_or_path of OUTPUT_DIR/training_config.yaml)"
    )
    parser.add_argument("--adapted", help="adapted model, if not OUTPUT_DIR itself")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", nargs="+", metavar="IMAGE", help="image files to show (2-4 read best)")
    source.add_argument("--image_dir", help="folder of images; the first --num_images in name order are used")
    parser.add_argument("--num_images", type=int, default=3, help="images taken from --image_dir (default 3)")
    parser.add_argument("--pictures_dir", help=f"where to write the PNGs (default OUTPUT_DIR/{PICTURES_DIR})")
    parser.add_argument(
        "--resolution",
        type=int,
        default=448,
        help="short side in pixels before cropping to patch multiples (default 448)",
    )
    parser.add_argument("--n_clusters", type=int, default=10, help="k-means clusters for clusters.png (default 10)")
    parser.add_argument(
        "--query",
        type=float,
        nargs=2,
        default=(0.6, 0.5),
        metavar=("ROW", "COL"),
        help="query patch of retrieval.png as fractions of the first image's height and width (default 0.6 0.5)",
    )
    parser.add_argument(
        "--top_k", type=int, default=5, help="nearest patches boxed per image in retrieval.png (default 5)"
    )
    parser.add_argument("--seed", type=int, default=0, help="k-means seed (default 0)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Write the PCA, cluster and retrieval pictures of base vs adapted features and print where each went.

    Args:
        argv: the command-line arguments; ``sys.argv[1:]`` when ``None``.

    Returns:
        0 once the pictures are written.

    Raises:
        ConfigError: when no base model is given or named by ``training_config.yaml``, or ``--image_dir`` holds
            no image; and for a bad option.
        MissingPathError: when OUTPUT_DIR, a local ``--base`` or ``--adapted``, an image or ``--image_dir`` is
            missing.
    """
    args = parse_args(argv)
    from paka_hf.apps.pictures import make_pictures

    output_dir = Path(args.output_dir)
    check_local_path(output_dir, "OUTPUT_DIR", always=not args.adapted)
    base = args.base or read_training_config(output_dir).get("model_name_or_path")
    if not base:
        raise ConfigError(f"no --base given and {output_dir / TRAINING_CONFIG_FILE} names no model_name_or_path")
    check_local_path(base, "--base")
    check_local_path(args.adapted, "--adapted")
    if args.images:
        images = args.images
        for image in images:
            check_local_path(image, "--images", always=True)
    else:
        check_local_path(args.image_dir, "--image_dir", always=True)
        images = sorted(p for p in Path(args.image_dir).iterdir() if is_image_file(p))[: args.num_images]
        if not images:
            raise ConfigError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {args.image_dir}")
    paths = make_pictures(
        base,
        args.adapted or output_dir,
        images,
        args.pictures_dir or output_dir / PICTURES_DIR,
        resolution=args.resolution,
        n_clusters=args.n_clusters,
        query=tuple(args.query),
        top_k=args.top_k,
        seed=args.seed,
    )
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def cli_main() -> int:
    """The ``paka-visualize`` console command: :func:`main` with user errors as one line ``error: ...``, exit 2.

    Returns:
        The exit status (:func:`~paka_hf.commands.cli.run_script`).
    """
    return run_script(main)
