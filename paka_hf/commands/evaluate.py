r"""Dense evaluation of a supported ViT checkpoint (DINOv2, DINOv2R, DINOv3, SigLIP / SigLIP 2, CLIP): linear probe, overclustering, Hummingbird.

Examples::

    python scripts/evaluate.py --model_name_or_path facebook/dinov2-small --dataset_name voc \
        --data_dir data/VOCdevkit --protocol linear --output_file results.json
    python scripts/evaluate.py --model_name_or_path out/ --dataset_name folder --data_dir data/my_set \
        --class_names sky,road,car --ignore_index 255 --protocol overcluster --num_clusters 3,100
    python scripts/evaluate.py --model_name_or_path out/ --dataset_name camvid --data_dir data/camvid \
        --protocol all --input_size 224,308 --max_images 50     # a quick CPU run

A user error (missing folder, bad mask, missing class names) prints one line ``error: ...`` and exits
with status 2; ``--debug`` shows its traceback.

Defaults are the protocols' settings (docs/EVALUATION.md): every option but the model and data ones is
a field of ``EvaluationSettings``, ``LinearProbeConfig``, ``OverclusterConfig`` or ``HummingbirdConfig``
(``paka_hf.evaluation``) with that field's default, so the command and the library cannot drift apart.
Where a protocol's field shares its name with another's, the flag carries the protocol's prefix
(``--linear_batch_size``, ``--hummingbird_eval_size``; ``--knn_backend`` is Hummingbird's ``backend``:
``auto``, ``torch``, ``faiss``, or the approximate ``faiss_ivf`` with ``--ivf_nlist`` / ``--ivf_nprobe``);
``--seed`` and ``--device`` are the run's and every protocol's, ``--eval_size`` is the linear probe's and
overclustering's. ``--published_conventions`` reproduces the published ADE20K-over-151-classes and
Hummingbird std-0.255 conventions. ``paka-evaluate`` is the same command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from paka_hf.commands import StrictHfArgumentParser
from paka_hf.commands.cli import configure_logging, run_script
from paka_hf.evaluation import (
    BENCHMARKS,
    PROTOCOLS,
    EvaluationSettings,
    HubSpec,
    HummingbirdConfig,
    LinearProbeConfig,
    OverclusterConfig,
    read_class_names,
    run_evaluation,
)
from paka_hf.evaluation.hummingbird import MEMORY_SAMPLING
from paka_hf.evaluation.knn import KNN_BACKENDS
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

    model_name_or_path: str = field(
        metadata={"help": "Hub id or local directory of a supported checkpoint (DINOv2, DINOv3, SigLIP, CLIP...)"}
    )
    dataset_name: str = field(metadata={"help": f"one of {', '.join(BENCHMARKS)}"})
    data_dir: str | None = field(default=None, metadata={"help": "on-disk dataset root; without it the Hub copy"})
    protocol: str = field(
        default="linear",
        metadata={"help": f"{', '.join(PROTOCOLS)}, a comma-separated list, or 'all' (features are shared)"},
    )
    output_file: str = field(default="results.json", metadata={"help": "results JSON (see docs/EVALUATION.md)"})
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


# The options generated from the library's dataclasses. A protocol field whose name is taken on the command
# line gets the flag named here; a field in SHARED takes its value from another flag (one --seed for the run
# and its protocols, one --eval_size for the linear probe and overclustering); a field in FROM_RUNNER is left
# at its default, which run_evaluation fills in (the protocols' device is the run's --device).
SECTIONS = {
    "settings": EvaluationSettings,
    "linear": LinearProbeConfig,
    "overcluster": OverclusterConfig,
    "hummingbird": HummingbirdConfig,
}
FLAG_NAMES = {
    "linear": {"batch_size": "linear_batch_size"},
    "hummingbird": {"eval_size": "hummingbird_eval_size", "backend": "knn_backend"},
}
SHARED = {"linear": {"seed": "seed"}, "overcluster": {"eval_size": "eval_size"}, "hummingbird": {"seed": "seed"}}
FROM_RUNNER = {"settings": ("linear", "overcluster", "hummingbird"), "linear": ("device",), "hummingbird": ("device",)}
CONVERTERS = {"input_size": _size, "crop_scale": _floats, "num_clusters": _ints, "seeds": _ints}
CHOICES = {"knn_backend": KNN_BACKENDS, "memory_sampling": MEMORY_SAMPLING}
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
    "knn_backend": "Hummingbird k-NN: exact torch or faiss (auto: faiss if installed and on CPU), or approximate "
    "faiss_ivf (IndexIVFFlat; recall@k recorded)",
    "ivf_nlist": "faiss_ivf: inverted lists (k-means cells)",
    "ivf_nprobe": "faiss_ivf: lists searched per query",
    "recall_sample": "faiss_ivf: query patches on which recall@k against exact search is measured (0: none)",
    "hummingbird_eval_size": "default: the input resolution",
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


def main(argv: list[str] | None = None) -> dict:
    """Evaluate, write ``--output_file``, print one line per result.

    Args:
        argv: the command-line arguments; ``sys.argv[1:]`` when ``None``.

    Returns:
        The results as a dict (:meth:`EvaluationReport.to_dict`), as written to ``--output_file``.

    Raises:
        PaKAUserError: for a bad option, a missing ``--model_name_or_path`` folder or ``--data_dir``, or data the
            evaluation cannot use (raised by the dataset loaders and the runner).
    """
    args, settings = parse_args(argv)
    configure_logging()
    check_local_path(args.model_name_or_path, "--model_name_or_path")  # a mistyped folder never reaches the Hub
    check_local_path(args.data_dir, "--data_dir", always=True)
    protocols = list(PROTOCOLS) if args.protocol == "all" else [p.strip() for p in args.protocol.split(",")]
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
    timings: dict[str, float] = {}
    report = run_evaluation(
        args.model_name_or_path,
        args.dataset_name,
        protocols,
        data_dir=args.data_dir,
        train_split=args.train_split,
        val_split=args.val_split,
        settings=settings,
        timings=timings,
        **dataset_kwargs,
    )
    report.save(args.output_file)
    for result in report.results:
        spread = f" ± {result.std:.2f}" if result.std is not None else ""
        print(f"{result.dataset_name} {result.split} {result.metric_name}: {result.value:.2f}{spread}")
    print("wall seconds:", json.dumps({k: round(v, 1) for k, v in timings.items()}))
    print(f"results written to {args.output_file}")
    return report.to_dict()


def cli_main() -> int:
    """The ``paka-evaluate`` console command: :func:`main` with user errors as one line ``error: ...``, exit 2.

    Returns:
        The exit status (:func:`~paka_hf.commands.cli.run_script`).
    """
    return run_script(main)
