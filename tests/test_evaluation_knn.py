"""The exact bf16 k-NN backend (``torch_bf16``, :class:`~paka_hf.evaluation.knn.TorchBf16Index`): its error bound
holds where bf16 rounding errs most, and its answer is exact fp32 search's on random unit vectors, near-ties,
duplicates, keys whose bf16 rounding reorders them, small banks and large k; Hummingbird scores the same with it
as with exact torch search; ``auto`` picks it only where bf16 products are fast.

Small tiles (``tile_keys``, ``block``, ``probe_stride``) make a few thousand keys span many tiles, so the probe,
the warm-up tiles, the streamed tiles and the merges all run.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from paka_hf.evaluation import DenseFeatures, HummingbirdConfig, hummingbird_retrieval, knn
from paka_hf.evaluation.knn import (
    BF16_OUTPUT_ROUNDING,
    KNN_BACKENDS,
    TorchBf16Index,
    TorchFlatIndex,
    build_knn_index,
    knn_search,
    resolve_backend,
)

SMALL = {"tile_keys": 256, "block": 8, "probe_stride": 4}  # ~20 tiles for 5000 keys


def unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


def exact_search(queries: torch.Tensor, keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact fp32 search, ``k + 1`` neighbours where the bank has them (to tell ties apart)."""
    return TorchFlatIndex(keys).search(queries, min(k + 1, keys.shape[0]))


def assert_exact(found: tuple[torch.Tensor, torch.Tensor], queries, keys, k: int, tie=1e-6, atol=2e-6) -> None:
    """The similarities are exact search's top k (to fp32 rounding, whatever the ties) and, where the k-th and
    (k+1)-th exact similarities differ by more than ``tie``, the neighbour sets are exact search's."""
    sims, idx = found
    k = min(k, keys.shape[0])
    ref_s, ref_i = exact_search(queries, keys, k)
    assert sims.shape == idx.shape == (queries.shape[0], k)
    assert sims.dtype == torch.float32 and idx.dtype == torch.int64
    torch.testing.assert_close(sims, ref_s[:, :k], atol=atol, rtol=0)  # best first, as exact search
    rescored = (queries[:, None, :] * keys[idx]).sum(-1)  # the returned indices carry the returned similarities
    torch.testing.assert_close(sims, rescored, atol=atol, rtol=0)
    untied = (ref_s[:, k - 1] - ref_s[:, k]) > tie if keys.shape[0] > k else torch.ones(len(sims), dtype=torch.bool)
    assert untied.any()
    assert torch.equal(idx[untied].sort(1).values, ref_i[untied, :k].sort(1).values)


# ------------------------------------------------------------------------------------------------ error bound


def test_error_bound_holds_where_bf16_rounding_errs_most():
    """|q·k − (x + c)| ≤ a + ρ|x| for the bf16 product x = [k̃, 1]·[q̃, −c], on random unit vectors and on unit
    vectors whose components (all but one) sit just below a bf16 rounding midpoint, so that q̃·q̃ falls short of
    q·q = 1 by ~2⁻⁷, the worst case: there, with the shift near the similarity, the bound is within 10 %."""
    g = torch.Generator().manual_seed(0)
    d = 64
    t = 2.0**-3 * (1 + 2.0**-8 - 2.0**-18)  # rounds down to 2^-3: relative error just under 2^-8
    head = t * torch.where(torch.rand(40, d - 1, generator=g) < 0.5, 1.0, -1.0)
    worst = torch.cat([head, torch.full((40, 1), (1 - (d - 1) * t * t) ** 0.5)], 1)  # unit norm
    keys = torch.cat([unit(torch.randn(2000, d, generator=g)), worst])
    queries = torch.cat([unit(torch.randn(50, d, generator=g)), worst[:20]])
    index = TorchBf16Index(keys, **SMALL)
    exact = queries.double() @ keys.double().T
    k_aug = torch.cat([keys.bfloat16(), torch.ones(len(keys), 1, dtype=torch.bfloat16)], 1)
    same = (torch.arange(50, 70), torch.arange(2000, 2020))  # a worst vector with itself: q·k = 1
    for shift in (0.0, 0.5, 0.96875):
        c = torch.full((len(queries),), shift, dtype=torch.bfloat16)
        x = (torch.cat([queries.bfloat16(), -c[:, None]], 1) @ k_aug.T).double()  # fp32 accumulation, bf16 out
        err = (exact - (x + shift)).abs()
        bound = index.error_bound(queries, c.float()).double()[:, None] + BF16_OUTPUT_ROUNDING * x.abs()
        assert (err <= bound).all()
    assert float(err[same].min()) > 2.0**-7 * 0.98  # the worst case happens ...
    assert float((err[same] / bound[same]).min()) > 0.9  # ... and the bound is tight there


# ------------------------------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("k", [1, 5, 30])
def test_random_unit_vectors_give_exact_search(k):
    g = torch.Generator().manual_seed(k)
    keys = unit(torch.randn(5000, 48, generator=g))
    queries = unit(torch.randn(300, 48, generator=g))
    index = TorchBf16Index(keys, **SMALL)
    assert len(index.tiles) == 20
    assert_exact(index.search(queries, k), queries, keys, k)
    assert index.queries_searched == 300 and index.overflow_queries == 0
    assert k <= index.candidates / 300 < 10 * k + 50  # few keys re-scored per query


def test_near_ties_and_duplicates_give_exact_search():
    """Clusters of keys whose similarities to a query lie within ~1e-3 of each other, exact duplicates, queries
    inside the clusters: hundreds of keys fall in the candidate window and ties at the k-th similarity occur
    (where they do, the similarities still match)."""
    g = torch.Generator().manual_seed(1)
    centres = unit(torch.randn(40, 32, generator=g))
    keys = unit(centres.repeat_interleave(100, 0) + 8e-3 * torch.randn(4000, 32, generator=g))
    keys = torch.cat([keys, keys[::7], keys[::13]])  # duplicates, far from their originals in the bank
    queries = unit(centres[torch.randint(0, 40, (200,), generator=g)] + 8e-3 * torch.randn(200, 32, generator=g))
    index = TorchBf16Index(keys, **SMALL)
    found = index.search(queries, 30)
    assert_exact(found, queries, keys, 30)
    assert index.max_candidates > 60  # the near-ties put many keys in the window


def test_keys_whose_bf16_rounding_reorders_them_are_found():
    """Each query's keys crowd its direction (similarities ~0.994, the top ones 10⁻⁵ apart) so that bf16 rounding (~10⁻³)
    reorders them: the top k of the bf16 product is not exact search's. The backend still returns exact search's
    neighbours; with its error bound set to zero it returns the bf16 order's instead, so the bound is needed."""
    g = torch.Generator().manual_seed(2)
    d, k = 32, 10
    queries = unit(torch.randn(20, d, generator=g))
    keys = unit(queries.repeat_interleave(500, 0) + 0.02 * torch.randn(10000, d, generator=g))
    approx = queries.bfloat16().double() @ keys.bfloat16().double().T
    ref_s, ref_i = exact_search(queries, keys, k)
    reordered = [set(a) != set(b) for a, b in zip(approx.topk(k).indices.tolist(), ref_i[:, :k].tolist())]
    assert sum(reordered) >= 18  # the construction does reorder
    assert_exact(TorchBf16Index(keys, **SMALL).search(queries, k), queries, keys, k)

    no_bound = TorchBf16Index(keys, **SMALL)
    no_bound.key_norm_max = no_bound.key_residual_max = no_bound.gamma = 0.0
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(knn, "BF16_OUTPUT_ROUNDING", 0.0)
        mp.setattr(knn, "BOUND_ABSOLUTE_SLACK", 0.0)
        _, wrong = no_bound.search(queries, k)
    assert sum(set(a) != set(b) for a, b in zip(wrong.tolist(), ref_i[:, :k].tolist())) >= 5


def test_large_k_small_banks_and_few_keys():
    g = torch.Generator().manual_seed(3)
    queries = unit(torch.randn(40, 16, generator=g))
    # k larger than a tile's blocks and than the probe's blocks
    keys = unit(torch.randn(3000, 16, generator=g))
    assert_exact(TorchBf16Index(keys, **SMALL).search(queries, 100), queries, keys, 100)
    # fewer keys than k: every key, best first (as the other backends)
    few = unit(torch.randn(20, 16, generator=g))
    sims, idx = TorchBf16Index(few, **SMALL).search(queries, 30)
    assert sims.shape == (40, 20)
    assert_exact((sims, idx), queries, few, 20)
    # a bank smaller than one block, and one key
    assert_exact(TorchBf16Index(few[:5], **SMALL).search(queries, 3), queries, few[:5], 3)
    sims, idx = TorchBf16Index(few[:1]).search(queries, 30)
    assert idx.shape == (40, 1) and (idx == 0).all()
    torch.testing.assert_close(sims[:, 0], queries @ few[0])
    # no query
    sims, idx = TorchBf16Index(few).search(queries[:0], 5)
    assert sims.shape == idx.shape == (0, 5)


def test_keys_that_are_not_unit_norm_and_negative_similarities():
    """The bound scales with the norms; a query whose every similarity is negative starts with a threshold
    below zero, which takes every key of the first tiles: still exact."""
    g = torch.Generator().manual_seed(4)
    keys = torch.randn(2000, 24, generator=g) * torch.rand(2000, 1, generator=g) * 3
    queries = torch.randn(30, 24, generator=g) * 2
    assert_exact(TorchBf16Index(keys, **SMALL).search(queries, 10), queries, keys, 10, tie=1e-4, atol=3e-5)
    positive = unit(torch.randn(1500, 24, generator=g).abs())
    negative = -unit(torch.randn(5, 24, generator=g).abs())
    assert_exact(TorchBf16Index(positive, **SMALL).search(negative, 5), negative, positive, 5)


def test_a_query_with_too_many_near_duplicates_is_searched_in_fp32(monkeypatch):
    g = torch.Generator().manual_seed(5)
    base = unit(torch.randn(1, 16, generator=g))
    keys = torch.cat([base.repeat(400, 1), unit(torch.randn(1600, 16, generator=g))])  # 400 identical keys
    queries = torch.cat([base, unit(torch.randn(9, 16, generator=g))])
    monkeypatch.setattr(knn, "MAX_POOL_PER_QUERY", 100)
    index = TorchBf16Index(keys, **SMALL)
    sims, idx = index.search(queries, 5)
    assert index.overflow_queries >= 1
    assert (idx[0] < 400).all() and torch.allclose(sims[0], torch.ones(5))  # any 5 of the identical keys
    assert_exact((sims[1:], idx[1:]), queries[1:], keys, 5)


def test_worker_threads_give_the_same_answer_and_restore_the_thread_count():
    g = torch.Generator().manual_seed(6)
    keys = unit(torch.randn(3000, 32, generator=g))
    queries = unit(torch.randn(500, 32, generator=g))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = TorchBf16Index(keys, query_chunk=128, **SMALL).search(queries, 10)
        torch.set_num_threads(2)
        index = TorchBf16Index(keys, query_chunk=128, **SMALL)
        parallel = index.search(queries, 10, progress=True)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(parallel[1], serial[1]) and torch.equal(parallel[0], serial[0])
    assert index.queries_searched == 500


# ---------------------------------------------------------------------------------- backend choice, Hummingbird


def test_backend_name_auto_and_device():
    assert "torch_bf16" in KNN_BACKENDS
    g = torch.Generator().manual_seed(7)
    keys = unit(torch.randn(300, 8, generator=g))
    index = build_knn_index(keys, "torch_bf16", device="cuda")  # runs on the CPU whatever the device
    assert isinstance(index, TorchBf16Index) and index.exact
    assert index.describe() == {
        "knn_backend_used": "torch_bf16",
        "knn_exact": True,
        "knn_index": "bf16 scan with error bound + exact fp32 re-scoring (torch)",
    }
    queries = unit(torch.randn(10, 8, generator=g))
    assert_exact(knn_search(queries, keys, 4, backend="torch_bf16", progress=False), queries, keys, 4)


def test_auto_picks_torch_bf16_only_on_a_cpu_with_fast_bf16(monkeypatch):
    monkeypatch.setattr(knn, "fast_bf16_matmul", lambda: True)
    assert resolve_backend("auto") == resolve_backend("auto", "cpu") == "torch_bf16"
    assert resolve_backend("auto", "cuda") == "torch"
    assert resolve_backend("torch") == "torch"
    monkeypatch.setattr(knn, "fast_bf16_matmul", lambda: False)
    monkeypatch.setattr(knn, "_faiss", lambda: None)
    assert resolve_backend("auto") == "torch"
    monkeypatch.setattr(knn, "_faiss", lambda: object())
    assert resolve_backend("auto") == "faiss"
    # the check itself: AMX tiles usable and oneDNN built in, False where torch cannot tell
    monkeypatch.undo()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    assert knn.fast_bf16_matmul() == bool(amx and torch.backends.mkldnn.is_available())
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert knn.fast_bf16_matmul() is False


def _segmentation_problem(n: int, seed: int) -> DenseFeatures:
    """``n`` maps of 4 × 6 patches (2 × 2 pixels), 5 classes, features = class prototype + noise."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(5, 24, generator=torch.Generator().manual_seed(99))
    labels = torch.randint(0, 5, (n, 4, 6), generator=g)
    feats = prototypes[labels] + 1.2 * torch.randn(n, 4, 6, 24, generator=g)
    masks = labels.repeat_interleave(2, 1).repeat_interleave(2, 2).to(torch.uint8)
    return DenseFeatures(feats.permute(0, 3, 1, 2).contiguous(), masks, 2, 5, 255)


def test_hummingbird_scores_the_same_as_exact_torch_search():
    train, val = _segmentation_problem(200, 0), _segmentation_problem(40, 1)
    report_t, report_b = {}, {}
    scores_t, conf_t, bank_t = hummingbird_retrieval(
        train, val, HummingbirdConfig(backend="torch"), progress=False, search_report=report_t
    )
    scores_b, conf_b, bank_b = hummingbird_retrieval(
        train, val, HummingbirdConfig(backend="torch_bf16", query_chunk=64), progress=False, search_report=report_b
    )
    assert 30.0 < scores_t.mean_iou < 95.0  # informative, imperfect
    assert bank_t == bank_b == 200 * 24
    assert torch.equal(conf_t, conf_b) and scores_b.mean_iou == scores_t.mean_iou
    assert report_b["knn_backend_used"] == "torch_bf16" and report_b["knn_exact"] is True
    assert report_b["knn_recall_at_k"] is None
