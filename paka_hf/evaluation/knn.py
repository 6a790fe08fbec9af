r"""Top-``k`` inner-product search over a fixed key set (the Hummingbird memory bank): exact or approximate.

For unit-norm keys ``k_m`` and a query ``q`` the search returns the ``k`` largest ``s_m = ⟨q, k_m⟩`` and their
indices ``m``. Backends (:data:`KNN_BACKENDS`, ``HummingbirdConfig.backend``, ``--knn_backend``):

* ``"torch"``: exact; queries × keys in chunks (``query_chunk × key_chunk`` similarities at a time) with a
  running top-``k`` merged per key chunk, so memory stays bounded whatever the bank size; runs on ``device``
  (the GPU with ``--device cuda``, where it computes what the reference evaluator's ``GpuIndexFlatIP`` does).
* ``"faiss"``: exact, faiss ``IndexFlatIP`` on the CPU (the CPU build of the index the reference evaluator,
  open-hummingbird-eval v2, runs on the GPU).
* ``"faiss_ivf"``: approximate, faiss ``IndexIVFFlat`` with the inner-product metric: spherical k-means splits
  the keys into ``nlist`` lists; a query is compared exactly with every key of the ``nprobe`` lists whose
  centroids are nearest to it. A neighbour is missed only when it sits in a list that is not probed.
* ``"auto"``: ``"faiss"`` when faiss is importable and the search runs on the CPU, else ``"torch"``.

Why IVF (and not HNSW) as the approximate index: (1) it is faiss's counterpart of the reference evaluator's
approximate search, ScaNN's tree (k-means partition into 512 leaves, 32 searched per query, candidates
re-scored exactly): IVF also partitions by k-means and scores the probed lists' keys exactly, so the reference's
512 / 32 carry over as ``nlist`` / ``nprobe`` (the defaults); (2) it is reproducible: k-means is seeded and a
search is deterministic, whereas HNSW's graph depends on the insertion order across threads; (3) it builds in
one k-means over at most ``256 · nlist`` sampled keys plus one assignment pass and stores no more than the keys
and their list ids, where HNSW inserts every key into a graph and keeps ``2 × M`` links per key (for a
10-million-patch bank, minutes and gigabytes more).

An approximate search's quality is its recall@``k`` against exact search, :func:`knn_recall`, which
:func:`~paka_hf.evaluation.hummingbird.hummingbird_retrieval` measures on a fixed sample of its queries and
records in the results JSON.

Reference: J. Johnson, M. Douze, H. Jégou, "Billion-scale similarity search with GPUs", IEEE TBD 2019 (faiss).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from paka_hf.utils.errors import check_choice, check_positive_int

logger = logging.getLogger(__name__)

#: The values of ``HummingbirdConfig.backend`` / ``--knn_backend``.
KNN_BACKENDS = ("auto", "torch", "faiss", "faiss_ivf")
#: faiss's k-means wants at least this many training points per list (it warns below; fewer lists are used then).
MIN_POINTS_PER_LIST = 39


def _faiss():
    """The ``faiss`` module, or ``None`` when it is not installed (it is the optional extra ``[faiss]``)."""
    try:
        import faiss  # type: ignore[import-not-found]
    except ImportError:
        return None
    return faiss


def _require_faiss(backend: str):
    faiss = _faiss()
    if faiss is None:
        raise ImportError(
            f"backend={backend!r} needs the faiss package (pip install 'paka_hf[faiss]' or faiss-cpu); "
            "or use backend='torch'"
        )
    return faiss


def _numpy32(x: torch.Tensor) -> np.ndarray:
    """``x`` as a C-contiguous float32 array on the CPU (what faiss reads)."""
    return np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())


class KnnIndex:
    """A top-``k`` inner-product index over ``M`` keys of dimension ``D``, built once and searched many times.

    Attributes:
        backend: the backend that searches (``"torch"``, ``"faiss"`` or ``"faiss_ivf"``; never ``"auto"``).
        exact: whether the search is exact.
        num_keys: ``M``.
        dim: ``D``.
    """

    backend = ""
    exact = True

    def __init__(self, keys: torch.Tensor):
        if keys.ndim != 2 or keys.shape[0] == 0:
            raise ValueError(f"keys must be a non-empty (M, D) matrix, got shape {tuple(keys.shape)}")
        self.num_keys, self.dim = int(keys.shape[0]), int(keys.shape[1])

    def search(self, queries: torch.Tensor, k: int, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The top-``k`` keys of each query.

        Args:
            queries: ``(Q, D)`` query vectors.
            k: neighbours per query; at most ``M`` are returned.
            progress: show a progress bar (torch backend).

        Returns:
            ``(similarities, indices)``: ``(Q, min(k, M))`` float32 and int64, best first, on the CPU.

        Raises:
            ValueError: the queries' dimension is not ``D``.
        """
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries {tuple(queries.shape)} and keys (M, {self.dim}) differ in dimension")
        return self._search(queries, min(int(k), self.num_keys), progress)

    def _search(self, queries: torch.Tensor, k: int, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What the results JSON records about the search.

        Returns:
            ``{"knn_backend_used": ..., "knn_exact": ..., "knn_index": ...}`` (and the IVF settings used).
        """
        return {"knn_backend_used": self.backend, "knn_exact": self.exact, "knn_index": type(self).__name__}


class TorchFlatIndex(KnnIndex):
    """Exact search in torch: chunked matrix products with a running top-``k``.

    Peak extra memory ≈ ``query_chunk × (key_chunk + k)`` floats on ``device``; the keys are copied there once.

    Args:
        keys: ``(M, D)`` keys.
        device: where the search runs; None for the CPU.
        query_chunk: queries per chunk.
        key_chunk: keys per chunk.
    """

    backend = "torch"

    def __init__(
        self,
        keys: torch.Tensor,
        device: str | torch.device | None = None,
        query_chunk: int = 1024,
        key_chunk: int = 32768,
    ):
        super().__init__(keys)
        self.device = torch.device(device or "cpu")
        self.keys = keys.to(self.device, torch.float32)
        self.query_chunk, self.key_chunk = int(query_chunk), int(key_chunk)

    def _search(self, queries: torch.Tensor, k: int, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
        all_sims, all_idx = [], []
        starts = range(0, queries.shape[0], self.query_chunk)
        for qs in tqdm(starts, desc="k-NN search", unit="chunk", disable=not progress):
            q = queries[qs : qs + self.query_chunk].to(self.device, torch.float32)
            best_s = torch.full((q.shape[0], 0), float("-inf"), device=self.device)
            best_i = torch.zeros((q.shape[0], 0), dtype=torch.long, device=self.device)
            for ks in range(0, self.num_keys, self.key_chunk):
                sims = q @ self.keys[ks : ks + self.key_chunk].T
                top_s, top_i = sims.topk(min(k, sims.shape[1]), dim=1)
                merged_s = torch.cat([best_s, top_s], 1)
                merged_i = torch.cat([best_i, top_i + ks], 1)
                best_s, pos = merged_s.topk(min(k, merged_s.shape[1]), dim=1)
                best_i = merged_i.gather(1, pos)
            all_sims.append(best_s.cpu())
            all_idx.append(best_i.cpu())
        if not all_sims:
            return torch.zeros(0, k), torch.zeros(0, k, dtype=torch.long)
        return torch.cat(all_sims), torch.cat(all_idx)

    def describe(self) -> dict[str, Any]:
        """See :meth:`KnnIndex.describe`."""
        return {**super().describe(), "knn_index": "chunked matmul + top-k (torch)"}


class FaissFlatIndex(KnnIndex):
    """Exact search with faiss ``IndexFlatIP`` (CPU).

    Args:
        keys: ``(M, D)`` keys (copied into the index as float32).
        faiss: the faiss module.
    """

    backend = "faiss"

    def __init__(self, keys: torch.Tensor, faiss):
        super().__init__(keys)
        self.index = faiss.IndexFlatIP(self.dim)
        self.index.add(_numpy32(keys))

    def _search(self, queries: torch.Tensor, k: int, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
        sims, idx = self.index.search(_numpy32(queries), k)
        return torch.from_numpy(sims), torch.from_numpy(idx).long()

    def describe(self) -> dict[str, Any]:
        """See :meth:`KnnIndex.describe`."""
        return {**super().describe(), "knn_index": "IndexFlatIP (faiss)"}


class FaissIVFIndex(KnnIndex):
    """Approximate search with faiss ``IndexIVFFlat`` on the inner product (see the module docstring).

    The lists are trained with faiss's spherical k-means (seeded with ``seed``; at most 256 sampled keys per
    list). ``nlist`` is lowered to ``M // 39`` when the bank has fewer than 39 keys per list (faiss's minimum
    for k-means), and ``nprobe`` to ``nlist``; :meth:`describe` records the values used. A query whose probed
    lists hold fewer than ``k`` keys gets ``-1`` indices from faiss; such queries are searched exactly instead
    (counted in ``knn_exact_fallback_queries``), so every query has ``k`` real neighbours.

    Args:
        keys: ``(M, D)`` keys.
        faiss: the faiss module.
        nlist: the number of lists (k-means centroids).
        nprobe: the lists searched per query.
        seed: the k-means seed.
    """

    backend = "faiss_ivf"
    exact = False

    def __init__(self, keys: torch.Tensor, faiss, nlist: int = 512, nprobe: int = 32, seed: int = 0):
        super().__init__(keys)
        self.nlist = max(1, min(int(nlist), self.num_keys // MIN_POINTS_PER_LIST))
        self.nprobe = max(1, min(int(nprobe), self.nlist))
        if (self.nlist, self.nprobe) != (nlist, nprobe):
            logger.warning(
                "faiss_ivf: %d keys allow at most %d lists (%d keys per list); using nlist=%d, nprobe=%d "
                "instead of %d / %d",
                self.num_keys,
                self.num_keys // MIN_POINTS_PER_LIST,
                MIN_POINTS_PER_LIST,
                self.nlist,
                self.nprobe,
                nlist,
                nprobe,
            )
        data = _numpy32(keys)
        self.quantizer = faiss.IndexFlatIP(self.dim)  # kept referenced: the IVF index does not own it in Python
        self.index = faiss.IndexIVFFlat(self.quantizer, self.dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
        self.index.cp.seed = int(seed)
        self.index.cp.spherical = True  # unit-norm centroids: the list a key belongs to is its max-IP centroid
        self.index.train(data)
        self.index.add(data)
        self.index.nprobe = self.nprobe
        self._exact = TorchFlatIndex(keys)  # for queries the probed lists cannot fill (shares the CPU keys)
        self.fallback_queries = 0

    def _search(self, queries: torch.Tensor, k: int, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
        sims_np, idx_np = self.index.search(_numpy32(queries), k)
        sims, idx = torch.from_numpy(sims_np), torch.from_numpy(idx_np).long()
        short = (idx < 0).any(1)
        if short.any():
            self.fallback_queries += int(short.sum())
            sims[short], idx[short] = self._exact.search(queries[short], k)
        return sims, idx

    def describe(self) -> dict[str, Any]:
        """See :meth:`KnnIndex.describe`; adds ``ivf_nlist_used``, ``ivf_nprobe_used`` and
        ``knn_exact_fallback_queries``."""
        return {
            **super().describe(),
            "knn_index": "IndexIVFFlat (faiss, inner product)",
            "ivf_nlist_used": self.nlist,
            "ivf_nprobe_used": self.nprobe,
            "knn_exact_fallback_queries": self.fallback_queries,
        }


def resolve_backend(backend: str, device: str | torch.device | None = None) -> str:
    """The backend that ``backend`` runs as: ``"auto"`` becomes ``"faiss"`` (faiss importable, CPU search)
    or ``"torch"``.

    Args:
        backend: one of :data:`KNN_BACKENDS`.
        device: where the search runs; None for the CPU.

    Returns:
        ``"torch"``, ``"faiss"`` or ``"faiss_ivf"``.

    Raises:
        ConfigError: an unknown backend.
    """
    check_choice("the k-NN backend (--knn_backend)", backend, KNN_BACKENDS)
    if backend != "auto":
        return backend
    on_cpu = device is None or torch.device(device).type == "cpu"
    return "faiss" if on_cpu and _faiss() is not None else "torch"


def build_knn_index(
    keys: torch.Tensor,
    backend: str = "auto",
    *,
    device: str | torch.device | None = None,
    query_chunk: int = 1024,
    key_chunk: int = 32768,
    ivf_nlist: int = 512,
    ivf_nprobe: int = 32,
    seed: int = 0,
) -> KnnIndex:
    """The index of ``keys`` that ``backend`` names (:func:`resolve_backend`).

    faiss backends run on the CPU whatever ``device`` (faiss-cpu); ``"auto"`` on a GPU device is torch.

    Args:
        keys: ``(M, D)`` keys (unit norm for cosine similarity).
        backend: one of :data:`KNN_BACKENDS`.
        device: where the torch search runs; None for the CPU.
        query_chunk: queries per chunk (torch).
        key_chunk: keys per chunk (torch).
        ivf_nlist: IVF lists (``"faiss_ivf"``).
        ivf_nprobe: IVF lists searched per query (``"faiss_ivf"``).
        seed: the IVF k-means seed.

    Returns:
        The :class:`KnnIndex`.

    Raises:
        ConfigError: an unknown backend, or a chunk or IVF setting that is not a positive integer.
        ImportError: a faiss backend without faiss installed.
        ValueError: ``keys`` is empty or not a matrix.
    """
    resolved = resolve_backend(backend, device)
    if resolved == "torch":
        check_positive_int("query_chunk", query_chunk)
        check_positive_int("key_chunk", key_chunk)
        return TorchFlatIndex(keys, device, query_chunk, key_chunk)
    faiss = _require_faiss(resolved)
    if resolved == "faiss":
        return FaissFlatIndex(keys, faiss)
    check_positive_int("ivf_nlist", ivf_nlist)
    check_positive_int("ivf_nprobe", ivf_nprobe)
    return FaissIVFIndex(keys, faiss, ivf_nlist, ivf_nprobe, seed)


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
    """One top-``k`` inner-product search: builds the index of ``keys`` (:func:`build_knn_index`) and searches it.

    To search one bank many times, build the index once with :func:`build_knn_index` instead.

    Args:
        queries: ``(Q, D)`` query vectors.
        keys: ``(M, D)`` key vectors.
        k: the neighbours per query (at most ``M``).
        backend: one of :data:`KNN_BACKENDS` (IVF with its default settings).
        query_chunk: queries per chunk (torch).
        key_chunk: keys per chunk (torch).
        progress: show a progress bar (torch).
        device: where the torch search runs; None for the CPU.

    Returns:
        ``(similarities, indices)``, ``(Q, min(k, M))`` each, on the CPU.

    Raises:
        ValueError: queries and keys differ in dimension, or an unknown backend (a ``ConfigError``).
        ImportError: a faiss backend without faiss installed.
    """
    if queries.ndim != 2 or keys.ndim != 2 or queries.shape[1] != keys.shape[1]:
        raise ValueError(f"queries {tuple(queries.shape)} and keys {tuple(keys.shape)} differ in dimension")
    index = build_knn_index(keys, backend, device=device, query_chunk=query_chunk, key_chunk=key_chunk)
    return index.search(queries, k, progress=progress)


def knn_recall(found: torch.Tensor, exact: torch.Tensor) -> float:
    r"""Recall@``k`` of a search against the exact one: ``(1/Q) Σ_q |N̂_k(q) ∩ N_k(q)| / k``.

    ``N̂_k(q)`` is the row of ``found`` (the approximate neighbours), ``N_k(q)`` the row of ``exact``. Keys tied
    at the ``k``-th similarity may be swapped by either search and count as misses.

    Args:
        found: ``(Q, k)`` neighbour indices of the search measured.
        exact: ``(Q, k)`` neighbour indices of exact search.

    Returns:
        The recall in ``[0, 1]`` (1.0 for no query).

    Raises:
        ValueError: the two have different shapes.
    """
    if found.shape != exact.shape:
        raise ValueError(f"found {tuple(found.shape)} and exact {tuple(exact.shape)} differ in shape")
    if found.numel() == 0:
        return 1.0
    hits = (found[:, :, None] == exact[:, None, :]).any(-1).sum(1).double() / found.shape[1]
    return float(hits.mean())
