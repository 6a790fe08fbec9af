"""Hummingbird as the reference evaluator (open-hummingbird-eval v2) runs it: the bounded memory bank's per-map
sampling, exact search with the real faiss against torch, and the approximate IVF index with its measured recall.

Synthetic problem: ``n`` maps of 4 × 4 patches (2 × 2 pixels each), each patch one of 5 classes, features = the
class's prototype plus Gaussian noise, so retrieval is informative but far from perfect and the similarities are
continuous (no exact ties).
"""

from __future__ import annotations

import logging

import pytest
import torch

from paka_hf.evaluation import DenseFeatures, HummingbirdConfig, build_memory_bank, hummingbird_retrieval
from paka_hf.evaluation.hummingbird import MEMORY_SAMPLING, memory_sampling_scores, patch_label_histograms
from paka_hf.evaluation.knn import (
    FaissIVFIndex,
    TorchFlatIndex,
    build_knn_index,
    knn_recall,
    resolve_backend,
)
from paka_hf.utils.errors import ConfigError

C, P, H, W, D = 5, 2, 4, 4, 24
IGNORE = 255


def noisy_problem(n: int, seed: int, noise: float = 1.2) -> DenseFeatures:
    """``n`` maps whose patch features are their class prototype plus ``noise`` × N(0, I)."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(C, D, generator=torch.Generator().manual_seed(1234))
    labels = torch.randint(0, C, (n, H, W), generator=g)
    feats = prototypes[labels] + noise * torch.randn(n, H, W, D, generator=g)
    masks = labels.repeat_interleave(P, 1).repeat_interleave(P, 2).clone()
    masks[:, 0, :] = IGNORE  # half of the first row's pixels are unlabelled: must not count anywhere
    return DenseFeatures(feats.permute(0, 3, 1, 2).contiguous(), masks.to(torch.uint8), P, C, IGNORE)


def _faiss():
    return pytest.importorskip("faiss", reason="faiss is not installed (pip install 'paka_hf[faiss]')")


# ------------------------------------------------------------------------------------------------ exact search


def test_exact_faiss_and_torch_give_the_same_neighbours_and_miou():
    _faiss()
    train, val = noisy_problem(300, 0), noisy_problem(60, 1)
    keys, _ = build_memory_bank(train)
    queries = torch.nn.functional.normalize(val.features.permute(0, 2, 3, 1).reshape(-1, D), dim=-1)
    k = 30
    t_sims, t_idx = build_knn_index(keys, "torch").search(queries, k + 1)
    f_sims, f_idx = build_knn_index(keys, "faiss").search(queries, k + 1)
    torch.testing.assert_close(f_sims, t_sims, atol=1e-5, rtol=0)
    # where the k-th and (k+1)-th similarities are apart, the k neighbours are the same keys; where every
    # consecutive gap is, they come in the same order
    untied_set = (t_sims[:, k - 1] - t_sims[:, k]) > 1e-5
    untied_order = ((t_sims[:, : k - 1] - t_sims[:, 1:k]) > 1e-5).all(1) & untied_set
    assert untied_set.float().mean() > 0.99 and untied_order.float().mean() > 0.8
    same_sets = [set(a) == set(b) for a, b in zip(t_idx[untied_set, :k].tolist(), f_idx[untied_set, :k].tolist())]
    assert all(same_sets)
    assert torch.equal(t_idx[untied_order, :k], f_idx[untied_order, :k])

    report_t, report_f = {}, {}
    scores_t, conf_t, bank_t = hummingbird_retrieval(
        train, val, HummingbirdConfig(backend="torch"), progress=False, search_report=report_t
    )
    scores_f, conf_f, bank_f = hummingbird_retrieval(
        train, val, HummingbirdConfig(backend="faiss"), progress=False, search_report=report_f
    )
    assert 30.0 < scores_t.mean_iou < 95.0  # an informative, imperfect problem
    assert abs(scores_t.mean_iou - scores_f.mean_iou) < 0.1
    assert bank_t == bank_f == 300 * H * W  # every patch holds a labelled pixel (the first row's: half)
    assert (conf_t - conf_f).abs().sum() <= conf_t.sum() // 1000  # at most 0.1 % of the pixels differ
    assert report_t["knn_backend_used"] == "torch" and report_f["knn_backend_used"] == "faiss"
    assert report_t["knn_exact"] and report_f["knn_exact"] and report_f["knn_recall_at_k"] is None


def test_auto_picks_faiss_on_the_cpu_and_torch_on_a_gpu(monkeypatch):
    _faiss()
    from paka_hf.evaluation import knn

    monkeypatch.setattr(knn, "fast_bf16_matmul", lambda: False)  # else torch_bf16 (tests/test_evaluation_knn.py)
    assert resolve_backend("auto") == "faiss" and resolve_backend("auto", "cpu") == "faiss"
    assert resolve_backend("auto", "cuda") == "torch"  # no GPU needed: only the name is resolved
    assert resolve_backend("faiss_ivf", "cuda") == "faiss_ivf"
    with pytest.raises(ConfigError, match="faiss_ivf"):
        resolve_backend("scann")


# ------------------------------------------------------------------------------------------ approximate search


def test_ivf_with_every_list_probed_is_exact_and_its_recall_is_one():
    _faiss()
    train, val = noisy_problem(300, 0), noisy_problem(40, 1)
    report = {}
    cfg = HummingbirdConfig(backend="faiss_ivf", ivf_nlist=16, ivf_nprobe=16, recall_sample=300)
    scores, _, _ = hummingbird_retrieval(train, val, cfg, progress=False, search_report=report)
    exact, _, _ = hummingbird_retrieval(train, val, HummingbirdConfig(backend="torch"), progress=False)
    assert report["knn_recall_at_k"] == pytest.approx(1.0)
    assert report["knn_recall_queries"] == 300
    assert (report["ivf_nlist_used"], report["ivf_nprobe_used"]) == (16, 16)
    assert report["knn_backend_used"] == "faiss_ivf" and report["knn_exact"] is False
    assert abs(scores.mean_iou - exact.mean_iou) < 0.1


def test_ivf_recall_is_measured_against_exact_search_on_the_queries_searched():
    _faiss()
    train, val = noisy_problem(300, 0, noise=3.0), noisy_problem(40, 1, noise=3.0)
    report = {}
    cfg = HummingbirdConfig(backend="faiss_ivf", ivf_nlist=32, ivf_nprobe=2, recall_sample=200, seed=3)
    hummingbird_retrieval(train, val, cfg, progress=False, search_report=report)
    assert 0.05 < report["knn_recall_at_k"] < 0.95  # probing 2 of 32 lists misses neighbours
    # the same number by hand: the seeded sample of the query patches, searched by the same index and exactly
    keys, _ = build_memory_bank(train, seed=3)
    index = build_knn_index(keys, "faiss_ivf", ivf_nlist=32, ivf_nprobe=2, seed=3)
    queries = torch.nn.functional.normalize(val.features.permute(0, 2, 3, 1).reshape(-1, D), dim=-1)
    pick = torch.randperm(len(queries), generator=torch.Generator().manual_seed(3))[:200].sort().values
    _, found = index.search(queries[pick], 30)
    _, exact = TorchFlatIndex(keys).search(queries[pick], 30)
    assert report["knn_recall_at_k"] == pytest.approx(knn_recall(found, exact), abs=1e-6)
    # more probes, higher recall
    more = {}
    cfg_more = HummingbirdConfig(**{**cfg.to_dict(), "ivf_nprobe": 8})
    hummingbird_retrieval(train, val, cfg_more, progress=False, search_report=more)
    assert more["knn_recall_at_k"] > report["knn_recall_at_k"]
    # recall_sample=0: not measured
    none = {}
    cfg_none = HummingbirdConfig(**{**cfg.to_dict(), "recall_sample": 0})
    hummingbird_retrieval(train, val, cfg_none, progress=False, search_report=none)
    assert none["knn_recall_at_k"] is None and none["knn_recall_queries"] is None


def test_ivf_lowers_nlist_for_a_small_bank_and_fills_short_queries_exactly(caplog):
    faiss = _faiss()
    g = torch.Generator().manual_seed(0)
    keys = torch.nn.functional.normalize(torch.randn(160, 8, generator=g), dim=-1)
    queries = torch.nn.functional.normalize(torch.randn(50, 8, generator=g), dim=-1)
    with caplog.at_level(logging.WARNING, logger="paka_hf.evaluation.knn"):
        index = FaissIVFIndex(keys, faiss, nlist=512, nprobe=32)
    assert (index.nlist, index.nprobe) == (4, 4)  # 160 // 39 lists, every one probed
    assert "nlist=4" in caplog.text
    # one probed list of ~40 keys cannot hold 100 neighbours: those queries are searched exactly
    short = FaissIVFIndex(keys, faiss, nlist=4, nprobe=1)
    sims, idx = short.search(queries, 100)
    ref_s, ref_i = TorchFlatIndex(keys).search(queries, 100)
    assert short.fallback_queries == 50 and short.describe()["knn_exact_fallback_queries"] == 50
    assert (idx >= 0).all()
    torch.testing.assert_close(sims, ref_s)


def test_knn_recall_counts_shared_neighbours():
    exact = torch.tensor([[0, 1, 2], [3, 4, 5]])
    found = torch.tensor([[2, 0, 9], [3, 4, 5]])
    assert knn_recall(found, exact) == pytest.approx((2 / 3 + 1) / 2)
    assert knn_recall(exact[:0], exact[:0]) == 1.0
    with pytest.raises(ValueError, match="shape"):
        knn_recall(found[:, :2], exact)


def test_faiss_backends_without_faiss_say_how_to_install(monkeypatch):
    from paka_hf.evaluation import knn

    monkeypatch.setattr(knn, "_faiss", lambda: None)
    monkeypatch.setattr(knn, "fast_bf16_matmul", lambda: False)  # else auto is torch_bf16
    keys = torch.nn.functional.normalize(torch.randn(50, 4), dim=-1)
    for backend in ("faiss", "faiss_ivf"):
        with pytest.raises(ImportError, match=r"paka_hf\[faiss\]"):
            build_knn_index(keys, backend)
    assert resolve_backend("auto") == "torch"


# ------------------------------------------------------------------------------------------------- memory bank


def test_rare_class_scores_are_the_reference_formula():
    masks = torch.randint(0, C, (6, H * P, W * P), generator=torch.Generator().manual_seed(0))
    masks[0, :P, :P] = IGNORE  # an unlabelled patch: never kept
    hist = patch_label_histograms(masks, P, C, IGNORE).reshape(6, H * W, C)
    scores = memory_sampling_scores(hist, "rare_class", torch.Generator().manual_seed(5))
    u = torch.rand(6, H * W, generator=torch.Generator().manual_seed(5))
    for b in range(6):
        present = [set(torch.nonzero(hist[b, i]).flatten().tolist()) for i in range(H * W)]
        patches_with = {c: sum(c in s for s in present) for c in range(C)}  # n_c: patches of map b holding c
        for i, classes in enumerate(present):
            expected = float("inf") if not classes else float(u[b, i]) * sum(patches_with[c] for c in classes)
            assert scores[b, i].item() == pytest.approx(expected)
    uniform = memory_sampling_scores(hist, "uniform", torch.Generator().manual_seed(5))
    assert torch.isinf(uniform[0, 0]) and torch.equal(uniform[1], u[1])


def test_rare_class_sampling_keeps_rare_patches_uniform_keeps_their_share():
    n = 200
    masks = torch.zeros(n, H * P, W * P, dtype=torch.uint8)
    masks[:, :P, : 2 * P] = 1  # class 1 covers 2 of the 16 patches of every map
    feats = torch.randn(n, D, H, W, generator=torch.Generator().manual_seed(0))
    train = DenseFeatures(feats, masks, P, C, IGNORE)
    share = {}
    for sampling in MEMORY_SAMPLING:
        keys, labels = build_memory_bank(train, memory_size=2 * n, seed=0, sampling=sampling)
        assert keys.shape == (2 * n, D)  # memory_size // maps patches of every map
        share[sampling] = float(labels[:, 1].mean())
    # scores 2u against 14u: the rare patches are kept about half the time (0.56 here), 4x their area share
    assert share["rare_class"] > 3 * 2 / 16
    assert abs(share["uniform"] - 2 / 16) < 0.05


def test_bounded_bank_split_seed_and_ignored_pixels():
    train = noisy_problem(10, 0)
    train.masks[3] = IGNORE  # map 3 has no labelled pixel: contributes nothing
    keys, labels = build_memory_bank(train, memory_size=10 * 5 + 7)  # 5 per map
    assert keys.shape[0] == 9 * 5
    assert torch.allclose(labels.sum(1), torch.ones(len(labels)))
    again, _ = build_memory_bank(train, memory_size=57)
    other, _ = build_memory_bank(train, memory_size=57, seed=1)
    assert torch.equal(keys, again) and not torch.equal(keys, other)
    # a map with fewer labelled patches than its share gives what it has
    small = DenseFeatures(train.features[:2], train.masks[:2].clone(), P, C, IGNORE)
    small.masks[0, P:] = IGNORE  # map 0: only the first patch row is (half) labelled
    keys_small, labels_small = build_memory_bank(small, memory_size=2 * 10)
    assert keys_small.shape[0] == W + 10
    # ignored pixels never enter a label: row 0 patches are labelled by their lower pixel row only
    full_keys, full_labels = build_memory_bank(small)
    assert torch.equal(full_labels[:W], torch.nn.functional.one_hot(small.masks[0, 1, ::P].long(), C).float())


def test_config_refuses_unknown_choices_and_bad_sizes():
    with pytest.raises(ConfigError, match="knn_backend"):
        HummingbirdConfig(backend="scann")
    with pytest.raises(ConfigError, match="memory_sampling"):
        HummingbirdConfig(memory_sampling="balanced")
    for field, value in (("ivf_nlist", 0), ("ivf_nprobe", -1), ("memory_size", 0), ("num_neighbors", 0)):
        with pytest.raises(ConfigError, match=field):
            HummingbirdConfig(**{field: value})
    with pytest.raises(ConfigError, match="recall_sample"):
        HummingbirdConfig(recall_sample=-1)
