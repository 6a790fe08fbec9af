"""Overclustering: unsupervised k-means on frozen patch tokens (the Leopart / NeCo protocol; docs/EVALUATION.md).

For the ``N`` evaluation images with patch grids ``F_n ∈ R^{D × h × w}``:

1. stack all tokens, ``X ∈ R^{(N h w) × D}``; standardise each dimension,
   ``X̃ = (X − μ) / σ`` (``sklearn.preprocessing.StandardScaler``);
2. project to ``d = 50`` dimensions with PCA (``sklearn.decomposition.PCA``; ``min(50, D)``);
3. k-means with ``K`` clusters (``sklearn.cluster.KMeans``, one initialisation per seed, ``seeds``
   seeds), optionally fitted on a random subset of ``max_fit_patches`` tokens and applied to all;
4. nearest-upsample every ``h × w`` cluster map to ``eval_size × eval_size`` and count the
   cluster/class overlap ``O ∈ N^{K × C}`` against the ground truth nearest-resized to the same size
   (ignore pixels skipped);
5. match clusters to classes (Hungarian when ``K ≤ C``, greedy many-to-one by precision when
   ``K > C``; :mod:`.metrics`) and score the relabelled maps.

Reported per ``K``: the mean mIoU over seeds and its sample standard deviation (``ddof = 1``), the
per-seed values, the per-class IoU and pixel accuracy averaged over seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from paka_hf.evaluation.features import DenseFeatures
from paka_hf.evaluation.linear import resize_masks
from paka_hf.evaluation.metrics import (
    SegmentationScores,
    confusion_matrix,
    match_clusters,
    matched_confusion,
    segmentation_scores,
)


@dataclass
class OverclusterConfig:
    """Settings of the overclustering protocol (defaults: docs/EVALUATION.md, with K = #classes and 100).

    Args:
        num_clusters: the values of ``K``; None for ``(#classes, 100, 300, 500)``.
        seeds: one k-means fit per seed and ``K``.
        pca_dim: the PCA dimension of the tokens.
        eval_size: the side clusters and masks are compared at.
        max_fit_patches: fit k-means on at most this many tokens (drawn per seed); None for all.
        kmeans_max_iter: k-means iterations.

    Example::

        OverclusterConfig(num_clusters=[100, 300], seeds=[0, 1])  # for EvaluationSettings(overcluster=...)
    """

    num_clusters: Sequence[int] | None = None  # None: (#classes, 100, 300, 500)
    seeds: Sequence[int] = (0, 1, 2, 3, 4)
    pca_dim: int = 50
    eval_size: int = 100
    max_fit_patches: int | None = None
    kmeans_max_iter: int = 300

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (for the results JSON).

        Returns:
            ``{field: value}``, sequences as lists.
        """
        out = asdict(self)
        out["num_clusters"] = None if self.num_clusters is None else list(self.num_clusters)
        out["seeds"] = list(self.seeds)
        return out


@dataclass
class OverclusterResult:
    """Scores for one ``K`` (percent).

    Args:
        num_clusters: ``K``.
        mean_iou: the mIoU, mean over seeds.
        std: its sample standard deviation over seeds; None for one seed.
        seed_values: the mIoU of each seed.
        seeds: the seeds.
        per_class_iou: ``(C,)`` IoU per class, mean over seeds (NaN where never defined).
        pixel_accuracy: the pixel accuracy, mean over seeds.
        matching: ``"hungarian"`` or ``"greedy"``.
        per_seed: the scores of each seed.
    """

    num_clusters: int
    mean_iou: float
    std: float | None
    seed_values: list[float]
    seeds: list[int]
    per_class_iou: np.ndarray
    pixel_accuracy: float
    matching: str
    per_seed: list[SegmentationScores] = field(default_factory=list, repr=False)


def _nanmean_rows(values: np.ndarray) -> np.ndarray:
    """Column means ignoring NaN; a column that is NaN for every seed stays NaN (no warning)."""
    finite = np.isfinite(values)
    sums = np.where(finite, values, 0.0).sum(0)
    counts = finite.sum(0)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _tokens(features: torch.Tensor) -> np.ndarray:
    n, d, h, w = features.shape
    return features.permute(0, 2, 3, 1).reshape(n * h * w, d).float().numpy()


def project_tokens(val: DenseFeatures, pca_dim: int = 50, seed: int = 0) -> np.ndarray:
    """Standardised, PCA-projected tokens ``(N h w, min(pca_dim, D))`` (steps 1–2 above).

    Args:
        val: the features.
        pca_dim: the PCA dimension.
        seed: the PCA's random state.

    Returns:
        float32 ``(N h w, dim)`` tokens.
    """
    x = StandardScaler().fit_transform(_tokens(val.features))
    dim = min(int(pca_dim), x.shape[1], x.shape[0])
    return PCA(n_components=dim, random_state=seed).fit_transform(x).astype(np.float32)


def overclustering(
    val: DenseFeatures,
    config: OverclusterConfig | None = None,
    *,
    extra_zero_classes: int = 0,
    progress: bool = True,
) -> list[OverclusterResult]:
    """Run the protocol on ``val`` for every ``K`` in ``config.num_clusters``.

    Args:
        val: the features and masks to cluster and score.
        config: the protocol's settings; None for the defaults.
        extra_zero_classes: classes with IoU 0 added to the mean (:func:`~paka_hf.evaluation.metrics.segmentation_scores`).
        progress: show a progress bar over the k-means fits (one per ``K`` and seed, with an ETA; the running
            ``K`` and seed beside it).

    Returns:
        One :class:`OverclusterResult` per ``K``, in order.

    Raises:
        ValueError: a ``K`` larger than the number of patch tokens.

    Example::

        from paka_hf.evaluation import OverclusterConfig, overclustering
        result = overclustering(val_features, OverclusterConfig(num_clusters=[100], seeds=[0]))
    """
    cfg = config or OverclusterConfig()
    ks = list(cfg.num_clusters) if cfg.num_clusters is not None else [val.num_classes, 100, 300, 500]
    n, _, h, w = val.features.shape
    z = project_tokens(val, cfg.pca_dim)
    targets = resize_masks(val.masks, cfg.eval_size)
    for k in ks:  # checked before any fit, so a bad K costs no k-means time
        if k > z.shape[0]:
            raise ValueError(f"K={k} clusters but only {z.shape[0]} patch tokens; use fewer clusters or more images")
    results = []
    with tqdm(total=len(ks) * len(cfg.seeds), desc="overclustering", unit="fit", disable=not progress) as bar:
        for k in ks:
            per_seed = []
            for seed in cfg.seeds:
                bar.set_postfix(K=k, seed=seed)  # a fit's time grows with K: say which one runs
                rng = np.random.default_rng(seed)
                fit = z
                if cfg.max_fit_patches is not None and z.shape[0] > cfg.max_fit_patches:
                    fit = z[rng.choice(z.shape[0], cfg.max_fit_patches, replace=False)]
                kmeans = KMeans(n_clusters=k, n_init=1, random_state=seed, max_iter=cfg.kmeans_max_iter).fit(fit)
                assign = torch.from_numpy(kmeans.predict(z).astype(np.int64)).reshape(n, 1, h, w)
                clusters = F.interpolate(assign.float(), size=targets.shape[-2:], mode="nearest-exact")[:, 0].long()
                overlap = confusion_matrix(clusters, targets, val.num_classes, val.ignore_index, num_pred_classes=k).T
                mapping = match_clusters(overlap, "auto")
                conf = matched_confusion(overlap, mapping, val.num_classes)
                per_seed.append(segmentation_scores(conf, extra_zero_classes))
                bar.update(1)
            values = [s.mean_iou for s in per_seed]
            results.append(
                OverclusterResult(
                    num_clusters=k,
                    mean_iou=float(np.mean(values)),
                    std=float(np.std(values, ddof=1)) if len(values) > 1 else None,
                    seed_values=values,
                    seeds=list(cfg.seeds),
                    per_class_iou=_nanmean_rows(np.stack([s.per_class_iou for s in per_seed])),
                    pixel_accuracy=float(np.mean([s.pixel_accuracy for s in per_seed])),
                    matching="hungarian" if k <= val.num_classes else "greedy",
                    per_seed=per_seed,
                )
            )
    return results
