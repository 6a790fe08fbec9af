r"""Hummingbird dense retrieval (Balažević et al., NeurIPS 2023; docs/EVALUATION.md): in-context segmentation by k-NN.

Memory bank (from the training split, ``passes = 2`` augmented passes by default):

* keys: L2-normalised patch tokens ``k_m = f_m / ‖f_m‖ ∈ R^D``;
* values: soft patch labels ``y_m ∈ Δ^{C−1}``, the class histogram of the ``p × p`` ground-truth
  pixels under the patch (ignore pixels left out; a patch with no labelled pixel is not stored);
* ``memory_size`` (optional): keep ``⌊memory_size / N⌋`` patches per training map, drawn uniformly
  without replacement (``None`` keeps every labelled patch, the "full" bank).

Query: each evaluation patch ``q`` (L2-normalised) retrieves its ``k = 30`` nearest keys by cosine
similarity ``s_j = ⟨q, k_j⟩`` and predicts

.. math::  \hat y(q) = \sum_{j=1}^{k} \operatorname{softmax}_j(s_j / \tau)\, y_j, \qquad \tau = 0.02.

The ``C × h × w`` soft prediction of an image is upsampled bilinearly to the evaluation size (by
default the input resolution, where the masks live) and its argmax scored against the ground truth.

The k-NN search is exact: in torch, queries and keys are processed in chunks
(``query_chunk × key_chunk`` similarities at a time, a running top-k merged per key chunk), so memory
is bounded whatever the bank size; with ``backend="faiss"`` (or ``"auto"`` when ``faiss`` is
installed) an exact ``IndexFlatIP`` is used instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from paka_hf.evaluation.features import DenseFeatures
from paka_hf.evaluation.linear import resize_masks
from paka_hf.evaluation.metrics import SegmentationScores, confusion_matrix, segmentation_scores


@dataclass
class HummingbirdConfig:
    """Settings of the Hummingbird protocol (defaults: docs/EVALUATION.md, full memory bank).

    Args:
        num_neighbors: the neighbours ``k`` each query patch retrieves.
        temperature: the softmax temperature of the neighbours' similarities.
        memory_size: the memory bank's size (patches drawn evenly per training map); None keeps every labelled patch.
        eval_size: the side the masks are scored at; None for the input resolution.
        backend: the k-NN backend, ``"auto"``, ``"torch"`` or ``"faiss"`` (:func:`knn_search`).
        query_chunk: query patches per search chunk.
        key_chunk: keys per chunk of the torch search.
        seed: the seed of the memory bank's draw.
        device: where the k-NN search runs; None for the CPU.

    Example::

        HummingbirdConfig(num_neighbors=30, memory_size=1_000_000)  # for EvaluationSettings(hummingbird=...)
    """

    num_neighbors: int = 30
    temperature: float = 0.02
    memory_size: int | None = None
    eval_size: int | None = None  # None: the input resolution
    backend: str = "auto"
    query_chunk: int = 1024
    key_chunk: int = 32768
    seed: int = 0
    device: str | None = None  # where the k-NN search runs (None: CPU); the runner passes its --device

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


def build_memory_bank(
    train: DenseFeatures, memory_size: int | None = None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys ``(M, D)`` (float32, unit norm) and soft labels ``(M, C)`` (rows sum to 1).

    Args:
        train: the training features and masks.
        memory_size: the bank's size, drawn evenly per feature map; None for every patch with a labelled pixel.
        seed: the seed of the draw.

    Returns:
        ``(keys, labels)``.

    Raises:
        ValueError: no training patch has a labelled pixel.
    """
    n, d, h, w = train.features.shape
    hist = patch_label_histograms(train.masks, train.patch_size, train.num_classes, train.ignore_index)
    hist = hist.reshape(n, h * w, -1)
    total = hist.sum(-1)  # (n, h w) labelled pixels per patch
    feats = train.features.permute(0, 2, 3, 1).reshape(n, h * w, d)
    generator = torch.Generator().manual_seed(seed)
    per_map = None if memory_size is None else max(1, int(memory_size) // n)
    keys, labels = [], []
    for i in range(n):
        idx = torch.nonzero(total[i] > 0).squeeze(1)
        if per_map is not None and idx.numel() > per_map:
            idx = idx[torch.randperm(idx.numel(), generator=generator)[:per_map]]
        keys.append(feats[i, idx])
        labels.append(hist[i, idx] / total[i, idx, None])
    keys_t = F.normalize(torch.cat(keys).float(), dim=-1)
    if keys_t.shape[0] == 0:
        raise ValueError("the memory bank is empty: no training patch has a labelled pixel")
    return keys_t, torch.cat(labels)


def _faiss():
    try:
        import faiss  # type: ignore[import-not-found]
    except ImportError:
        return None
    return faiss


def knn_search(
    queries: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    *,
    backend: str = "auto",
    query_chunk: int = 1024,
    key_chunk: int = 32768,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` inner-product search; returns similarities and indices, both ``(Q, k)``.

    ``backend``: ``"torch"`` (chunked; peak extra memory ≈ ``query_chunk × (key_chunk + k)`` floats),
    ``"faiss"`` (``IndexFlatIP``), or ``"auto"`` (faiss when importable). ``device``: where the torch
    search runs (e.g. ``"cuda"``; keys are copied there once); results come back on the CPU.

    Args:
        queries: ``(Q, D)`` query vectors.
        keys: ``(M, D)`` key vectors.
        k: the neighbours per query (at most ``M``).
        backend: ``"auto"``, ``"torch"`` or ``"faiss"``.
        query_chunk: queries per chunk.
        key_chunk: keys per chunk (torch).
        progress: show a progress bar.
        device: where the torch search runs; None for the CPU.

    Returns:
        ``(similarities, indices)``, ``(Q, min(k, M))`` each, on the CPU.

    Raises:
        ValueError: queries and keys differ in dimension, or an unknown backend.
        ImportError: ``backend="faiss"`` without faiss installed.
    """
    if queries.shape[1] != keys.shape[1]:
        raise ValueError(f"queries {tuple(queries.shape)} and keys {tuple(keys.shape)} differ in dimension")
    k = min(int(k), keys.shape[0])
    faiss = _faiss() if backend in ("auto", "faiss") else None
    if backend == "faiss" and faiss is None:
        raise ImportError("backend='faiss' needs the faiss package (pip install faiss-cpu); or use backend='torch'")
    if backend not in ("auto", "faiss", "torch"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'faiss', got {backend!r}")
    if faiss is not None and (device is None or torch.device(device).type == "cpu"):
        index = faiss.IndexFlatIP(keys.shape[1])
        index.add(keys.float().contiguous().numpy())
        sims, idx = index.search(queries.float().contiguous().numpy(), k)
        return torch.from_numpy(sims), torch.from_numpy(idx).long()
    device = torch.device(device or "cpu")
    keys = keys.to(device)
    all_sims, all_idx = [], []
    for qs in tqdm(range(0, queries.shape[0], query_chunk), desc="k-NN search", unit="chunk", disable=not progress):
        q = queries[qs : qs + query_chunk].to(device).float()
        best_s = torch.full((q.shape[0], 0), float("-inf"), device=device)
        best_i = torch.zeros((q.shape[0], 0), dtype=torch.long, device=device)
        for ks in range(0, keys.shape[0], key_chunk):
            sims = q @ keys[ks : ks + key_chunk].float().T
            top_s, top_i = sims.topk(min(k, sims.shape[1]), dim=1)
            merged_s = torch.cat([best_s, top_s], 1)
            merged_i = torch.cat([best_i, top_i + ks], 1)
            best_s, pos = merged_s.topk(min(k, merged_s.shape[1]), dim=1)
            best_i = merged_i.gather(1, pos)
        all_sims.append(best_s.cpu())
        all_idx.append(best_i.cpu())
    return torch.cat(all_sims), torch.cat(all_idx)


def hummingbird_retrieval(
    train: DenseFeatures,
    val: DenseFeatures,
    config: HummingbirdConfig | None = None,
    *,
    extra_zero_classes: int = 0,
    progress: bool = True,
) -> tuple[SegmentationScores, torch.Tensor, int]:
    """Build the bank from ``train``, segment ``val`` by retrieval.

    Returns (scores in percent, confusion matrix ``(C, C)``, memory-bank size ``M``).

    Args:
        train: the memory bank's features and masks.
        val: the features and masks to segment.
        config: the protocol's settings; None for the defaults.
        extra_zero_classes: classes with IoU 0 added to the mean (:func:`~paka_hf.evaluation.metrics.segmentation_scores`).
        progress: show a progress bar.

    Returns:
        ``(scores, confusion, memory_size)``.

    Raises:
        ValueError: ``train`` and ``val`` differ in feature dimension or classes, or the memory bank is empty.

    Example::

        from paka_hf.evaluation import HummingbirdConfig, hummingbird_retrieval
        scores, _, bank_size = hummingbird_retrieval(train_features, val_features, HummingbirdConfig(num_neighbors=10))
    """
    cfg = config or HummingbirdConfig()
    if train.num_classes != val.num_classes or train.features.shape[1] != val.features.shape[1]:
        raise ValueError("train and val features must share the feature dimension and the class list")
    keys, labels = build_memory_bank(train, cfg.memory_size, cfg.seed)
    n, d, h, w = val.features.shape
    targets = val.masks if cfg.eval_size is None else resize_masks(val.masks, cfg.eval_size)
    size = tuple(targets.shape[-2:])
    conf = torch.zeros(val.num_classes, val.num_classes, dtype=torch.int64)
    images_per_chunk = max(1, cfg.query_chunk // (h * w))  # bounds the (Q, k, C) label gather too
    for start in tqdm(range(0, n, images_per_chunk), desc="hummingbird", unit="chunk", disable=not progress):
        feats = val.features[start : start + images_per_chunk]
        b = feats.shape[0]
        queries = F.normalize(feats.permute(0, 2, 3, 1).reshape(-1, d).float(), dim=-1)
        sims, idx = knn_search(
            queries,
            keys,
            cfg.num_neighbors,
            backend=cfg.backend,
            query_chunk=cfg.query_chunk,
            key_chunk=cfg.key_chunk,
            progress=False,
            device=cfg.device,
        )
        weights = torch.softmax(sims / cfg.temperature, dim=1)  # (Q, k)
        soft = torch.einsum("qk,qkc->qc", weights, labels[idx])  # (Q, C)
        soft = soft.reshape(b, h, w, -1).permute(0, 3, 1, 2)
        up = F.interpolate(soft, size=size, mode="bilinear", align_corners=False)
        conf += confusion_matrix(up.argmax(1), targets[start : start + b].long(), val.num_classes, val.ignore_index)
    return segmentation_scores(conf, extra_zero_classes), conf, int(keys.shape[0])
