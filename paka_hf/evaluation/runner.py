"""One evaluation run: load a backbone and a benchmark, extract features once, run protocols, report.

:func:`run_evaluation` is what ``scripts/evaluate.py`` calls; it is also the Python API::

    >>> from paka_hf.evaluation import run_evaluation
    >>> report = run_evaluation("facebook/dinov2-small", "voc", ["linear"], data_dir="data/VOCdevkit")
    >>> report.save("results.json")

Protocols run in the order given and share a :class:`~.features.FeatureCache`: with equal input
size and normalisation, the linear probe's augmented training views are the Hummingbird memory
bank's passes and the evaluation split is encoded once.

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
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from paka_hf.evaluation.datasets import SegmentationDataset, load_segmentation_dataset
from paka_hf.evaluation.features import FeatureCache, as_size, published_hummingbird_std
from paka_hf.evaluation.hummingbird import HummingbirdConfig, hummingbird_retrieval
from paka_hf.evaluation.linear import LinearProbeConfig, linear_probe
from paka_hf.evaluation.overcluster import OverclusterConfig, overclustering
from paka_hf.evaluation.results import EvaluationReport, MetricResult
from paka_hf.utils.errors import ConfigError

logger = logging.getLogger(__name__)

PROTOCOLS = ("linear", "overcluster", "hummingbird")
DEFAULT_INPUT_SIZE = {"linear": 448, "overcluster": 448, "hummingbird": 504}


@dataclass
class EvaluationSettings:
    """Everything a run needs besides the model and the data (defaults: docs/EVALUATION.md).

    Args:
        linear: the linear probe's settings.
        overcluster: the overclustering's settings.
        hummingbird: the Hummingbird settings.
        input_size: the side, or ``(height, width)``, images are resized to (rounded down to multiples of the patch
            size); None for each protocol's default (448 / 448 / 504).
        augment_passes: augmented training passes (linear views, Hummingbird memory passes).
        crop_scale: the area range of the augmented crops.
        batch_size: images per forward pass.
        max_images: images per split; None for all.
        max_train_images: images of the training split, over ``max_images``; None for ``max_images``.
        published_conventions: score as the published numbers do (ADE20K's extra zero class, Hummingbird's std).
        device: where the backbone (and, unless their configs say otherwise, the probe and k-NN search) runs.
        num_workers: DataLoader workers.
        seed: the seed of the augmentations.
        progress: show progress bars.

    Example::

        from paka_hf.evaluation import EvaluationSettings, LinearProbeConfig
        settings = EvaluationSettings(linear=LinearProbeConfig(epochs=5), input_size=224, max_images=50)
    """

    linear: LinearProbeConfig = field(default_factory=LinearProbeConfig)
    overcluster: OverclusterConfig = field(default_factory=OverclusterConfig)
    hummingbird: HummingbirdConfig = field(default_factory=HummingbirdConfig)
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


def _input_size(settings: EvaluationSettings, protocol: str, patch_size: int) -> tuple[int, int]:
    size = as_size(settings.input_size if settings.input_size is not None else DEFAULT_INPUT_SIZE[protocol])
    fitted = tuple(max(patch_size, s // patch_size * patch_size) for s in size)
    if fitted != size:
        logger.warning("input size %s is not a multiple of the patch size %d; using %s", size, patch_size, fitted)
    return fitted  # type: ignore[return-value]


def run_evaluation(
    model_name_or_path: str | os.PathLike,
    dataset_name: str,
    protocols: Sequence[str] = ("linear",),
    *,
    data_dir: str | os.PathLike | None = None,
    train_split: str = "train",
    val_split: str = "val",
    settings: EvaluationSettings | None = None,
    backbone: torch.nn.Module | None = None,
    datasets: tuple[SegmentationDataset, SegmentationDataset] | None = None,
    timings: dict[str, float] | None = None,
    feature_cache: FeatureCache | None = None,
    **dataset_kwargs: Any,
) -> EvaluationReport:
    """Evaluate ``model_name_or_path`` (Hub id or local directory) on ``dataset_name``.

    ``backbone`` (a :class:`~paka_hf.modeling.backbones.PatchBackbone`) and ``datasets`` (train, val) skip
    loading; ``timings`` (a dict) receives wall seconds per step: ``features/<split>/...`` for each
    extraction and ``<protocol>`` for each protocol's own work (features excluded).
    ``feature_cache``: a :class:`~.features.FeatureCache` on the same ``backbone`` to reuse features
    across calls (e.g. the same features with two linear schedules).
    ``dataset_kwargs`` go to :func:`~.datasets.load_segmentation_dataset`.

    Args:
        model_name_or_path: a Hub id or a local folder (also recorded in the report).
        dataset_name: a benchmark name (:func:`~.datasets.load_segmentation_dataset`).
        protocols: a non-empty subset of :data:`PROTOCOLS`.
        data_dir: the on-disk dataset; None for the benchmark's Hub copy.
        train_split: the training split's name.
        val_split: the evaluation split's name.
        settings: the run's settings; None for the defaults.
        backbone: the backbone to evaluate instead of loading ``model_name_or_path``.
        datasets: ``(train, val)`` instead of loading them.
        timings: a dict that receives the wall seconds per step.
        feature_cache: a cache on ``backbone`` shared across calls.
        **dataset_kwargs: passed to :func:`~.datasets.load_segmentation_dataset`.

    Returns:
        The :class:`~.results.EvaluationReport`.

    Raises:
        ConfigError: no or an unknown protocol, or an unsupported model.
        ValueError: ``feature_cache`` was built on another backbone, or what the protocols raise.
        DatasetError: the datasets cannot be read (:func:`~.datasets.load_segmentation_dataset`).

    Example::

        from paka_hf.evaluation import EvaluationSettings, run_evaluation
        report = run_evaluation("facebook/dinov2-small", "camvid", ["linear", "hummingbird"],
                                data_dir="data/camvid", settings=EvaluationSettings(device="cuda"))
        report.save("results.json")
    """
    from paka_hf.modeling.backbones import PatchBackbone

    cfg = settings or EvaluationSettings()
    if cfg.linear.device is None:
        cfg = replace(cfg, linear=replace(cfg.linear, device=cfg.device))
    if cfg.hummingbird.device is None:
        cfg = replace(cfg, hummingbird=replace(cfg.hummingbird, device=cfg.device))
    protocols = list(protocols)
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown or not protocols:
        raise ConfigError(f"unknown protocol(s) {unknown}; choose from {', '.join(PROTOCOLS)}")
    timings = {} if timings is None else timings
    if backbone is None:
        backbone = PatchBackbone.from_pretrained(model_name_or_path)
    backbone = backbone.to(cfg.device).eval()
    for param in backbone.parameters():
        param.requires_grad_(False)
    needs_train = any(p != "overcluster" for p in protocols)  # overclustering only reads the val split
    if datasets is None:
        val_ds = load_segmentation_dataset(dataset_name, val_split, data_dir, **dataset_kwargs)
        train_ds = (
            load_segmentation_dataset(dataset_name, train_split, data_dir, **dataset_kwargs) if needs_train else None
        )
    else:
        train_ds, val_ds = datasets
    extra_zero = int(getattr(val_ds, "published_extra_zero_classes", 0)) if cfg.published_conventions else 0
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

    common = {**val_ds.describe(), "split": val_ds.split}
    report = EvaluationReport.for_model(model_name_or_path)
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
        else:
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
    for ds in (train_ds, val_ds):
        if ds is not None and ds.stats:
            logger.warning("%s/%s data issues handled: %s", ds.display_name, ds.split, dict(ds.stats))
            for result in report.results:
                result.settings.setdefault("data_issues", {})[ds.split] = dict(ds.stats)
    return report


def _round_list(values) -> list[float | None]:
    import math

    return [None if not math.isfinite(float(v)) else round(float(v), 4) for v in values]
