r"""Evaluation of supported ViT checkpoints (DINOv2, DINOv2R, DINOv3, SigLIP / SigLIP 2, CLIP): linear probe, overclustering, Hummingbird, known-warp correspondence, SPair-71k, depth.

Examples::

    python scripts/evaluate.py --model_name_or_path facebook/dinov2-small --dataset_name voc \
        --data_dir data/VOCdevkit --protocol linear --output_file results.json
    python scripts/evaluate.py --model_name_or_path out/ --dataset_name folder --data_dir data/my_set \
        --class_names sky,road,car --ignore_index 255 --protocol overcluster --num_clusters 3,100
    python scripts/evaluate.py --model_name_or_path out/ --dataset_name camvid --data_dir data/camvid \
        --protocol all --input_size 224,308 --max_images 50     # a quick CPU run
    python scripts/evaluate.py --model_name_or_path out/ --protocol warp,spair,depth --warp_images photos/ \
        --spair_dir data/SPair-71k --depth_dir data/nyu_depth_v2_labeled.mat --depth_splits_file data/splits.mat
    python scripts/evaluate.py --model_name_or_path facebook/dinov2-small out/ --dataset_name camvid \
        --data_dir data/camvid --protocol all,warp --output_file cmp/results.json   # two models, compared

Protocols (``--protocol``, comma-separated): ``linear``, ``overcluster`` and ``hummingbird`` on the labelled
segmentation benchmark ``--dataset_name`` (``all`` means these three); ``warp`` (known-warp correspondence) on
``--warp_images DIR``, or without it on the images of ``--dataset_name``'s ``--val_split``; ``spair`` on
``--spair_dir`` (the SPair-71k archive); ``depth`` (linear depth probe) on ``--depth_dir``: NYUv2's
``nyu_depth_v2_labeled.mat`` with ``--depth_splits_file splits.mat``, or a folder holding
``{train,test}/images`` and ``{train,test}/depth`` (``--depth_train_split`` / ``--depth_test_split``). A protocol
whose data is not given stops the run with one line naming the flag.

Several models (``--model_name_or_path BASE ADAPTED ...``): each is evaluated with the same protocols and settings
on data loaded once, its features in its own cache. ``--output_file out/results.json`` then writes one file per
model, ``out/results.<model slug>.json`` (:func:`per_model_files`: the model's id or path with every character
other than letters, digits, ``.``, ``_`` and ``-`` made ``_``; a slug shared by two models gets ``-<position>``),
and ``out/results.comparison.md``, the side-by-side table (:func:`~paka_hf.evaluation.compare.comparison_table`:
each metric, each model, and each model's difference to the first with ``better`` / ``worse``), which is also
printed. One model writes ``--output_file`` itself, as before.

A user error (missing folder, bad mask, missing class names, a protocol without its data) prints one line
``error: ...`` and exits with status 2; ``--debug`` shows its traceback.

Defaults are the protocols' settings (docs/EVALUATION.md): every option but the model and data ones is a field of
``EvaluationSettings``, ``LinearProbeConfig``, ``OverclusterConfig``, ``HummingbirdConfig``,
``CorrespondenceConfig`` (warp), ``SPairConfig`` or ``DepthProbeConfig`` (``paka_hf.evaluation``) with that
field's default, so the command and the library cannot drift apart. Where a protocol's field shares its name with
another's, the flag carries the protocol's prefix (``--linear_batch_size``, ``--hummingbird_eval_size``,
``--warp_input_size``, ``--spair_input_size``, ``--depth_epochs``...; ``--knn_backend`` is Hummingbird's
``backend``: ``auto``, ``torch``, ``faiss``, or the approximate ``faiss_ivf`` with ``--ivf_nlist`` /
``--ivf_nprobe``); ``--seed`` and ``--device`` are the run's and every protocol's, ``--batch_size`` is also the
warp's and SPair's, ``--eval_size`` is the linear probe's and overclustering's. ``--published_conventions``
reproduces the published ADE20K-over-151-classes and Hummingbird std-0.255 conventions. ``paka-evaluate`` is the
same command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from paka_hf.commands import StrictHfArgumentParser
from paka_hf.commands.cli import configure_logging, run_script
from paka_hf.evaluation import (
    BENCHMARKS,
    PROTOCOLS,
    SEGMENTATION_PROTOCOLS,
    CorrespondenceConfig,
    DepthProbeConfig,
    EvaluationReport,
    EvaluationSettings,
    HubSpec,
    HummingbirdConfig,
    LinearProbeConfig,
    OverclusterConfig,
    SPairConfig,
    comparison_table,
    evaluate_models,
    read_class_names,
    run_evaluation,
)
from paka_hf.evaluation.compare import value_text
from paka_hf.evaluation.depth import CROPS
from paka_hf.evaluation.hummingbird import MEMORY_SAMPLING
from paka_hf.evaluation.knn import KNN_BACKENDS
from paka_hf.evaluation.spair import LAYOUTS, RESIZE_MODES, SAMPLING_MODES, SPLITS
from paka_hf.utils.host_memory import keep_freed_host_memory
from paka_hf.utils.paths import check_local_path


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from err


def _pair(text: str) -> tuple[float, float]:
    values = _floats(text)
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected two comma-separated numbers (low,high), got {text!r}")
    return (values[0], values[1])


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _size(text: str) -> int | tuple[int, int]:
    values = _ints(text)
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return (values[0], values[1])
    raise argparse.ArgumentTypeError(f"--input_size takes N or H,W, got {text!r}")


@dataclass
class EvaluationArguments:
    """The model and the data: what ``run_evaluation`` takes besides its ``EvaluationSettings``."""

    model_name_or_path: list[str] = field(
        metadata={
            "help": "Hub id or local directory of a supported checkpoint (DINOv2, DINOv3, SigLIP, CLIP...); several "
            "are evaluated in turn and compared with the first"
        }
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": f"segmentation benchmark: one of {', '.join(BENCHMARKS)}; needed by the segmentation protocols "
            "(and by warp without --warp_images)"
        },
    )
    data_dir: str | None = field(default=None, metadata={"help": "on-disk dataset root; without it the Hub copy"})
    protocol: str = field(
        default="linear",
        metadata={
            "help": f"{', '.join(PROTOCOLS)}, or a comma-separated list; 'all' is the segmentation protocols "
            f"{','.join(SEGMENTATION_PROTOCOLS)} (their features are shared)"
        },
    )
    output_file: str = field(
        default="results.json",
        metadata={
            "help": "results JSON (see docs/EVALUATION.md); with several models OUT.<model slug>.json each and "
            "OUT.comparison.md (OUT: this path without .json)"
        },
    )
    train_split: str = "train"
    val_split: str = "val"
    class_names: str | None = field(
        default=None, metadata={"help": "folder datasets: 'a,b,c' or a file with one name per line"}
    )
    ignore_index: int | None = field(default=None, metadata={"help": "folder datasets: mask value to ignore (255)"})
    on_missing: Literal["raise", "skip"] = field(default="raise", metadata={"help": "image without mask"})
    on_size_mismatch: Literal["raise", "resize"] = field(default="raise", metadata={"help": "mask size != image size"})
    on_unknown_label: Literal["raise", "ignore"] = field(default="raise", metadata={"help": "unexpected mask values"})
    mask_dir: str | None = field(
        default=None,
        metadata={
            "help": "voc: mask folder inside VOC2012 (SegmentationClassAug with --train_split trainaug); "
            "coco-*: mask folder relative to --data_dir"
        },
    )
    hub_dataset_id: str | None = field(default=None, metadata={"help": "Hub dataset id (overrides the default)"})
    hub_config: str | None = None
    image_column: str = "image"
    mask_column: str = "annotation"
    warp_images: str | None = field(
        default=None, metadata={"help": "warp: a folder of images (default: the images of --dataset_name's val split)"}
    )
    spair_dir: str | None = field(
        default=None, metadata={"help": "spair: the SPair-71k archive (the SPair-71k folder or the folder holding it)"}
    )
    depth_dir: str | None = field(
        default=None,
        metadata={
            "help": "depth: NYUv2's nyu_depth_v2_labeled.mat (with --depth_splits_file), or a folder holding "
            "<split>/images and <split>/depth (16-bit PNG millimetres or .npy metres)"
        },
    )
    depth_splits_file: str | None = field(
        default=None, metadata={"help": "depth on NYUv2's .mat: its splits.mat (trainNdxs, testNdxs)"}
    )
    depth_key: Literal["rawDepths", "depths"] = field(
        default="rawDepths",
        metadata={"help": "depth on NYUv2's .mat: the sensor's rawDepths or the in-painted depths"},
    )
    depth_train_split: str = field(
        default="train", metadata={"help": "depth: the training split (NYUv2: train or all; a folder: its sub-folder)"}
    )
    depth_test_split: str = field(
        default="test", metadata={"help": "depth: the test split (NYUv2: test or all; a folder: its sub-folder)"}
    )


# The options generated from the library's dataclasses. A protocol field whose name is taken on the command
# line gets the flag named here; a field in SHARED takes its value from another flag (one --seed for the run
# and its protocols, one --eval_size for the linear probe and overclustering); a field in FROM_RUNNER is left
# at its default, which run_evaluation fills in (the protocols' device is the run's --device).
SECTIONS = {
    "settings": EvaluationSettings,
    "linear": LinearProbeConfig,
    "overcluster": OverclusterConfig,
    "hummingbird": HummingbirdConfig,
    "warp": CorrespondenceConfig,
    "spair": SPairConfig,
    "depth": DepthProbeConfig,
}
FLAG_NAMES = {
    "linear": {"batch_size": "linear_batch_size"},
    "hummingbird": {"eval_size": "hummingbird_eval_size", "backend": "knn_backend"},
    "warp": {"input_size": "warp_input_size", "thresholds": "warp_thresholds", "max_images": "warp_max_images"},
    "spair": {
        "split": "spair_split",
        "layout": "spair_layout",
        "input_size": "spair_input_size",
        "resize": "spair_resize",
        "alpha": "spair_alpha",
        "alphas": "spair_alphas",
        "categories": "spair_categories",
    },
    "depth": {
        "input_size": "depth_input_size",
        "crop": "depth_crop",
        "epochs": "depth_epochs",
        "batch_size": "depth_batch_size",
        "lr": "depth_lr",
        "betas": "depth_betas",
        "weight_decay": "depth_weight_decay",
    },
}
SHARED = {
    "linear": {"seed": "seed"},
    "overcluster": {"eval_size": "eval_size"},
    "hummingbird": {"seed": "seed"},
    "warp": {"seed": "seed", "batch_size": "batch_size"},
    "spair": {"batch_size": "batch_size"},
    "depth": {"seed": "seed"},
}
FROM_RUNNER = {
    "settings": ("linear", "overcluster", "hummingbird", "warp", "spair", "depth"),
    "linear": ("device",),
    "hummingbird": ("device",),
    "depth": ("device",),
}
CONVERTERS = {
    "input_size": _size,
    "crop_scale": _floats,
    "num_clusters": _ints,
    "seeds": _ints,
    "warp_input_size": _size,
    "warp_thresholds": _floats,
    "crop_fraction": _pair,
    "spair_input_size": _size,
    "spair_alphas": _floats,
    "spair_categories": _names,
    "depth_input_size": _size,
    "depth_betas": _pair,
}
CHOICES = {
    "knn_backend": KNN_BACKENDS,
    "memory_sampling": MEMORY_SAMPLING,
    "spair_split": tuple(SPLITS),
    "spair_layout": LAYOUTS,
    "spair_resize": RESIZE_MODES,
    "source_sampling": SAMPLING_MODES,
    "depth_crop": CROPS,
}
HELP = {
    "input_size": "N or H,W (multiples of the patch size); default 448 (linear, overcluster) / 504 (hummingbird)",
    "crop_scale": "min,max area of the augmented training crops",
    "batch_size": "images per backbone forward",
    "max_images": "use only the first N images of each split",
    "max_train_images": "override --max_images for the train split",
    "augment_passes": "augmented passes over train (linear views and Hummingbird memory passes); 0 = none",
    "device": "where features, the linear head and the k-NN search run (default: cuda if available, else cpu)",
    "published_conventions": "ADE20K over 151 classes and Hummingbird std 0.255, as in published tables",
    "seed": "the run's seed, also the linear probe's and Hummingbird's",
    "progress": "progress bars (--no_progress: none)",
    "eval_size": "linear and overclustering evaluation resolution",
    "num_clusters": "comma-separated K list, default '#classes,100,300,500'",
    "seeds": "comma-separated k-means seeds",
    "max_fit_patches": "fit k-means on a random subset of tokens",
    "memory_size": "memory-bank size, memory_size // (images x passes) patches per training map; default: every "
    "labelled patch",
    "memory_sampling": "patches a bounded bank keeps per map: rare_class (the reference evaluator's: patches of the "
    "map's rarer classes first) or uniform",
    "knn_backend": "Hummingbird k-NN: exact torch, faiss or torch_bf16 (bf16 scan with a proven error bound, fp32 "
    "re-scoring; CPU only) (auto: torch_bf16 on a CPU with AMX, else faiss if installed and on CPU, else torch), "
    "or approximate faiss_ivf (IndexIVFFlat; recall@k recorded)",
    "ivf_nlist": "faiss_ivf: inverted lists (k-means cells)",
    "ivf_nprobe": "faiss_ivf: lists searched per query",
    "recall_sample": "faiss_ivf: query patches on which recall@k against exact search is measured (0: none)",
    "hummingbird_eval_size": "default: the input resolution",
    "feature_cache_dir": "keep the segmentation features on disk across runs (one sub-folder per model's weights); "
    "default: in memory, for this run",
    "warp_input_size": "N or H,W of both views (multiples of the patch size)",
    "warp_thresholds": "comma-separated PCK thresholds in patches (at least 0.71 for a perfect matcher to reach 100)",
    "warp_max_images": "the first N images only; default: --max_images",
    "crop_fraction": "low,high side fraction of the warp's crop (zoom 1/fraction)",
    "flip_p": "probability of a left-right flip of the warped view",
    "max_rotation": "warp rotations in [-max, max] degrees (at most 45)",
    "perspective": "corner shift of the warp's homography, fraction of the side (at most 0.25)",
    "brightness": "warped view's brightness jitter (0: none)",
    "contrast": "warped view's contrast jitter (0: none)",
    "saturation": "warped view's saturation jitter (0: none)",
    "hue": "warped view's hue jitter in [0, 0.5] (0: none)",
    "border_patches": "evaluate a patch when its true match is at least this many patches inside the warped view",
    "spair_split": "SPair-71k split (test: the benchmark's 12,234 pairs)",
    "spair_layout": "SPair-71k pair lists of Layout/<layout>/",
    "spair_input_size": "N or H,W of the views (multiples of the patch size)",
    "spair_resize": "pad (aspect kept, white padding; Probe3D) or stretch",
    "spair_alpha": "the headline alpha of PCK@alpha (bbox)",
    "spair_alphas": "comma-separated alphas reported in the settings (the headline one added)",
    "source_sampling": "SPair source feature at a keypoint: bilinear between patch centres, or the nearest patch",
    "upsample": "SPair: upsample the target grid by this integer factor before the search",
    "spair_categories": "SPair: comma-separated categories only; default: all",
    "max_pairs_per_category": "SPair: the first N pairs of each category only",
    "max_pairs": "SPair: the first N pairs only",
    "depth_input_size": "N or H,W (multiples of the patch size); default: 480x640 rounded to patch multiples",
    "depth_crop": "eigen (NYUv2's evaluation crop) or none",
    "depth_epochs": "depth probe's passes over the training images",
    "depth_batch_size": "depth probe's images per training step",
    "depth_lr": "depth probe's AdamW peak learning rate",
    "depth_betas": "depth probe's AdamW betas (b1,b2)",
    "depth_weight_decay": "depth probe's AdamW weight decay",
    "use_cls_token": "depth: concatenate the CLS token to every patch token",
    "num_bins": "depth bins (1: a regression)",
    "min_depth": "smallest depth predicted and scored, metres",
    "max_depth": "largest depth predicted and scored, metres",
    "warmup_fraction": "depth probe: fraction of the steps of linear warm-up (cosine to 0 after)",
    "grad_clip": "depth probe: gradient norm limit",
    "variance_weight": "depth probe: SigLoss's lambda (0.85)",
    "sigloss_warmup_steps": "depth probe: first steps on SigLoss's mean term only",
}


def flag_name(section: str, name: str) -> str | None:
    """The command-line flag that sets field ``name`` of ``section``'s dataclass (``None``: not on the command
    line).

    Args:
        section: a key of ``SECTIONS`` (``settings``, ``linear``, ...).
        name: a field of that section's dataclass.

    Returns:
        The flag's name without ``--``, or ``None`` for a field the runner fills in itself.
    """
    if name in FROM_RUNNER.get(section, ()):
        return None
    return SHARED.get(section, {}).get(name) or FLAG_NAMES.get(section, {}).get(name, name)


def _flags_dataclass(section: str) -> type:
    """A dataclass of the options of ``section``'s dataclass: its fields under their flag names, with its
    defaults (so that ``HfArgumentParser`` reads them from the library)."""
    source = SECTIONS[section]
    hints = typing.get_type_hints(source)
    specs = []
    for source_field in dataclasses.fields(source):
        flag = flag_name(section, source_field.name)
        if flag is None or source_field.name in SHARED.get(section, {}):
            continue
        if source_field.default is not dataclasses.MISSING:
            default = source_field.default
        else:
            default = source_field.default_factory()
        metadata = {"help": HELP.get(flag, f"{source.__name__}.{source_field.name}")}
        if flag in CHOICES:
            metadata["choices"] = CHOICES[flag]
        specs.append((flag, CONVERTERS.get(flag, hints[source_field.name]), field(default=default, metadata=metadata)))
    flags = dataclasses.make_dataclass(f"{source.__name__}Options", specs)
    flags._argument_group_name = f"{section} ({source.__name__})"  # a group of --help per dataclass
    return flags


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build_parser() -> StrictHfArgumentParser:
    """One ``HfArgumentParser`` over :class:`EvaluationArguments` and the library's settings dataclasses.

    Returns:
        The strict parser, its ``--device`` defaulting to ``cuda`` when a GPU is visible, else ``cpu``.
    """
    parser = StrictHfArgumentParser(
        [EvaluationArguments, *(_flags_dataclass(section) for section in SECTIONS)],
        prog="evaluate.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(device=_default_device())  # the one default that differs from EvaluationSettings'
    return parser


def evaluation_settings(args: argparse.Namespace) -> EvaluationSettings:
    """The :class:`EvaluationSettings` (with its protocols' configs) that the parsed options describe.

    Args:
        args: the namespace :func:`build_parser` returned.

    Returns:
        The settings, each protocol's config built from its flags.
    """

    def build(section: str, **nested: Any):
        values = {}
        for source_field in dataclasses.fields(SECTIONS[section]):
            flag = flag_name(section, source_field.name)
            if flag is not None:
                values[source_field.name] = getattr(args, flag)
        return SECTIONS[section](**values, **nested)

    return build("settings", **{section: build(section) for section in FROM_RUNNER["settings"]})


def parse_args(argv: list[str] | None = None) -> tuple[EvaluationArguments, EvaluationSettings]:
    """Parse the command line of ``evaluate.py``.

    Args:
        argv: the arguments; ``sys.argv[1:]`` when ``None``.

    Returns:
        ``(arguments, settings)``: what to evaluate on which data, and how.

    Raises:
        ConfigError: for an unknown option or a value the parser refuses.
    """
    args = build_parser().parse_args(argv)
    names = {f.name for f in dataclasses.fields(EvaluationArguments)}
    return EvaluationArguments(**{name: getattr(args, name) for name in names}), evaluation_settings(args)


def model_slug(model: str | os.PathLike) -> str:
    """The part of a results file's name that names ``model``: its id or path with every run of characters other
    than letters, digits, ``.``, ``_`` and ``-`` made one ``_``, leading and trailing ``.`` and ``_`` dropped (no
    hidden files), its last :data:`SLUG_LENGTH` characters kept.

    Args:
        model: a Hub id or a local path, as given.

    Returns:
        e.g. ``facebook_dinov2-small`` for ``facebook/dinov2-small``, ``out_my_paka`` for ``./out/my_paka/``;
        ``model`` for a name with none of those characters.
    """
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", os.fspath(model)).strip("._")
    return slug[-SLUG_LENGTH:].strip("._") or "model"


#: The longest model slug (the end of the path is kept: it names the model, the start names folders).
SLUG_LENGTH = 100


def per_model_files(output_file: str, models: Sequence[str]) -> tuple[list[str], str]:
    """Where a run of several models writes: ``<base>.<slug>.json`` per model and ``<base>.comparison.md``.

    ``<base>`` is ``output_file`` without its ``.json`` suffix; ``<slug>`` is :func:`model_slug`, and when two
    models share a slug (``a/b`` and ``a_b``, or one model given twice) each of them gets ``-<position>``
    (1-based, in the order of ``--model_name_or_path``), so no file overwrites another.

    Args:
        output_file: ``--output_file``.
        models: the models, in order.

    Returns:
        ``(one results file per model, the comparison file)``.
    """
    base = output_file[: -len(".json")] if output_file.lower().endswith(".json") else output_file
    slugs = [model_slug(model) for model in models]
    unique = [slug if slugs.count(slug) == 1 else f"{slug}-{position}" for position, slug in enumerate(slugs, 1)]
    return [f"{base}.{slug}.json" for slug in unique], f"{base}.comparison.md"


def _protocols(text: str) -> list[str]:
    """``--protocol``: a comma-separated list, ``all`` standing for the segmentation protocols."""
    protocols: list[str] = []
    for name in (p.strip() for p in text.split(",")):
        protocols.extend(SEGMENTATION_PROTOCOLS if name == "all" else [name])
    return protocols


def _print_report(report: EvaluationReport, timings: dict[str, float], path: str) -> None:
    for result in report.results:
        print(f"{result.dataset_name} {result.split} {result.metric_name}: {value_text(result)}")
    print("wall seconds:", json.dumps({k: round(v, 1) for k, v in timings.items()}))
    print(f"results written to {path}")


def main(argv: list[str] | None = None) -> dict:
    """Evaluate, write ``--output_file`` (or one file per model and the comparison), print one line per result.

    Args:
        argv: the command-line arguments; ``sys.argv[1:]`` when ``None``.

    Returns:
        One model: its results as a dict (:meth:`EvaluationReport.to_dict`), as written to ``--output_file``.
        Several: ``{"reports": [one such dict per model], "files": [their paths], "comparison": the table,
        "comparison_file": its path}``.

    Raises:
        PaKAUserError: for a bad option, a missing ``--model_name_or_path`` folder or data path, a protocol
            without its data, or data the evaluation cannot use (raised by the dataset loaders and the runner).
    """
    args, settings = parse_args(argv)
    configure_logging()
    keep_freed_host_memory()  # large CPU tensors reuse freed memory: no page fault per 4 KiB (utils/host_memory)
    models = args.model_name_or_path
    for model in models:
        check_local_path(model, "--model_name_or_path")  # a mistyped folder never reaches the Hub
    for flag in ("data_dir", "warp_images", "spair_dir", "depth_dir", "depth_splits_file"):
        check_local_path(getattr(args, flag), f"--{flag}", always=True)
    protocols = _protocols(args.protocol)
    dataset_kwargs = {"on_size_mismatch": args.on_size_mismatch, "on_unknown_label": args.on_unknown_label}
    if args.data_dir is not None:
        dataset_kwargs["on_missing"] = args.on_missing
    if args.mask_dir:
        dataset_kwargs["mask_dir"] = args.mask_dir
    if args.class_names:
        dataset_kwargs["class_names"] = read_class_names(args.class_names)
    if args.ignore_index is not None:
        dataset_kwargs["ignore_index"] = args.ignore_index
    if args.hub_dataset_id:
        dataset_kwargs["hub_spec"] = HubSpec(args.hub_dataset_id, args.image_column, args.mask_column, args.hub_config)
    options = dict(
        data_dir=args.data_dir,
        train_split=args.train_split,
        val_split=args.val_split,
        settings=settings,
        warp_images=args.warp_images,
        spair_dir=args.spair_dir,
        depth_dir=args.depth_dir,
        depth_splits_file=args.depth_splits_file,
        depth_key=args.depth_key,
        depth_train_split=args.depth_train_split,
        depth_test_split=args.depth_test_split,
        **dataset_kwargs,
    )
    if len(models) == 1:
        timings: dict[str, float] = {}
        report = run_evaluation(models[0], args.dataset_name, protocols, timings=timings, **options)
        report.save(args.output_file)
        _print_report(report, timings, args.output_file)
        return report.to_dict()

    files, comparison_file = per_model_files(args.output_file, models)
    saved: list[str] = []
    per_model_timings: list[dict[str, float]] = []

    def save(report: EvaluationReport) -> None:  # as each model finishes: a later failure keeps the earlier files
        path = files[len(saved)]
        report.save(path)
        saved.append(path)
        print(f"== {report.model}")
        _print_report(report, per_model_timings[-1] if per_model_timings else {}, path)

    reports = evaluate_models(
        models, args.dataset_name, protocols, timings=per_model_timings, on_report=save, **options
    )
    table = comparison_table(reports)
    Path(comparison_file).write_text(
        f"# Evaluation of {len(models)} models\n\nThe differences are to the first model, {models[0]}; better and "
        "worse follow each metric's direction (mIoU, PCK and δ1 up; RMSE and AbsRel down).\n\n"
        f"{table}\n",
        encoding="utf-8",
    )
    print(table)
    print(f"comparison written to {comparison_file}")
    return {
        "reports": [r.to_dict() for r in reports],
        "files": files,
        "comparison": table,
        "comparison_file": comparison_file,
    }


def cli_main() -> int:
    """The ``paka-evaluate`` console command: :func:`main` with user errors as one line ``error: ...``, exit 2.

    Returns:
        The exit status (:func:`~paka_hf.commands.cli.run_script`).
    """
    return run_script(main)
