r"""Top-``k`` inner-product search over a fixed key set (the Hummingbird memory bank): exact or approximate.

For unit-norm keys ``k_m`` and a query ``q`` the search returns the ``k`` largest ``s_m = ⟨q, k_m⟩`` and their
indices ``m``. Backends (:data:`KNN_BACKENDS`, ``HummingbirdConfig.backend``, ``--knn_backend``):

* ``"torch"``: exact; queries × keys in chunks (``query_chunk × key_chunk`` similarities at a time) with a
  running top-``k`` merged per key chunk, so memory stays bounded whatever the bank size; runs on ``device``
  (the GPU with ``--device cuda``, where it computes what the reference evaluator's ``GpuIndexFlatIP`` does).
* ``"torch_bf16"``: exact, on the CPU: a bf16 scan (one bf16 matrix product per tile of keys, which AMX runs
  ~10× faster than fp32) selects the candidates that a proven bound on the bf16 error cannot rule out, and only
  those are re-scored in fp32, so the neighbours are exact fp32 search's (:class:`TorchBf16Index` gives the
  bound and the proof). On CamVid DINOv2 ViT-S/14 features (448 × 616) it re-scores ~220 of 277k keys per query
  (~310 of the full 1.02 M bank) and searches 3.9× faster than faiss ``IndexFlatIP`` on one thread, 10.5× on two
  threads of cores shared with other jobs (``benchmarks/knn_speed.py``).
* ``"faiss"``: exact, faiss ``IndexFlatIP`` on the CPU (the CPU build of the index the reference evaluator,
  open-hummingbird-eval v2, runs on the GPU).
* ``"faiss_ivf"``: approximate, faiss ``IndexIVFFlat`` with the inner-product metric: spherical k-means splits
  the keys into ``nlist`` lists; a query is compared exactly with every key of the ``nprobe`` lists whose
  centroids are nearest to it. A neighbour is missed only when it sits in a list that is not probed.
* ``"auto"``: on the CPU, ``"torch_bf16"`` where torch reports AMX (:func:`fast_bf16_matmul`: there the bf16
  product is fast enough to pay for the selection), else ``"faiss"`` when faiss is importable, else ``"torch"``;
  on a GPU, ``"torch"``.

Why ``torch_bf16`` as the exact CPU default where AMX exists: flat search costs ``2 Q M D`` flops, and faiss
``IndexFlatIP`` spends them in fp32 BLAS (~0.13 TFLOP/s per core measured here); AMX multiplies bf16 tiles at
~1.3–1.5 TFLOP/s per core, accumulating in fp32. bf16 alone is not exact (its rounding moves similarities by up
to ~0.008 and reorders near neighbours), so the scan only selects: the keys its error bound cannot exclude are
re-scored in fp32. What remains costly is reading the scan's output, so the selection is built from vectorised
passes (block maxima on the bf16 bits as int16) and touches single keys only in the few blocks that reach the
threshold. Int8 (AMX-INT8, twice bf16's rate) would widen the bound about tenfold and the candidates with it.

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

import itertools
import logging
import math
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from paka_hf.utils.errors import check_choice, check_positive_int

logger = logging.getLogger(__name__)

#: The values of ``HummingbirdConfig.backend`` / ``--knn_backend``.
KNN_BACKENDS = ("auto", "torch", "torch_bf16", "faiss", "faiss_ivf")
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


#: bf16's unit roundoff: 8 significant bits, so rounding to nearest errs by at most ``2⁻⁸ |x|``.
BF16_UNIT_ROUNDOFF = 2.0**-8
#: fp32's unit roundoff (24 significant bits).
FP32_UNIT_ROUNDOFF = 2.0**-24
#: The relative error of the bf16 output of the product, ``|x − y| ≤ ρ |x|``: ``ρ = 2u / (1 − 2u)`` holds for
#: rounding to nearest (oneDNN's) and toward zero alike.
BF16_OUTPUT_ROUNDING = 2 * BF16_UNIT_ROUNDOFF / (1 - 2 * BF16_UNIT_ROUNDOFF)
#: Relative and absolute slack added to the bf16 error bound: the fp32 arithmetic that computes the norms, the
#: bound and the thresholds (a few operations, each ``≤ 2⁻²³`` on values ``≤ 2``) and bf16/fp32 values flushed to
#: zero by the hardware (``< 2⁻¹²⁶`` each) stay far below them.
BOUND_RELATIVE_SLACK = 2.0**-10
BOUND_ABSOLUTE_SLACK = 2.0**-18
#: torch_bf16: keys per tile; a tile's product for 1024 queries (16 MiB of bf16) stays in the cache between the
#: product and its block maxima; 4096–8192 measured fastest on the CPU with AMX.
BF16_TILE_KEYS = 8192
#: torch_bf16: adjacent keys per block (one max each, opened whole when it reaches the threshold).
BF16_BLOCK_KEYS = 32
#: torch_bf16: the probe scans every this-many-th key first (at least PROBE_MIN_KEYS of them) ...
PROBE_STRIDE = 64
PROBE_MIN_KEYS = 1024
#: ... reduced over blocks of this many probe keys before its top k.
PROBE_BLOCK = 8
#: torch_bf16 merges new pool entries into Λ after each of the first MERGE_EVERY tiles, then every MERGE_EVERY.
MERGE_EVERY = 4
#: torch_bf16 scans this many tiles (the probe's best) before it opens any block.
WARM_TILES = 8
#: torch_bf16: a query whose pool outgrows this (a bank of near-duplicates of it) is searched in exact fp32.
MAX_POOL_PER_QUERY = 65536
_INT16_MIN, _INT16_MAX = -32768, 32767


def _bf16_ceil_bits(x: torch.Tensor) -> torch.Tensor:
    """The int16 bit patterns of the smallest bf16 values ``≥ x`` for positive finite float32 ``x``.

    A positive float32's high 16 bits are its bf16 value rounded toward zero; that is the ceiling when the low
    16 bits are zero, else the next bf16 up, whose bits are one more.
    """
    bits = x.float().contiguous().view(torch.int32)
    return ((bits >> 16) + ((bits & 0xFFFF) != 0).int()).to(torch.int16)


def _dense_rows(rows: torch.Tensor, values: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Entries ``(rows[e], values[e])`` grouped by row (``rows`` non-decreasing) as a dense ``(n_rows, width)``
    matrix padded with ``-inf``, ``width`` the most entries of one row."""
    counts = torch.bincount(rows, minlength=n_rows)
    first = counts.cumsum(0) - counts
    dense = torch.full((n_rows, int(counts.max()) if rows.numel() else 0), float("-inf"), dtype=values.dtype)
    dense[rows, torch.arange(rows.numel()) - first[rows]] = values
    return dense


def _merge_top(best: torch.Tensor, parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The ``k`` largest values per row of ``best`` ``(n, k)`` and of the entries ``(rows, values)`` of ``parts``
    (each grouped by row)."""
    dense = [_dense_rows(rows, values, best.shape[0]) for rows, values in parts if rows.numel()]
    if not dense:
        return best
    return torch.cat([best, *dense], 1).topk(best.shape[1], dim=1).values


class TorchBf16Index(KnnIndex):
    r"""Exact search on the CPU: a bf16 scan with a proven error bound, then exact fp32 re-scoring.

    Scan. Queries ``q`` and keys ``k`` (fp32, ``D`` dims) are rounded to bf16, ``q̃`` and ``k̃`` (the keys once,
    at build). One extra dimension carries a per-query shift ``c``, a bf16 number a little below the query's
    current ``k``-th similarity: ``x = [k̃, 1] · [q̃, −c]`` is one bf16 matrix product (oneDNN; AMX tiles on
    Sapphire Rapids and later) accumulated in fp32 and rounded once to bf16.

    Error bound. With the residuals ``r_q = q − q̃`` and ``r_k = k − k̃`` (exact in fp32),
    ``q·k − q̃·k̃ = r_q·k̃ + q·r_k``, so by Cauchy–Schwarz ``|q·k − q̃·k̃| ≤ ‖r_q‖ N + ‖q‖ R`` with
    ``N = max_m ‖k̃_m‖`` and ``R = max_m ‖r_{k_m}‖`` (``|r_i| ≤ 2⁻⁸ |x_i|``, so for unit vectors this is at most
    ``2⁻⁷ + 2⁻¹⁶``; DINOv2 CamVid features have ``‖r‖ ≤ 0.0021``, half that). The products ``q̃_i k̃_i`` are
    exact in fp32 (8 + 8 significant bits); the fp32 sum of the ``D + 1`` terms, in any order, errs by at most
    ``γ (‖q̃‖ N + |c|)``, ``γ = n 2⁻²⁴ / (1 − n 2⁻²⁴)`` (Higham, *Accuracy and Stability of Numerical
    Algorithms*, 2002, §4.2), counted with ``n = 2 (D + 1)`` roundings to cover the hardware's pairwise dot
    products. Rounding the accumulator ``y`` to bf16 gives ``|x − y| ≤ ρ |x|``,
    ``ρ = 2⁻⁷ / (1 − 2⁻⁷)`` (:data:`BF16_OUTPUT_ROUNDING`). So for every key ``m`` of a tile scanned with shift
    ``c``

    .. math::  |s_m - (x_m + c)| \le E_m = a + \rho\,|x_m|, \qquad
               a = \bigl(\lVert r_q\rVert N + \lVert q\rVert R + \gamma (\lVert\tilde q\rVert N + |c|)\bigr)
                   (1 + 2^{-10}) + 2^{-18},

    the slack covering the fp32 arithmetic of the bound and thresholds and values flushed to zero. The shift keeps
    ``|x| ≈ 0.02`` near the threshold, so the output rounding adds ``~2·10⁻⁴`` where it would add ``~0.007`` at
    similarities near 1. On CamVid ViT-S/14 features ``a ≈ 0.0040``.

    Candidates. Each key has ``ℓ_m = x_m + c − E_m ≤ s_m ≤ υ_m = x_m + c + E_m``. If ``Λ`` is the ``k``-th largest
    ``ℓ`` among any ``k`` distinct keys, those keys have exact similarities ``≥ Λ``, so the exact ``k``-th
    similarity ``s_(k) ≥ Λ`` and every exact top-``k`` key ``t`` has ``υ_t ≥ s_t ≥ s_(k) ≥ Λ``: the candidates
    ``{m : υ_m ≥ Λ}`` hold the exact top ``k``, and re-scoring them in fp32 gives exact search's answer (up to
    fp32 rounding of the similarities; ties at the ``k``-th similarity may resolve either way). ``υ`` increases
    with ``x`` (slope ``1 ± ρ > 0``), so within a tile the test is ``x_m ≥ T = ψ⁻¹(Λ − c)``,
    ``ψ(x) = x + a + ρ|x|``: one comparison of bf16 values, done on their int16 bit patterns, which order as the
    values when ``T > 0`` (the shift makes it so; a query whose ``T ≤ 0`` takes every key of the tile, slower
    but exact).

    Search, per chunk of queries.

    1. Probe: every :data:`PROBE_STRIDE`-th key, maxima over blocks of :data:`PROBE_BLOCK`, top ``k``: a first
       ``Λ`` (distinct keys) and the tiles ranked by the probe's top-``k`` hits, so that the tiles holding the
       nearest neighbours come first and ``Λ`` rises fast.
    2. Tiles of :data:`BF16_TILE_KEYS` keys, in that order: the product ``(keys, queries)``, laid out so that each
       block of :data:`BF16_BLOCK_KEYS` keys adjacent in the bank (neighbouring patches, often near-duplicates)
       is reduced by one vectorised max over the outer axis; blocks whose max reaches ``T`` are opened and their
       keys with ``x ≥ T`` join the query's pool with ``(ℓ, υ)``; ``Λ`` becomes the ``k``-th largest ``ℓ`` of the
       pool (every key joins it at most once, so these are distinct keys).
    3. ``Λ*``, the final ``Λ``, is the largest this gives; the pool's keys with ``υ ≥ Λ*`` (every such key
       reached its tile's smaller ``T``) are re-scored exactly, fp32 dot products of the fp32 keys
       (``torch.sparse.sampled_addmm``), and their top ``k`` is the answer.

    A query whose pool outgrows :data:`MAX_POOL_PER_QUERY` keys (a bank of near-duplicates of it) stops collecting
    and is searched by the fp32 product instead (:class:`TorchFlatIndex`), so memory stays bounded.

    Threads: torch's intra-op threads would synchronise on each of the many small operations per tile, which
    stalls when other processes share the cores; instead ``torch.get_num_threads()`` worker threads each search
    their share of the queries with single-threaded operations (torch releases the GIL inside them).

    Runs on the CPU whatever ``device`` (as the faiss backends): cuBLAS may accumulate bf16 products in reduced
    precision, which the bound does not cover.

    Args:
        keys: ``(M, D)`` keys.
        query_chunk: queries searched together (one product's columns).
        tile_keys: keys per tile (rounded up to whole blocks).
        block: adjacent keys per block.
        probe_stride: the probe's stride (lowered so that it scans at least :data:`PROBE_MIN_KEYS` keys).

    Raises:
        ConfigError: a size that is not a positive integer.
        ValueError: ``keys`` is empty or not a matrix.

    Attributes:
        candidates: keys re-scored exactly, summed over the queries searched so far.
        max_candidates: the most keys re-scored for one query.
        queries_searched: the queries searched so far.
        overflow_queries: the queries searched in fp32 because their pools outgrew :data:`MAX_POOL_PER_QUERY`.
    """

    backend = "torch_bf16"

    def __init__(
        self,
        keys: torch.Tensor,
        query_chunk: int = 1024,
        *,
        tile_keys: int = BF16_TILE_KEYS,
        block: int = BF16_BLOCK_KEYS,
        probe_stride: int = PROBE_STRIDE,
    ):
        super().__init__(keys)
        for name, value in (("query_chunk", query_chunk), ("tile_keys", tile_keys), ("block", block)):
            check_positive_int(name, value)
        check_positive_int("probe_stride", probe_stride)
        self.query_chunk, self.block = int(query_chunk), int(block)
        self.tile_keys = -(-int(tile_keys) // self.block) * self.block  # whole blocks
        self.keys = keys.detach().to("cpu", torch.float32).contiguous()  # the exact re-scoring reads these
        norm_max = residual_max = 0.0
        for start in range(0, self.num_keys, 65536):  # bounded temporaries
            part = self.keys[start : start + 65536]
            rounded = part.to(torch.bfloat16).float()
            norm_max = max(norm_max, float(rounded.norm(dim=1).max()))
            residual_max = max(residual_max, float((part - rounded).norm(dim=1).max()))
        #: N and R of the bound
        self.key_norm_max, self.key_residual_max = norm_max, residual_max
        terms = 2 * (self.dim + 1)
        self.gamma = terms * FP32_UNIT_ROUNDOFF / (1 - terms * FP32_UNIT_ROUNDOFF)
        starts = list(range(0, self.num_keys, self.tile_keys))
        sizes = [min(self.tile_keys, self.num_keys - s) for s in starts]
        padded = [-(-n // self.block) * self.block for n in sizes]  # each tile padded to whole blocks
        #: (first key, keys, first row in keys_bf16) of each tile
        self.tiles = list(zip(starts, sizes, itertools.accumulate(padded, initial=0)))
        # bf16 keys plus the shift's column of ones; zero rows pad a tile to whole blocks (they score 0, which
        # never reaches a positive threshold, and are dropped by index otherwise)
        self.keys_bf16 = torch.zeros(sum(padded), self.dim + 1, dtype=torch.bfloat16)
        for (start, n, row), rows in zip(self.tiles, padded):
            tile = torch.zeros(rows, self.dim + 1, dtype=torch.bfloat16)
            tile[:n, : self.dim] = self.keys[start : start + n]
            tile[:n, self.dim] = 1
            # row i·blocks + j holds the tile's key j·block + i: viewed as (block, blocks, queries), the product
            # reduces each block of adjacent keys over its outer axis
            blocks = rows // self.block
            self.keys_bf16[row : row + rows] = tile.view(blocks, self.block, -1).transpose(0, 1).reshape(rows, -1)
        self.probe_stride = max(1, min(int(probe_stride), self.num_keys // PROBE_MIN_KEYS))
        probe = self.keys[:: self.probe_stride].to(torch.bfloat16)
        self.probe_keys = torch.zeros(-(-probe.shape[0] // PROBE_BLOCK) * PROBE_BLOCK, self.dim, dtype=torch.bfloat16)
        self.probe_keys[: probe.shape[0]] = probe  # zero rows score 0: never a positive block maximum
        self.candidates = self.max_candidates = self.queries_searched = self.overflow_queries = 0
        self._lock = threading.Lock()

    def error_bound(self, q: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """``a`` of the class docstring: ``|q·k_m − (x_m + c)| ≤ a + ρ |x_m|`` for every key ``k_m``, where ``x_m``
        is the bf16 product ``[k̃_m, 1] · [q̃, −c]`` and ``ρ`` is :data:`BF16_OUTPUT_ROUNDING`.

        Args:
            q: ``(Q, D)`` fp32 queries.
            shift: ``(Q,)`` the shifts ``c`` (bf16 values).

        Returns:
            ``(Q,)`` float32 bounds ``a``.
        """
        inputs, products = self._bound_terms(q)
        return (inputs + self.gamma * (products + shift.abs())) * (1 + BOUND_RELATIVE_SLACK) + BOUND_ABSOLUTE_SLACK

    def _bound_terms(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(‖r_q‖ N + ‖q‖ R, ‖q̃‖ N)`` per query: the input rounding's bound and the products' sum bound."""
        rounded = q.to(torch.bfloat16).float()
        inputs = (q - rounded).norm(dim=1) * self.key_norm_max + q.norm(dim=1) * self.key_residual_max
        return inputs, rounded.norm(dim=1) * self.key_norm_max

    def _search(self, queries: torch.Tensor, k: int, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
        queries = queries.detach().to("cpu", torch.float32)
        workers = max(1, torch.get_num_threads())
        chunks = max(1, math.ceil(queries.shape[0] / self.query_chunk))
        size = max(1, math.ceil(queries.shape[0] / (math.ceil(chunks / workers) * workers)))  # even shares
        parts = [queries[s : s + size].contiguous() for s in range(0, queries.shape[0], size)]
        if not parts:
            return torch.zeros(0, k), torch.zeros(0, k, dtype=torch.long)
        with tqdm(
            total=len(parts) * len(self.tiles), desc="k-NN search (bf16)", unit="tile", disable=not progress
        ) as bar:
            if workers == 1 or len(parts) == 1:
                results = [self._search_chunk(part, k, bar) for part in parts]
            else:
                threads = torch.get_num_threads()

                def work(part: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                    torch.set_num_threads(1)  # per OS thread (OpenMP): this worker's operations run serially
                    return self._search_chunk(part, k, bar)

                try:
                    with ThreadPoolExecutor(max_workers=workers) as pool:
                        results = list(pool.map(work, parts))
                finally:
                    torch.set_num_threads(threads)  # the workers' calls changed torch's process-wide setting
        return torch.cat([s for s, _ in results]), torch.cat([i for _, i in results])

    def _search_chunk(self, q: torch.Tensor, k: int, bar) -> tuple[torch.Tensor, torch.Tensor]:
        n_q, dim, block = q.shape[0], self.dim, self.block
        rho = BF16_OUTPUT_ROUNDING
        q_bf16 = q.to(torch.bfloat16)
        inputs, products = self._bound_terms(q)

        def bound(c: torch.Tensor) -> torch.Tensor:  # error_bound(q, c), its query terms computed once
            return (inputs + self.gamma * (products + c.abs())) * (1 + BOUND_RELATIVE_SLACK) + BOUND_ABSOLUTE_SLACK

        def lower(x_bits: torch.Tensor, c: torch.Tensor, a: torch.Tensor) -> torch.Tensor:  # ℓ of positive x
            x = x_bits.view(torch.bfloat16).float().masked_fill(x_bits <= 0, float("-inf"))
            return x + c - a - rho * x.abs()

        # 1. probe: a first Λ and the tiles ranked by the probe's top-k hits
        lam_probe = torch.full((n_q,), float("-inf"))
        order = list(range(len(self.tiles)))
        probe_blocks = self.probe_keys.shape[0] // PROBE_BLOCK
        if probe_blocks >= k:
            scores = torch.mm(self.probe_keys, q_bf16.T).view(torch.int16).view(probe_blocks, PROBE_BLOCK, n_q)
            top, top_block = torch.amax(scores, 1).topk(k, dim=0)  # (k, n_q)
            zero = torch.zeros(n_q)
            lam_probe = lower(top[-1], zero, bound(zero))
            tile_of_block = torch.div(
                torch.arange(probe_blocks) * PROBE_BLOCK * self.probe_stride, self.tile_keys, rounding_mode="floor"
            )
            hits = torch.bincount(tile_of_block[top_block.reshape(-1)], minlength=len(self.tiles))
            order = hits.argsort(descending=True, stable=True).tolist()
        # 2. tiles
        q_aug = torch.zeros(n_q, dim + 1, dtype=torch.bfloat16)
        q_aug[:, :dim] = q_bf16
        best_low = torch.full((n_q, k), float("-inf"))  # the k largest ℓ of each query's pool
        pool_size = torch.zeros(n_q, dtype=torch.long)
        overflow = torch.zeros(n_q, dtype=torch.bool)
        pool: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (query, key, υ)
        pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # (query, ℓ) not merged into best_low yet

        def scan(tile: int, lam: torch.Tensor, out: torch.Tensor) -> tuple:
            """The tile's product (shift below ``lam``) and block maxima."""
            start, n, row = self.tiles[tile]
            blocks = -(-n // block)
            # c a little below Λ: the x that decide stay near 2 a + 2⁻⁶ > 0, where bf16 output rounds finely
            shift = torch.where(torch.isfinite(lam), lam - 2 * inputs - 2.0**-6, torch.zeros_like(lam))
            shift = shift.to(torch.bfloat16)
            q_aug[:, dim] = -shift
            c = shift.float()
            x = torch.mm(self.keys_bf16[row : row + blocks * block], q_aug.T, out=out[: blocks * block])
            bits = x.view(torch.int16).view(block, blocks, n_q)
            block_max = torch.amax(bits, 0)  # (blocks, n_q): the largest bf16 of each block, where positive
            return start, n, bits, block_max, c, bound(c)

        def extract(scanned: tuple, lam: torch.Tensor) -> None:
            """The tile's keys with υ ≥ lam into the pool."""
            start, n, bits, block_max, c, a = scanned
            v = lam - c - a
            thr = torch.where(v >= 0, v / (1 + rho), v / (1 - rho)) - BOUND_ABSOLUTE_SLACK
            thr_bits = torch.where(thr > 0, _bf16_ceil_bits(thr.clamp(min=1e-30)), _INT16_MIN)
            thr_bits = thr_bits.masked_fill(overflow, _INT16_MAX)  # +inf: nothing more for those queries
            # opened blocks, then their keys with x ≥ T, both in query order (nonzero lists indices row-major)
            r, j = (block_max.T >= thr_bits[:, None]).nonzero().unbind(1)
            vals = bits.permute(1, 2, 0)[j, r]  # (opened, block): the opened blocks' bf16 bits
            col, i = (vals >= thr_bits[r, None]).nonzero().unbind(1)
            rows, key = r[col], start + j[col] * block + i
            xv = vals[col, i].view(torch.bfloat16).float()
            if n < bits.shape[0] * bits.shape[1] and bool((thr_bits == _INT16_MIN).any()):  # padding: T ≤ 0 only
                real = key < self.num_keys
                rows, key, xv = rows[real], key[real], xv[real]
            err = a[rows] + rho * xv.abs()
            centre = xv + c[rows]
            pool.append((rows, key, centre + err))
            pending.append((rows, centre - err))
            pool_size.add_(torch.bincount(rows, minlength=n_q))
            overflow.logical_or_(pool_size > MAX_POOL_PER_QUERY)
            with self._lock:
                bar.update(1)

        # the first WARM_TILES tiles (the probe's best) are scanned before any is extracted: the k-th largest ℓ of
        # their block maxima (distinct keys) starts Λ near its final value, so few keys join the pool early
        warm = order[:WARM_TILES]
        buffers = [torch.empty(self.tile_keys, n_q, dtype=torch.bfloat16) for _ in warm]
        scanned = [scan(tile, lam_probe, out) for tile, out in zip(warm, buffers)]
        lows = [lower(bm.topk(min(k, bm.shape[0]), dim=0).values, c, a) for _, _, _, bm, c, a in scanned]
        lam = lam_probe
        if sum(low.shape[0] for low in lows) >= k:
            lam = torch.maximum(lam, torch.cat(lows).topk(k, dim=0).values[-1])
        for tile_scan in scanned:
            extract(tile_scan, lam)
        best_low = _merge_top(best_low, pending)
        pending = []
        out = buffers[0]
        del scanned, buffers[1:]
        for step, tile in enumerate(order[WARM_TILES:]):
            lam = torch.maximum(best_low[:, -1], lam_probe)
            extract(scan(tile, lam, out), lam)
            if step < MERGE_EVERY or step % MERGE_EVERY == MERGE_EVERY - 1:  # Λ rises fast early, then settles
                best_low = _merge_top(best_low, pending)
                pending = []
        best_low = _merge_top(best_low, pending)
        # 3. re-score the keys with υ ≥ Λ* exactly
        rows, key, high = (torch.cat(parts) for parts in zip(*pool))
        lam = torch.maximum(best_low[:, -1], lam_probe)
        keep = (high >= lam[rows]) & ~overflow[rows]
        rows, key = rows[keep], key[keep]
        order_csr = (rows * self.num_keys + key).argsort()  # CSR order: by query, then key
        rows, key = rows[order_csr], key[order_csr]
        counts = torch.bincount(rows, minlength=n_q)
        if bool((counts[~overflow] < k).any()):
            raise RuntimeError(
                "torch_bf16 k-NN found fewer than k candidates for a query (a bug; use backend='torch')"
            )
        crow = torch.zeros(n_q + 1, dtype=torch.long)
        crow[1:] = counts.cumsum(0)
        with warnings.catch_warnings():  # torch calls sparse CSR "beta"; sampled_addmm is all this needs of it
            warnings.simplefilter("ignore", UserWarning)
            pattern = torch.sparse_csr_tensor(crow, key, torch.zeros(key.numel()), size=(n_q, self.num_keys))
            exact = torch.sparse.sampled_addmm(pattern, q, self.keys.T, beta=0.0).values()
        dense = torch.full((n_q, max(k, int(counts.max()))), float("-inf"))
        dense[rows, torch.arange(rows.numel()) - crow[rows]] = exact
        sims, top_col = dense.topk(k, dim=1)
        idx = key[(crow[:-1, None] + top_col).clamp(max=max(key.numel() - 1, 0))] if key.numel() else top_col
        if bool(overflow.any()):
            sims[overflow], idx[overflow] = TorchFlatIndex(self.keys).search(q[overflow], k)
        with self._lock:
            self.candidates += int(rows.numel())
            self.max_candidates = max(self.max_candidates, int(counts.max()))
            self.queries_searched += n_q
            self.overflow_queries += int(overflow.sum())
        return sims, idx

    def describe(self) -> dict[str, Any]:
        """See :meth:`KnnIndex.describe`."""
        return {**super().describe(), "knn_index": "bf16 scan with error bound + exact fp32 re-scoring (torch)"}


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


def fast_bf16_matmul() -> bool:
    """Whether this CPU multiplies bf16 matrices much faster than fp32 ones: Intel AMX (Sapphire Rapids and
    later), which oneDNN uses for torch's bf16 ``mm`` (~1.3–1.5 TFLOP/s per core against ~0.13 for fp32).

    CPUs with AVX512-BF16 but no AMX (Cooper Lake, Zen 4) have not been measured; ``"auto"`` keeps faiss or
    torch there (``--knn_backend torch_bf16`` still runs, exactly, on any CPU).

    Returns:
        True when torch reports AMX tiles usable and oneDNN (mkldnn) is built in.
    """
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private in torch 2.x: absent means unknown
    try:
        return bool(amx is not None and amx() and torch.backends.mkldnn.is_available())
    except RuntimeError:  # a build that cannot query the CPU
        return False


def resolve_backend(backend: str, device: str | torch.device | None = None) -> str:
    """The backend that ``backend`` runs as. ``"auto"`` on the CPU: ``"torch_bf16"`` where bf16 matrix
    products are fast (:func:`fast_bf16_matmul`), else ``"faiss"`` when faiss is importable, else ``"torch"``;
    ``"auto"`` on a GPU: ``"torch"``.

    Args:
        backend: one of :data:`KNN_BACKENDS`.
        device: where the search runs; None for the CPU.

    Returns:
        ``"torch"``, ``"torch_bf16"``, ``"faiss"`` or ``"faiss_ivf"``.

    Raises:
        ConfigError: an unknown backend.
    """
    check_choice("the k-NN backend (--knn_backend)", backend, KNN_BACKENDS)
    if backend != "auto":
        return backend
    if device is not None and torch.device(device).type != "cpu":
        return "torch"
    if fast_bf16_matmul():
        return "torch_bf16"
    return "faiss" if _faiss() is not None else "torch"


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
    if resolved in ("torch", "torch_bf16"):
        check_positive_int("query_chunk", query_chunk)
        check_positive_int("key_chunk", key_chunk)
    if resolved == "torch":
        return TorchFlatIndex(keys, device, query_chunk, key_chunk)
    if resolved == "torch_bf16":
        return TorchBf16Index(keys, query_chunk=query_chunk)
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
