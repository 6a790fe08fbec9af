r"""One evaluation run: load a backbone and the protocols' data, extract features once, run protocols, report.

:func:`run_evaluation` is what ``paka-evaluate`` (``scripts/evaluate.py``) calls for one model and
:func:`evaluate_models` for several; both are also the Python API::

    >>> from paka_hf.evaluation import run_evaluation
    >>> report = run_evaluation("facebook/dinov2-small", "voc", ["linear"], data_dir="data/VOCdevkit")
    >>> report.save("results.json")

The protocols (:data:`PROTOCOLS`) and their data:

* ``linear``, ``overcluster``, ``hummingbird`` (:data:`SEGMENTATION_PROTOCOLS`; ``--protocol all`` on the command
  line): dense segmentation on the labelled benchmark ``dataset_name`` (:mod:`.linear`, :mod:`.overcluster`,
  :mod:`.hummingbird`); one mIoU each (overclustering: one per K);
* ``warp``: known-warp correspondence (:mod:`.correspondence`) on ``warp_images``, a folder of images, or, without
  it, on the images of ``dataset_name``'s evaluation split; one PCK per threshold (in patches);
* ``spair``: SPair-71k keypoint transfer (:mod:`.spair`) on ``spair_dir``; the mean over categories of
  PCK@α\ :sub:`bbox` (α = 0.1 by default), per-category values in its ``settings``;
* ``depth``: the linear depth probe (:mod:`.depth`) on ``depth_dir``: NYUv2's ``nyu_depth_v2_labeled.mat`` (with
  ``depth_splits_file``, the official ``splits.mat``) or a folder with ``<split>/images`` and ``<split>/depth``;
  RMSE (m), δ\ :sub:`1` (%) and AbsRel.

A protocol whose data is not given raises a one-line :class:`~paka_hf.utils.errors.ConfigError` naming the
command-line flag (the keyword argument of the same name here); nothing is skipped. The segmentation protocols
share a :class:`~.features.FeatureCache`: with equal input size and normalisation, the linear probe's augmented
training views are the Hummingbird memory bank's passes and the evaluation split is encoded once. The
correspondence and depth protocols encode their own views (warped pairs, keypoint images, depth-sized images).

Published conventions (``published_conventions=True``, ``--published_conventions``):

* ADE20K mIoU averaged over 151 classes, the ignored "other" class counted with IoU 0
  (``value × 150 / 151`` of the correct number when every class occurs);
* Hummingbird inputs normalised with std ``(0.229, 0.224, 0.255)``, the typo of the published code
  (ImageNet-statistics backbones only; others keep their own std).

Default (correct) numbers use 150 ADE20K classes and the backbone's own mean and std (its checkpoint's
image processor; ImageNet ``(0.229, 0.224, 0.225)`` for DINOv2/DINOv3).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from paka_hf.evaluation.correspondence import CorrespondenceConfig, CorrespondenceResult, warp_correspondence
from paka_hf.evaluation.datasets import SegmentationDataset, load_segmentation_dataset
from paka_hf.evaluation.depth import (
    DepthDataset,
    DepthProbeConfig,
    DepthProbeResult,
    NYUv2Labeled,
    load_depth_dataset,
    run_depth_probe,
)
from paka_hf.evaluation.features import FeatureCache, as_size, published_hummingbird_std
from paka_hf.evaluation.hummingbird import HummingbirdConfig, hummingbird_retrieval
from paka_hf.evaluation.linear import LinearProbeConfig, linear_probe
from paka_hf.evaluation.overcluster import OverclusterConfig, overclustering
from paka_hf.evaluation.results import TASK_OF_METRIC, EvaluationReport, MetricResult
from paka_hf.evaluation.spair import ARCHIVE_FOLDER, SPairConfig, SPairResult, spair_keypoint_transfer
from paka_hf.utils.errors import ConfigError

logger = logging.getLogger(__name__)

#: The dense segmentation protocols, on a labelled benchmark; ``--protocol all`` runs these three.
SEGMENTATION_PROTOCOLS = ("linear", "overcluster", "hummingbird")
#: Every protocol: the segmentation ones, then known-warp correspondence, SPair-71k and the depth probe.
PROTOCOLS = (*SEGMENTATION_PROTOCOLS, "warp", "spair", "depth")
DEFAULT_INPUT_SIZE = {"linear": 448, "overcluster": 448, "hummingbird": 504}
#: The depth probe's reported numbers: the :class:`~.depth.DepthScores` field (also the ``metric_type``, whose
#: direction :data:`~.results.HIGHER_IS_BETTER` gives) and the metric's name.
DEPTH_METRICS = (("rmse", "RMSE (depth)"), ("delta1", "δ1 (depth)"), ("abs_rel", "AbsRel (depth)"))


@dataclass
class EvaluationSettings:
    """Everything a run needs besides the model and the data (defaults: docs/EVALUATION.md).

    Args:
        linear: the linear probe's settings.
        overcluster: the overclustering's settings.
        hummingbird: the Hummingbird settings.
        warp: the known-warp correspondence's settings; its ``max_images`` None takes ``max_images``.
        spair: the SPair-71k keypoint transfer's settings.
        depth: the depth probe's settings (its ``device`` None takes ``device``).
        input_size: the side, or ``(height, width)``, images are resized to (rounded down to multiples of the patch
            size) by the segmentation protocols; None for each protocol's default (448 / 448 / 504). The other
            protocols have their own (``warp.input_size``, ``spair.input_size``, ``depth.input_size``).
        augment_passes: augmented training passes (linear views, Hummingbird memory passes).
        crop_scale: the area range of the augmented crops.
        batch_size: images per forward pass (also the warp's and SPair's; the depth probe's feature extraction).
        max_images: images per split (the segmentation splits, the depth splits, the warp images); None for all.
        max_train_images: images of the segmentation training split, over ``max_images``; None for
            ``max_images``.
        published_conventions: score as the published numbers do (ADE20K's extra zero class, Hummingbird's std).
        device: where the backbone (and, unless their configs say otherwise, the probes and k-NN search) runs.
        num_workers: DataLoader workers.
        seed: the seed of the augmentations.
        progress: show progress bars.
        feature_cache_dir: a folder that keeps the segmentation protocols' features across runs, one sub-folder
            per model's weights (:class:`~.features.FeatureCache`); None keeps them in memory, for this run.

    Example::

        from paka_hf.evaluation import EvaluationSettings, LinearProbeConfig
        settings = EvaluationSettings(linear=LinearProbeConfig(epochs=5), input_size=224, max_images=50)
    """

    linear: LinearProbeConfig = field(default_factory=LinearProbeConfig)
    overcluster: OverclusterConfig = field(default_factory=OverclusterConfig)
    hummingbird: HummingbirdConfig = field(default_factory=HummingbirdConfig)
    warp: CorrespondenceConfig = field(default_factory=CorrespondenceConfig)
    spair: SPairConfig = field(default_factory=SPairConfig)
    depth: DepthProbeConfig = field(default_factory=DepthProbeConfig)
    input_size: int | tuple[int, int] | None = None  # None: the protocol's default (448 / 448 / 504)
    augment_passes: int = 2  # augmented training passes (linear views, Hummingbird memory passes)
    crop_scale: tuple[float, float] = (0.8, 1.0)
    batch_size: int = 16
    max_images: int | None = None  # per split; None = all
    max_train_images: int | None = None  # overrides max_images for the training split
    published_conventions: bool = False
    device: str = "cpu"
    num_workers: int = 0
    seed: int = 0
    progress: bool = True
    feature_cache_dir: str | None = None


def _input_size(settings: EvaluationSettings, protocol: str, patch_size: int) -> tuple[int, int]:
    size = as_size(settings.input_size if settings.input_size is not None else DEFAULT_INPUT_SIZE[protocol])
    fitted = tuple(max(patch_size, s // patch_size * patch_size) for s in size)
    if fitted != size:
        logger.warning("input size %s is not a multiple of the patch size %d; using %s", size, patch_size, fitted)
    return fitted  # type: ignore[return-value]


def _resolved_settings(settings: EvaluationSettings | None) -> EvaluationSettings:
    """The settings with what the run fills in: the protocols' devices, the warp's image count."""
    cfg = settings or EvaluationSettings()
    if cfg.linear.device is None:
        cfg = replace(cfg, linear=replace(cfg.linear, device=cfg.device))
    if cfg.hummingbird.device is None:
        cfg = replace(cfg, hummingbird=replace(cfg.hummingbird, device=cfg.device))
    if cfg.depth.device is None:
        cfg = replace(cfg, depth=replace(cfg.depth, device=cfg.device))
    if cfg.warp.max_images is None and cfg.max_images is not None:
        cfg = replace(cfg, warp=replace(cfg.warp, max_images=cfg.max_images))
    return cfg


def _is_nyu_mat(depth_dir: str | os.PathLike) -> bool:
    return Path(depth_dir).suffix.lower() == ".mat"


def check_protocols(
    protocols: Sequence[str],
    *,
    dataset_name: str | None = None,
    warp_images: str | os.PathLike | None = None,
    spair_dir: str | os.PathLike | None = None,
    depth_dir: str | os.PathLike | None = None,
    depth_splits_file: str | os.PathLike | None = None,
    depth_splits: tuple[str, str] | None = ("train", "test"),
) -> list[str]:
    """The protocols to run, checked against the data given, before anything is loaded.

    Args:
        protocols: names from :data:`PROTOCOLS`.
        dataset_name: the segmentation benchmark, or None.
        warp_images: the warp protocol's folder of images, or None.
        spair_dir: the SPair-71k folder, or None.
        depth_dir: NYUv2's ``.mat`` or a depth folder, or None.
        depth_splits_file: NYUv2's ``splits.mat``, or None.
        depth_splits: the depth probe's ``(train, test)`` splits; None when its datasets are already loaded.

    Returns:
        ``protocols`` as a list.

    Raises:
        ConfigError: no or an unknown protocol, or a protocol whose data is missing (one line naming the flag of
            ``paka-evaluate``, which is also the keyword argument's name).
    """
    protocols = list(protocols)
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown or not protocols:
        raise ConfigError(f"unknown protocol(s) {unknown}; choose from {', '.join(PROTOCOLS)}")
    segmentation = [p for p in protocols if p in SEGMENTATION_PROTOCOLS]
    if segmentation and dataset_name is None:
        raise ConfigError(
            f"protocol {', '.join(segmentation)} needs a labelled segmentation benchmark: pass --dataset_name "
            "(and --data_dir for an on-disk copy)"
        )
    if "warp" in protocols and warp_images is None and dataset_name is None:
        raise ConfigError(
            "the warp protocol needs images: pass --warp_images DIR (a folder of images) or --dataset_name (the "
            "images of its --val_split)"
        )
    if "spair" in protocols and spair_dir is None:
        raise ConfigError(
            f"the spair protocol needs SPair-71k: pass --spair_dir DIR (the {ARCHIVE_FOLDER} folder or the folder "
            "holding it)"
        )
    if "depth" in protocols and depth_dir is None:
        raise ConfigError(
            "the depth protocol needs images with depth: pass --depth_dir (nyu_depth_v2_labeled.mat with "
            "--depth_splits_file splits.mat, or a folder with train/ and test/, each holding images/ and depth/)"
        )
    if (
        "depth" in protocols
        and _is_nyu_mat(depth_dir)
        and depth_splits is not None
        and depth_splits_file is None
        and any(split != "all" for split in depth_splits)
    ):
        raise ConfigError(
            "the depth protocol on NYUv2's labelled .mat needs its official split: pass --depth_splits_file "
            "splits.mat (from the NYU Depth V2 page)"
        )
    for flag, value, protocol in (
        ("--warp_images", warp_images, "warp"),
        ("--spair_dir", spair_dir, "spair"),
        ("--depth_dir", depth_dir, "depth"),
    ):
        if value is not None and protocol not in protocols:
            logger.warning("%s is given but the %s protocol does not run (add it to --protocol)", flag, protocol)
    return protocols


def load_segmentation_splits(
    protocols: Sequence[str],
    dataset_name: str | None,
    data_dir: str | os.PathLike | None = None,
    *,
    train_split: str = "train",
    val_split: str = "val",
    warp_images: str | os.PathLike | None = None,
    **dataset_kwargs: Any,
) -> tuple[SegmentationDataset | None, SegmentationDataset | None]:
    """The splits of ``dataset_name`` that ``protocols`` read: the evaluation split for any segmentation protocol
    (and for ``warp`` without ``warp_images``), the training split for ``linear`` and ``hummingbird``.

    Args:
        protocols: the protocols to run (checked by :func:`check_protocols`).
        dataset_name: the benchmark (:func:`~.datasets.load_segmentation_dataset`), or None.
        data_dir: its on-disk copy; None for its Hub copy.
        train_split: the training split's name.
        val_split: the evaluation split's name.
        warp_images: the warp protocol's own images (then it needs no split).
        **dataset_kwargs: passed to :func:`~.datasets.load_segmentation_dataset`.

    Returns:
        ``(train, val)``, each None when no protocol reads it.

    Raises:
        DatasetError: the datasets cannot be read.
    """
    needs_train = any(p in ("linear", "hummingbird") for p in protocols)  # overclustering reads the val split only
    needs_val = any(p in SEGMENTATION_PROTOCOLS for p in protocols) or ("warp" in protocols and warp_images is None)
    if dataset_name is None or not needs_val:
        return None, None
    val_ds = load_segmentation_dataset(dataset_name, val_split, data_dir, **dataset_kwargs)
    train_ds = (
        load_segmentation_dataset(dataset_name, train_split, data_dir, **dataset_kwargs) if needs_train else None
    )
    return train_ds, val_ds


def load_depth_splits(
    depth_dir: str | os.PathLike,
    *,
    train_split: str = "train",
    test_split: str = "test",
    splits_file: str | os.PathLike | None = None,
    depth_key: str = "rawDepths",
) -> tuple[DepthDataset, DepthDataset]:
    """The depth probe's training and test sets (:func:`~.depth.load_depth_dataset`).

    Args:
        depth_dir: ``nyu_depth_v2_labeled.mat`` or a folder holding ``<split>/images`` and ``<split>/depth``.
        train_split: the training split (NYUv2: ``train``; a folder: its sub-folder).
        test_split: the test split (NYUv2: ``test``; a folder: its sub-folder).
        splits_file: NYUv2's ``splits.mat``.
        depth_key: NYUv2's depth maps: ``rawDepths`` (the sensor's) or ``depths`` (in-painted).

    Returns:
        ``(train, test)``.

    Raises:
        MissingPathError: a path that does not exist.
        ConfigError: as :func:`~.depth.load_depth_dataset`.
    """
    options = {"splits_file": splits_file, "depth_key": depth_key}
    return (
        load_depth_dataset(depth_dir, train_split, **options),
        load_depth_dataset(depth_dir, test_split, **options),
    )


def run_evaluation(
    model_name_or_path: str | os.PathLike,
    dataset_name: str | None = None,
    protocols: Sequence[str] = ("linear",),
    *,
    data_dir: str | os.PathLike | None = None,
    train_split: str = "train",
    val_split: str = "val",
    settings: EvaluationSettings | None = None,
    backbone: torch.nn.Module | None = None,
    datasets: tuple[SegmentationDataset | None, SegmentationDataset | None] | None = None,
    timings: dict[str, float] | None = None,
    feature_cache: FeatureCache | None = None,
    warp_images: str | os.PathLike | None = None,
    spair_dir: str | os.PathLike | None = None,
    depth_dir: str | os.PathLike | None = None,
    depth_splits_file: str | os.PathLike | None = None,
    depth_key: str = "rawDepths",
    depth_train_split: str = "train",
    depth_test_split: str = "test",
    depth_datasets: tuple[DepthDataset, DepthDataset] | None = None,
    **dataset_kwargs: Any,
) -> EvaluationReport:
    """Evaluate ``model_name_or_path`` (Hub id or local directory) with ``protocols`` (module docstring).

    ``backbone`` (a :class:`~paka_hf.modeling.backbones.PatchBackbone`), ``datasets`` (segmentation train, val) and
    ``depth_datasets`` (depth train, test) skip loading; ``timings`` (a dict) receives wall seconds per step:
    ``features/<split>/...`` for each segmentation extraction, ``features/depth/<H>x<W>`` for the depth probe's,
    and ``<protocol>`` for each protocol's own work (``warp`` and ``spair`` include their encoding, which is
    interleaved with the matching). ``feature_cache``: a :class:`~.features.FeatureCache` on the same
    ``backbone`` to reuse features across calls (e.g. the same features with two linear schedules).
    ``dataset_kwargs`` go to :func:`~.datasets.load_segmentation_dataset`.

    Args:
        model_name_or_path: a Hub id or a local folder (also recorded in the report).
        dataset_name: a segmentation benchmark (:func:`~.datasets.load_segmentation_dataset`); needed by the
            segmentation protocols, and by ``warp`` without ``warp_images``.
        protocols: a non-empty subset of :data:`PROTOCOLS`, run in this order.
        data_dir: the on-disk segmentation dataset; None for the benchmark's Hub copy.
        train_split: the segmentation training split's name.
        val_split: the segmentation evaluation split's name.
        settings: the run's settings; None for the defaults.
        backbone: the backbone to evaluate instead of loading ``model_name_or_path``.
        datasets: ``(train, val)`` segmentation splits instead of loading them (either may be None when no
            protocol reads it).
        timings: a dict that receives the wall seconds per step.
        feature_cache: a cache on ``backbone`` shared across calls.
        warp_images: the ``warp`` protocol's folder of images; None for the images of ``dataset_name``'s
            ``val_split``.
        spair_dir: the ``spair`` protocol's ``SPair-71k`` folder (or the folder holding it).
        depth_dir: the ``depth`` protocol's data: ``nyu_depth_v2_labeled.mat`` or a folder holding
            ``<split>/images`` and ``<split>/depth``.
        depth_splits_file: NYUv2's ``splits.mat`` (needed for its ``train`` and ``test`` splits).
        depth_key: NYUv2's depth maps, ``rawDepths`` (the sensor's; what the references score) or ``depths``.
        depth_train_split: the depth probe's training split (NYUv2: ``train``; a folder: its sub-folder).
        depth_test_split: the depth probe's test split.
        depth_datasets: ``(train, test)`` depth datasets instead of loading them from ``depth_dir``.
        **dataset_kwargs: passed to :func:`~.datasets.load_segmentation_dataset`.

    Returns:
        The :class:`~.results.EvaluationReport`.

    Raises:
        ConfigError: no or an unknown protocol, a protocol whose data is missing, an unsupported model, or a run
            that measured nothing (no warp image with a match, no depth test image with valid depth).
        MissingPathError: a data path that does not exist.
        ValueError: ``feature_cache`` was built on another backbone, or what the protocols raise.
        DatasetError: the datasets cannot be read (:func:`~.datasets.load_segmentation_dataset`).

    Example::

        from paka_hf.evaluation import EvaluationSettings, run_evaluation
        report = run_evaluation("facebook/dinov2-small", "camvid", ["linear", "hummingbird", "warp"],
                                data_dir="data/camvid", settings=EvaluationSettings(device="cuda"))
        report.save("results.json")
    """
    from paka_hf.modeling.backbones import PatchBackbone

    cfg = _resolved_settings(settings)
    given_val = datasets[1] if datasets is not None else None
    protocols = check_protocols(
        protocols,
        dataset_name=dataset_name if given_val is None else given_val.display_name,
        warp_images=warp_images,
        spair_dir=spair_dir,
        depth_dir=depth_dir if depth_datasets is None else depth_datasets[1].source,
        depth_splits_file=depth_splits_file,
        depth_splits=(depth_train_split, depth_test_split) if depth_datasets is None else None,
    )
    timings = {} if timings is None else timings
    # the data first: a missing or malformed dataset is reported before a model is downloaded
    if datasets is None:
        train_ds, val_ds = load_segmentation_splits(
            protocols,
            dataset_name,
            data_dir,
            train_split=train_split,
            val_split=val_split,
            warp_images=warp_images,
            **dataset_kwargs,
        )
    else:
        train_ds, val_ds = datasets
    if "depth" in protocols and depth_datasets is None:
        depth_datasets = load_depth_splits(
            depth_dir,  # type: ignore[arg-type]  # checked by check_protocols
            train_split=depth_train_split,
            test_split=depth_test_split,
            splits_file=depth_splits_file,
            depth_key=depth_key,
        )
    if backbone is None:
        backbone = PatchBackbone.from_pretrained(model_name_or_path)
    backbone = backbone.to(cfg.device).eval()
    for param in backbone.parameters():
        param.requires_grad_(False)
    extra_zero = (
        int(getattr(val_ds, "published_extra_zero_classes", 0))
        if cfg.published_conventions and val_ds is not None
        else 0
    )
    if feature_cache is not None and feature_cache.backbone is not backbone:
        raise ValueError("feature_cache was built on another backbone; pass the same backbone or no cache")
    cache = (
        feature_cache
        if feature_cache is not None
        else FeatureCache(
            backbone,
            batch_size=cfg.batch_size,
            num_workers=cfg.num_workers,
            device=cfg.device,
            crop_scale=cfg.crop_scale,
            progress=cfg.progress,
            seed=cfg.seed,
            cache_dir=cfg.feature_cache_dir,
        )
    )
    max_train = cfg.max_train_images if cfg.max_train_images is not None else cfg.max_images

    mean, default_std = tuple(backbone.image_mean), tuple(backbone.image_std)  # the checkpoint's image processor

    def features(dataset, split: str, protocol: str, augment: bool, std=default_std):
        size = _input_size(cfg, protocol, backbone.patch_size)
        passes = cfg.augment_passes if augment else 1
        before = len(cache)
        start = time.perf_counter()
        out = cache.get(
            dataset,
            input_size=size,
            augment=augment and passes > 0,
            passes=max(passes, 1),
            mean=mean,
            std=std,
            max_images=max_train if split == "train" else cfg.max_images,
            desc=f"features {split} {size[0]}x{size[1]}" + (f" x{passes} aug" if augment else ""),
        )
        if len(cache) > before:
            key = f"features/{split}/{size[0]}x{size[1]}/{'aug' + str(passes) if augment else 'plain'}/std{std[2]}"
            timings[key] = time.perf_counter() - start
        return out, size

    report = EvaluationReport.for_model(model_name_or_path)
    if val_ds is not None:
        common = {**val_ds.describe(), "split": val_ds.split}
        base_settings = {
            "backbone_patch_size": backbone.patch_size,
            "num_classes": val_ds.num_classes,
            "ignore_index": val_ds.ignore_index,
            "train_split": train_ds.split if train_ds is not None else None,
            "train_images": None,
            "val_images": None,
            "published_conventions": cfg.published_conventions,
            "mean_over_classes": val_ds.num_classes + extra_zero,
        }
        class_names = val_ds.class_names

    for protocol in protocols:
        if protocol == "linear":
            train_f, size = features(train_ds, "train", "linear", augment=cfg.augment_passes > 0)
            val_f, _ = features(val_ds, "val", "linear", augment=False)
            start = time.perf_counter()
            scores, _ = linear_probe(
                train_f,
                val_f,
                cfg.linear,
                num_views=max(cfg.augment_passes, 1),
                extra_zero_classes=extra_zero,
                progress=cfg.progress,
            )
            timings["linear"] = time.perf_counter() - start
            run_settings = {
                **base_settings,
                **cfg.linear.to_dict(),
                "input_size": list(size),
                "augmented_views": cfg.augment_passes,
                "crop_scale": list(cfg.crop_scale),
                "train_images": len(train_f) // max(cfg.augment_passes, 1),
                "val_images": len(val_f),
                "head": "1x1 conv on patch tokens, logits bilinearly upsampled",
            }
            report.results.append(
                MetricResult(
                    protocol="linear",
                    metric_name="mIoU (linear)",
                    value=scores.mean_iou,
                    settings=run_settings,
                    per_class_iou=scores.per_class_dict(class_names),
                    pixel_accuracy=scores.pixel_accuracy,
                    **common,
                )
            )
        elif protocol == "overcluster":
            val_f, size = features(val_ds, "val", "overcluster", augment=False)
            oc_cfg = cfg.overcluster
            if oc_cfg.num_clusters is None:
                oc_cfg = replace(oc_cfg, num_clusters=[val_ds.num_classes, 100, 300, 500])
            start = time.perf_counter()
            results = overclustering(val_f, oc_cfg, extra_zero_classes=extra_zero, progress=cfg.progress)
            timings["overcluster"] = time.perf_counter() - start
            for res in results:
                run_settings = {
                    **base_settings,
                    **oc_cfg.to_dict(),
                    "num_clusters": res.num_clusters,
                    "input_size": list(size),
                    "matching": res.matching,
                    "seed_values": [round(v, 4) for v in res.seed_values],
                    "val_images": len(val_f),
                    "train_images": 0,
                }
                report.results.append(
                    MetricResult(
                        protocol="overcluster",
                        metric_name=f"mIoU (overclustering, K={res.num_clusters})",
                        value=res.mean_iou,
                        settings=run_settings,
                        per_class_iou=dict(zip(class_names, _round_list(res.per_class_iou))),
                        pixel_accuracy=res.pixel_accuracy,
                        std=res.std,
                        seeds=res.seeds,
                        **common,
                    )
                )
        elif protocol == "hummingbird":
            std = published_hummingbird_std(default_std) if cfg.published_conventions else default_std
            train_f, size = features(train_ds, "train", "hummingbird", augment=cfg.augment_passes > 0, std=std)
            val_f, _ = features(val_ds, "val", "hummingbird", augment=False, std=std)
            start = time.perf_counter()
            search: dict[str, Any] = {}  # the k-NN backend used, and an approximate index's recall
            scores, _, bank = hummingbird_retrieval(
                train_f,
                val_f,
                cfg.hummingbird,
                extra_zero_classes=extra_zero,
                progress=cfg.progress,
                search_report=search,
            )
            timings["hummingbird"] = time.perf_counter() - start
            run_settings = {
                **base_settings,
                **cfg.hummingbird.to_dict(),
                **search,
                "input_size": list(size),
                "memory_passes": cfg.augment_passes,
                "memory_bank_size": bank,
                "normalize_std": list(std),
                "train_images": len(train_f) // max(cfg.augment_passes, 1),
                "val_images": len(val_f),
            }
            report.results.append(
                MetricResult(
                    protocol="hummingbird",
                    metric_name="mIoU (hummingbird)",
                    value=scores.mean_iou,
                    settings=run_settings,
                    per_class_iou=scores.per_class_dict(class_names),
                    pixel_accuracy=scores.pixel_accuracy,
                    **common,
                )
            )
        elif protocol == "warp":
            images = warp_images if warp_images is not None else val_ds
            start = time.perf_counter()
            warp = warp_correspondence(backbone, images, cfg.warp, device=cfg.device, progress=cfg.progress)
            timings["warp"] = time.perf_counter() - start
            if warp_images is not None:
                folder = Path(warp_images).resolve().name or os.fspath(warp_images)
                source = {"dataset_name": folder, "dataset_type": folder, "dataset_config": None, "split": "all"}
                origin = {"images": os.fspath(warp_images)}
            else:
                source = {**val_ds.describe(), "split": val_ds.split}
                origin = {"images": f"{val_ds.display_name} {val_ds.split}", "data_dir": _path_or_none(data_dir)}
            report.results.extend(_warp_results(warp, source, origin))
        elif protocol == "spair":
            start = time.perf_counter()
            spair = spair_keypoint_transfer(backbone, spair_dir, cfg.spair, device=cfg.device, progress=cfg.progress)
            timings["spair"] = time.perf_counter() - start
            report.results.append(_spair_result(spair, spair_dir))  # type: ignore[arg-type]
        else:  # depth
            depth_train, depth_test = depth_datasets  # type: ignore[misc]  # loaded above
            depth = run_depth_probe(
                backbone,
                depth_train,
                depth_test,
                cfg.depth,
                device=cfg.device,
                batch_size=cfg.batch_size,
                max_images=cfg.max_images,
                num_workers=cfg.num_workers,
                progress=cfg.progress,
            )
            height, width = depth.input_size or (0, 0)
            timings[f"features/depth/{height}x{width}"] = depth.seconds["extract"]
            timings["depth"] = depth.seconds["train"] + depth.seconds["evaluate"]
            origin = {
                "depth_dir": os.fspath(depth_dir) if depth_dir is not None else depth_test.source,
                "depth_splits_file": _path_or_none(depth_splits_file),
                "depth_key": depth_key if isinstance(depth_test, NYUv2Labeled) else None,
                "backbone_batch_size": cfg.batch_size,
                "max_images": cfg.max_images,
            }
            report.results.extend(_depth_results(depth, depth_train, depth_test, origin))
    # the segmentation splits' handled issues, on the results that read them
    readers = {*SEGMENTATION_PROTOCOLS, *(("warp",) if warp_images is None else ())}
    for ds in (train_ds, val_ds):
        if ds is not None and ds.stats:
            logger.warning("%s/%s data issues handled: %s", ds.display_name, ds.split, dict(ds.stats))
            for result in report.results:
                if result.protocol in readers:
                    result.settings.setdefault("data_issues", {})[ds.split] = dict(ds.stats)
    return report


def evaluate_models(
    models: Sequence[str | os.PathLike],
    dataset_name: str | None = None,
    protocols: Sequence[str] = ("linear",),
    *,
    data_dir: str | os.PathLike | None = None,
    train_split: str = "train",
    val_split: str = "val",
    settings: EvaluationSettings | None = None,
    timings: list[dict[str, float]] | None = None,
    on_report: Callable[[EvaluationReport], Any] | None = None,
    warp_images: str | os.PathLike | None = None,
    spair_dir: str | os.PathLike | None = None,
    depth_dir: str | os.PathLike | None = None,
    depth_splits_file: str | os.PathLike | None = None,
    depth_key: str = "rawDepths",
    depth_train_split: str = "train",
    depth_test_split: str = "test",
    **dataset_kwargs: Any,
) -> list[EvaluationReport]:
    """Evaluate several models with the same protocols and settings, the datasets loaded once.

    Each model is loaded, evaluated with its own :class:`~.features.FeatureCache` (features of two models are
    never mixed) and released before the next; the segmentation and depth datasets are built once and shared
    (the warp's folder and SPair's annotations are read by their protocol, once per model).
    :func:`~.compare.comparison_table` puts the reports side by side.

    Args:
        models: Hub ids or local folders, in the order of the reports (the first is the comparison's reference).
        dataset_name: as :func:`run_evaluation`.
        protocols: as :func:`run_evaluation`.
        data_dir: as :func:`run_evaluation`.
        train_split: as :func:`run_evaluation`.
        val_split: as :func:`run_evaluation`.
        settings: as :func:`run_evaluation`, the same for every model.
        timings: a list that receives one dict of wall seconds per model (:func:`run_evaluation`'s ``timings``).
        on_report: called with each model's report as soon as it is done (after its timings are appended), e.g.
            to save it, so that a failure of a later model keeps the earlier results.
        warp_images: as :func:`run_evaluation`.
        spair_dir: as :func:`run_evaluation`.
        depth_dir: as :func:`run_evaluation`.
        depth_splits_file: as :func:`run_evaluation`.
        depth_key: as :func:`run_evaluation`.
        depth_train_split: as :func:`run_evaluation`.
        depth_test_split: as :func:`run_evaluation`.
        **dataset_kwargs: passed to :func:`~.datasets.load_segmentation_dataset`.

    Returns:
        One :class:`~.results.EvaluationReport` per model, in the order of ``models``.

    Raises:
        ConfigError: no model, or as :func:`run_evaluation`.
        MissingPathError: as :func:`run_evaluation`.
        DatasetError: as :func:`run_evaluation`.

    Example::

        from paka_hf.evaluation import comparison_table, evaluate_models
        reports = evaluate_models(["facebook/dinov2-small", "out/my_paka"], "camvid", ["linear", "warp"],
                                  data_dir="data/camvid")
        print(comparison_table(reports))
    """
    models = list(models)
    if not models:
        raise ConfigError("no model to evaluate: pass one or more --model_name_or_path")
    cfg = _resolved_settings(settings)
    depth_options = {
        "splits_file": depth_splits_file,
        "depth_key": depth_key,
        "train_split": depth_train_split,
        "test_split": depth_test_split,
    }
    protocols = check_protocols(
        protocols,
        dataset_name=dataset_name,
        warp_images=warp_images,
        spair_dir=spair_dir,
        depth_dir=depth_dir,
        depth_splits_file=depth_splits_file,
        depth_splits=(depth_train_split, depth_test_split),
    )
    datasets = load_segmentation_splits(
        protocols,
        dataset_name,
        data_dir,
        train_split=train_split,
        val_split=val_split,
        warp_images=warp_images,
        **dataset_kwargs,
    )
    depth_datasets = load_depth_splits(depth_dir, **depth_options) if "depth" in protocols else None  # type: ignore[arg-type]
    reports = []
    with tqdm(total=len(models), desc="models", unit="model", disable=not cfg.progress) as bar:
        for model in models:
            bar.set_postfix_str(os.fspath(model))
            model_timings: dict[str, float] = {}
            reports.append(
                run_evaluation(
                    model,
                    dataset_name,
                    protocols,
                    data_dir=data_dir,
                    train_split=train_split,
                    val_split=val_split,
                    settings=cfg,
                    datasets=datasets,
                    timings=model_timings,
                    warp_images=warp_images,
                    spair_dir=spair_dir,
                    depth_dir=depth_dir,
                    depth_splits_file=depth_splits_file,
                    depth_key=depth_key,
                    depth_train_split=depth_train_split,
                    depth_test_split=depth_test_split,
                    depth_datasets=depth_datasets,
                )
            )
            if timings is not None:
                timings.append(model_timings)
            if on_report is not None:
                on_report(reports[-1])
            bar.update(1)
    return reports


def _path_or_none(path: str | os.PathLike | None) -> str | None:
    return None if path is None else os.fspath(path)


def _warp_results(result: CorrespondenceResult, source: dict[str, Any], origin: dict[str, Any]) -> list[MetricResult]:
    """One ``pck`` result per threshold of a known-warp run (the mean over images of each image's PCK).

    Raises:
        ConfigError: no image had an evaluated patch (every PCK undefined).
    """
    if result.num_images == 0:
        raise ConfigError(
            f"warp: none of the {len(result.images)} images has a patch whose true match lies inside the warped "
            "view; lower --border_patches or use milder warps (--crop_fraction, --max_rotation, --perspective)"
        )
    summary = result.to_dict()
    shared = {
        **result.settings,
        **origin,
        "num_images": result.num_images,
        "num_images_without_matches": result.num_images_without_matches,
        "num_matches": result.num_matches,
        "num_mutual_matches": result.num_mutual_matches,
    }
    entries = []
    for i, tau in enumerate(result.thresholds):
        settings = {
            **shared,
            "threshold_patches": tau,
            "threshold_pixels": result.thresholds_pixels[i],
            "alpha": summary["alpha"][i],
            "pck_pooled": summary["pck_pooled"][i],
            "chance_pck": summary["chance_pck"][i],
            "mutual_pck": summary["mutual_pck"][i],
        }
        entries.append(
            MetricResult(
                protocol="warp",
                metric_name=f"PCK@{tau:g} {'patch' if tau == 1 else 'patches'} (warp)",
                value=result.pck[i],
                settings=settings,
                task_type=TASK_OF_METRIC["pck"],
                metric_type="pck",
                **source,
            )
        )
    return entries


def _spair_result(result: SPairResult, spair_dir: str | os.PathLike) -> MetricResult:
    """The headline of a SPair-71k run: the mean over categories of PCK@α (bbox); the other averages, every α,
    and each category's and each viewpoint variation's PCK@α in ``settings``."""
    summary = result.to_dict()
    i = result.alphas.index(result.alpha)
    settings = {
        **result.settings,
        "spair_dir": os.fspath(spair_dir),
        "pck_keypoints": summary["pck_keypoints"][i],
        "pck_pairs": summary["pck_pairs"][i],
        "pck_by_alpha": dict(zip((f"{a:g}" for a in result.alphas), summary["pck_categories"])),
        "per_category_pck": {name: row["pck_keypoints"][i] for name, row in summary["per_category"].items()},
        "per_category_pairs": {name: row["num_pairs"] for name, row in summary["per_category"].items()},
        "pck_viewpoint": {key: values[i] for key, values in summary["pck_viewpoint"].items()},
        "num_pairs": result.num_pairs,
        "num_keypoints": result.num_keypoints,
        "num_images": result.num_images,
        "num_categories": result.num_categories,
    }
    return MetricResult(
        protocol="spair",
        dataset_name="SPair-71k",
        dataset_type="spair-71k",
        dataset_config=result.settings["layout"],
        split=result.settings["split"],
        metric_name=f"PCK@{result.alpha:g} bbox (spair)",
        value=result.pck,
        settings=settings,
        task_type=TASK_OF_METRIC["pck"],
        metric_type="pck",
    )


def _depth_results(
    result: DepthProbeResult, train: DepthDataset, test: DepthDataset, origin: dict[str, Any]
) -> list[MetricResult]:
    """RMSE, δ1 and AbsRel of a depth probe run (:data:`DEPTH_METRICS`), every score and the data in ``settings``.

    Raises:
        ConfigError: no test image had a valid depth pixel (every metric undefined).
    """
    scores = result.scores
    if scores.images == 0:
        raise ConfigError(
            f"depth: none of the {result.test_images} test images has a depth value in ({result.config['min_depth']}, "
            f"{result.config['max_depth']}) m inside the crop; check --depth_dir's depth maps, --max_depth or "
            "--depth_crop none"
        )
    nyu = isinstance(test, NYUv2Labeled)
    name = test.name if nyu else Path(getattr(test, "root", test.source)).name
    settings = {
        **result.config,
        **origin,
        "input_size": list(result.input_size) if result.input_size else None,
        "grid_size": list(result.grid_size),
        "train_split": train.split,
        "train_images": result.train_images,
        "test_images": result.test_images,
        "scored_images": scores.images,
        "images_without_valid_depth": scores.images_without_valid_depth,
        "scores": scores.to_dict(),
    }
    source = {
        "dataset_name": name,
        "dataset_type": "nyuv2" if nyu else name,
        "dataset_config": None,
        "split": str(test.split),
    }
    return [
        MetricResult(
            protocol="depth",
            metric_name=metric_name,
            value=getattr(scores, metric),
            settings=settings,
            task_type=TASK_OF_METRIC[metric],
            metric_type=metric,
            **source,
        )
        for metric, metric_name in DEPTH_METRICS
    ]


def _round_list(values) -> list[float | None]:
    return [None if not math.isfinite(float(v)) else round(float(v), 4) for v in values]
