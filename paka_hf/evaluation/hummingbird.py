r"""Hummingbird dense retrieval (Balažević et al., NeurIPS 2023; docs/EVALUATION.md): in-context segmentation by k-NN.

Memory bank (from the training split, ``passes = 2`` augmented passes by default, ``N`` feature maps in all):

* keys: L2-normalised patch tokens ``k_m = f_m / ‖f_m‖ ∈ R^D``;
* values: soft patch labels ``y_m ∈ Δ^{C−1}``, the class histogram of the ``p × p`` ground-truth
  pixels under the patch (ignore pixels left out; a patch with no labelled pixel is not stored);
* ``memory_size`` (optional): keep ``K = max(1, ⌊memory_size / N⌋)`` patches of each training map, as the
  reference evaluator (open-hummingbird-eval v2) does. ``memory_sampling="rare_class"`` (its rule, the
  default) keeps the ``K`` patches of smallest score

  .. math::  s_i = u_i \sum_{c \in \mathcal{C}_i} n_c, \qquad u_i \sim U(0, 1),

  where ``𝒞_i`` is the set of classes present in patch ``i`` and ``n_c`` the number of patches of the map
  that hold class ``c``: patches of the map's rare classes are kept first, the uniform factor breaks ties
  and mixes. ``"uniform"`` keeps ``K`` labelled patches drawn uniformly without replacement
  (``s_i = u_i``). ``None`` keeps every labelled patch, the "full" bank.

Query: each evaluation patch ``q`` (L2-normalised) retrieves its ``k = 30`` nearest keys by cosine
similarity ``s_j = ⟨q, k_j⟩`` and predicts

.. math::  \hat y(q) = \sum_{j=1}^{k} \operatorname{softmax}_j(s_j / \tau)\, y_j, \qquad \tau = 0.02.

The ``C × h × w`` soft prediction of an image is upsampled bilinearly to the evaluation size (by
default the input resolution, where the masks live) and its argmax scored against the ground truth.

The k-NN search (:mod:`paka_hf.evaluation.knn`) is exact by default: ``"auto"`` runs ``torch_bf16`` on a CPU
with AMX (a bf16 scan whose proven error bound selects the keys re-scored in fp32: exact fp32 search's
neighbours, 4–10× faster than faiss), else faiss ``IndexFlatIP`` or torch (fp32 products; torch on a GPU); the
approximate ``faiss_ivf`` backend (``IndexIVFFlat``, ``nlist`` / ``nprobe``) has its recall@k against exact
search measured on a fixed sample of the queries and reported (:func:`hummingbird_retrieval`'s
``search_report``, the results JSON's settings). docs/EVALUATION.md lists every difference from the reference
evaluator.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from paka_hf.evaluation.features import DenseFeatures
from paka_hf.evaluation.knn import (
    KNN_BACKENDS,
    KnnIndex,
    TorchFlatIndex,
    build_knn_index,
    knn_recall,
)
from paka_hf.evaluation.knn import (
    knn_search as knn_search,  # re-exported: paka_hf.evaluation imports it from here
)
from paka_hf.evaluation.linear import resize_masks
from paka_hf.evaluation.metrics import SegmentationScores, confusion_matrix, segmentation_scores
from paka_hf.utils.errors import ConfigError, check_choice, check_positive_int

#: The values of ``HummingbirdConfig.memory_sampling`` / ``--memory_sampling``: the reference evaluator's
#: rare-class-first rule, or a uniform draw.
MEMORY_SAMPLING = ("rare_class", "uniform")


@dataclass
class HummingbirdConfig:
    """Settings of the Hummingbird protocol (defaults: docs/EVALUATION.md, full memory bank, exact search).

    Args:
        num_neighbors: the neighbours ``k`` each query patch retrieves.
        temperature: the softmax temperature of the neighbours' similarities.
        memory_size: the memory bank's size, ``⌊memory_size / N⌋`` patches of each of the ``N`` training maps;
            None keeps every labelled patch.
        memory_sampling: which patches of a map a bounded bank keeps, ``"rare_class"`` (the reference
            evaluator's rule: patches of the map's rarer classes first) or ``"uniform"``.
        eval_size: the side the masks are scored at; None for the input resolution.
        backend: the k-NN backend, ``"auto"``, ``"torch"``, ``"torch_bf16"``, ``"faiss"`` (exact) or
            ``"faiss_ivf"`` (approximate; :mod:`paka_hf.evaluation.knn`).
        ivf_nlist: ``faiss_ivf``: the inverted lists (k-means cells); 512 as the reference's ScaNN leaves.
        ivf_nprobe: ``faiss_ivf``: the lists searched per query; 32 as the reference's ScaNN leaves searched.
        recall_sample: ``faiss_ivf``: the query patches (a fixed random sample of those searched) on which its
            recall@k against exact search is measured; 0 to skip.
        query_chunk: query patches per search chunk (``torch_bf16`` splits a chunk among its worker threads).
        key_chunk: keys per chunk of the torch search (``torch_bf16`` uses its own cache-sized tiles).
        seed: the seed of the memory bank's draw, the IVF k-means and the recall sample.
        device: where the k-NN search runs; None for the CPU.

    Raises:
        ConfigError: an unknown backend or sampling rule, or a size that is not a positive integer.

    Example::

        HummingbirdConfig(num_neighbors=30, memory_size=1_000_000)  # for EvaluationSettings(hummingbird=...)
        HummingbirdConfig(backend="faiss_ivf", ivf_nlist=1024, ivf_nprobe=64)
    """

    num_neighbors: int = 30
    temperature: float = 0.02
    memory_size: int | None = None
    memory_sampling: str = "rare_class"
    eval_size: int | None = None  # None: the input resolution
    backend: str = "auto"
    ivf_nlist: int = 512
    ivf_nprobe: int = 32
    recall_sample: int = 1000
    query_chunk: int = 1024
    key_chunk: int = 32768
    seed: int = 0
    device: str | None = None  # where the k-NN search runs (None: CPU); the runner passes its --device

    def __post_init__(self):
        check_choice("the k-NN backend (--knn_backend)", self.backend, KNN_BACKENDS)
        check_choice("memory_sampling", self.memory_sampling, MEMORY_SAMPLING)
        for name in ("num_neighbors", "ivf_nlist", "ivf_nprobe", "query_chunk", "key_chunk"):
            check_positive_int(name, getattr(self, name))
        if self.memory_size is not None:
            check_positive_int("memory_size", self.memory_size)
        if self.recall_sample < 0:
            raise ConfigError(
                f"recall_sample must be 0 (no recall measured) or a positive count, got {self.recall_sample}"
            )
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be positive, got {self.temperature}")

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (for the results JSON).

        Returns:
            ``{field: value}``.
        """
        return asdict(self)


def patch_label_histograms(
    masks: torch.Tensor, patch_size: int, num_classes: int, ignore_index: int, chunk: int = 16
) -> torch.Tensor:
    """Per-patch class counts ``(N, h, w, C)`` of ``(N, h·p, w·p)`` masks (ignore pixels skipped).

    Args:
        masks: ``(N, h·p, w·p)`` integer masks.
        patch_size: ``p``.
        num_classes: ``C``.
        ignore_index: the mask value skipped.
        chunk: masks counted at once.

    Returns:
        ``(N, h, w, C)`` float32 counts.
    """
    n, height, width = masks.shape
    h, w = height // patch_size, width // patch_size
    ys = torch.arange(height) // patch_size
    xs = torch.arange(width) // patch_size
    cell = (ys[:, None] * w + xs[None, :]).reshape(-1)  # (H W,) patch index within an image
    out = torch.empty(n, h * w, num_classes, dtype=torch.float32)
    for start in range(0, n, chunk):
        m = masks[start : start + chunk].reshape(-1, height * width).long()
        b = m.shape[0]
        valid = m != ignore_index
        index = (torch.arange(b)[:, None] * (h * w) + cell[None, :]) * num_classes + m.clamp(0, num_classes - 1)
        counts = torch.bincount(index[valid], minlength=b * h * w * num_classes)
        out[start : start + b] = counts.reshape(b, h * w, num_classes).float()
    return out.reshape(n, h, w, num_classes)


def memory_sampling_scores(hist: torch.Tensor, sampling: str, generator: torch.Generator) -> torch.Tensor:
    r"""Scores ``(B, P)`` of ``B`` maps' ``P`` patches; a bounded bank keeps each map's smallest (module docstring).

    ``"rare_class"``: ``s_i = u_i Σ_{c ∈ 𝒞_i} n_c`` with ``𝒞_i`` the classes present in patch ``i`` and ``n_c``
    the patches of the map holding ``c``; ``"uniform"``: ``s_i = u_i``; ``u_i ∼ U(0, 1)`` drawn from
    ``generator``. Patches without a labelled pixel score ``+∞`` (never kept).

    Args:
        hist: ``(B, P, C)`` per-patch class counts (:func:`patch_label_histograms`).
        sampling: one of :data:`MEMORY_SAMPLING`.
        generator: the random generator of ``u``.

    Returns:
        ``(B, P)`` float32 scores.

    Raises:
        ConfigError: an unknown ``sampling``.
    """
    check_choice("memory_sampling", sampling, MEMORY_SAMPLING)
    presence = hist > 0  # (B, P, C): class c has a pixel in patch i
    labelled = presence.any(-1)
    score = torch.rand(labelled.shape, generator=generator)
    if sampling == "rare_class":
        patches_per_class = presence.sum(1, dtype=torch.float32)  # (B, C): n_c
        score = score * torch.einsum("bpc,bc->bp", presence.float(), patches_per_class)
    return score.masked_fill(~labelled, float("inf"))


def build_memory_bank(
    train: DenseFeatures,
    memory_size: int | None = None,
    seed: int = 0,
    sampling: str = "rare_class",
    *,
    chunk: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys ``(M, D)`` (float32, unit norm) and soft labels ``(M, C)`` (rows sum to 1).

    Maps are read ``chunk`` at a time, so beyond the bank itself only ``chunk × h·w × C`` counts are held.

    Args:
        train: the training features and masks (``N`` maps).
        memory_size: the bank's size, ``max(1, ⌊memory_size / N⌋)`` patches of each map (fewer where a map has
            fewer labelled patches); None for every patch with a labelled pixel.
        seed: the seed of the draw.
        sampling: which patches a bounded bank keeps, one of :data:`MEMORY_SAMPLING`
            (:func:`memory_sampling_scores`).
        chunk: maps processed at once.

    Returns:
        ``(keys, labels)``, in map order and, within a map, patch (row-major) order.

    Raises:
        ConfigError: an unknown ``sampling``.
        ValueError: no training patch has a labelled pixel.
    """
    check_choice("memory_sampling", sampling, MEMORY_SAMPLING)
    n, d, h, w = train.features.shape
    per_map = None if memory_size is None else max(1, int(memory_size) // n)
    generator = torch.Generator().manual_seed(seed)
    keys, labels = [], []
    for start in range(0, n, chunk):
        masks = train.masks[start : start + chunk]
        b = masks.shape[0]
        hist = patch_label_histograms(masks, train.patch_size, train.num_classes, train.ignore_index)
        hist = hist.reshape(b, h * w, -1)
        total = hist.sum(-1)  # (b, h w) labelled pixels per patch
        keep = total > 0
        if per_map is not None and per_map < h * w:
            smallest = memory_sampling_scores(hist, sampling, generator).topk(per_map, dim=1, largest=False).indices
            keep &= torch.zeros_like(keep).scatter_(1, smallest, True)  # +inf (unlabelled) picks drop out here
        feats = train.features[start : start + b].permute(0, 2, 3, 1).reshape(b, h * w, d)
        keys.append(feats[keep].float())
        labels.append(hist[keep] / total[keep][:, None])
    keys_t = F.normalize(torch.cat(keys), dim=-1)
    if keys_t.shape[0] == 0:
        raise ValueError("the memory bank is empty: no training patch has a labelled pixel")
    return keys_t, torch.cat(labels)


def _query_patches(features: torch.Tensor) -> torch.Tensor:
    """``(B, D, h, w)`` feature maps as ``(B·h·w, D)`` unit-norm float32 queries (map-major, row-major)."""
    d = features.shape[1]
    return F.normalize(features.permute(0, 2, 3, 1).reshape(-1, d).float(), dim=-1)


def sampled_recall(
    index: KnnIndex, keys: torch.Tensor, val: DenseFeatures, k: int, sample: int, seed: int, device=None
) -> tuple[float, int]:
    """Recall@``k`` of ``index`` against exact search on ``sample`` query patches of ``val`` (:func:`knn_recall`).

    The sample is a fixed (seeded) subset of the ``N·h·w`` query patches the protocol searches, normalised the
    same way, so the recall is that of the run's own searches.

    Args:
        index: the index measured.
        keys: its ``(M, D)`` keys.
        val: the evaluation features.
        k: the neighbours per query.
        sample: the query patches measured (at most all of them).
        seed: the seed of the sample.
        device: where the exact search runs; None for the CPU.

    Returns:
        ``(recall, queries measured)``.
    """
    n, _, h, w = val.features.shape
    count = min(int(sample), n * h * w)
    pick = torch.randperm(n * h * w, generator=torch.Generator().manual_seed(seed))[:count].sort().values
    position = pick % (h * w)
    queries = val.features[pick // (h * w), :, position // w, position % w]  # (count, D)
    queries = F.normalize(queries.float(), dim=-1)
    _, found = index.search(queries, k)
    _, exact = TorchFlatIndex(keys, device).search(queries, k)
    return knn_recall(found, exact), count


def hummingbird_retrieval(
    train: DenseFeatures,
    val: DenseFeatures,
    config: HummingbirdConfig | None = None,
    *,
    extra_zero_classes: int = 0,
    progress: bool = True,
    search_report: dict[str, Any] | None = None,
) -> tuple[SegmentationScores, torch.Tensor, int]:
    """Build the bank from ``train``, segment ``val`` by retrieval.

    The k-NN index is built once (:func:`~paka_hf.evaluation.knn.build_knn_index`) and searched chunk by chunk.

    Args:
        train: the memory bank's features and masks.
        val: the features and masks to segment.
        config: the protocol's settings; None for the defaults.
        extra_zero_classes: classes with IoU 0 added to the mean (:func:`~paka_hf.evaluation.metrics.segmentation_scores`).
        progress: show a progress bar.
        search_report: a dict that receives what the results JSON records about the search:
            ``knn_backend_used`` (``"auto"`` resolved), ``knn_exact``, ``knn_index``, for ``faiss_ivf``
            ``ivf_nlist_used`` / ``ivf_nprobe_used`` / ``knn_exact_fallback_queries``, and
            ``knn_recall_at_k`` (in ``[0, 1]``; None for an exact search) over ``knn_recall_queries`` queries.

    Returns:
        ``(scores, confusion, memory_size)``: scores in percent, the ``(C, C)`` confusion matrix and the
        memory-bank size ``M``.

    Raises:
        ValueError: ``train`` and ``val`` differ in feature dimension or classes, or the memory bank is empty.
        ImportError: a faiss backend without faiss installed.

    Example::

        from paka_hf.evaluation import HummingbirdConfig, hummingbird_retrieval
        report = {}
        scores, _, bank_size = hummingbird_retrieval(
            train_features, val_features, HummingbirdConfig(backend="faiss_ivf"), search_report=report
        )
        print(scores.mean_iou, report["knn_recall_at_k"])
    """
    cfg = config or HummingbirdConfig()
    if train.num_classes != val.num_classes or train.features.shape[1] != val.features.shape[1]:
        raise ValueError("train and val features must share the feature dimension and the class list")
    keys, labels = build_memory_bank(train, cfg.memory_size, cfg.seed, cfg.memory_sampling)
    index = build_knn_index(
        keys,
        cfg.backend,
        device=cfg.device,
        query_chunk=cfg.query_chunk,
        key_chunk=cfg.key_chunk,
        ivf_nlist=cfg.ivf_nlist,
        ivf_nprobe=cfg.ivf_nprobe,
        seed=cfg.seed,
    )
    n, _, h, w = val.features.shape
    targets = val.masks if cfg.eval_size is None else resize_masks(val.masks, cfg.eval_size)
    size = tuple(targets.shape[-2:])
    conf = torch.zeros(val.num_classes, val.num_classes, dtype=torch.int64)
    images_per_chunk = max(1, cfg.query_chunk // (h * w))  # bounds the (Q, k, C) label gather too
    for start in tqdm(range(0, n, images_per_chunk), desc="hummingbird", unit="chunk", disable=not progress):
        feats = val.features[start : start + images_per_chunk]
        b = feats.shape[0]
        sims, idx = index.search(_query_patches(feats), cfg.num_neighbors)
        weights = torch.softmax(sims / cfg.temperature, dim=1)  # (Q, k)
        soft = torch.einsum("qk,qkc->qc", weights, labels[idx])  # (Q, C)
        soft = soft.reshape(b, h, w, -1).permute(0, 3, 1, 2)
        up = F.interpolate(soft, size=size, mode="bilinear", align_corners=False)
        conf += confusion_matrix(up.argmax(1), targets[start : start + b].long(), val.num_classes, val.ignore_index)
    report = {**index.describe(), "knn_recall_at_k": None, "knn_recall_queries": None}
    if not index.exact and cfg.recall_sample > 0:
        k = min(cfg.num_neighbors, index.num_keys)
        recall, count = sampled_recall(index, keys, val, k, cfg.recall_sample, cfg.seed, cfg.device)
        report.update(knn_recall_at_k=round(recall, 6), knn_recall_queries=count)
    if search_report is not None:
        search_report.update(report)
    return segmentation_scores(conf, extra_zero_classes), conf, int(keys.shape[0])
