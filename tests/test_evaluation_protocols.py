"""The three protocols on synthetic features whose answer is known.

Each image is split into vertical stripes of whole patches, one class per stripe (no 2-D corners,
so bilinear upsampling cannot move a boundary). Features that encode the label must give 100 %
mIoU; the same features shuffled across patches must give about chance (≈ 14 % for 4 balanced
classes with random predictions).
"""

from __future__ import annotations

import pytest
import torch

from paka_hf.evaluation import (
    DenseFeatures,
    HummingbirdConfig,
    LinearProbeConfig,
    OverclusterConfig,
    build_memory_bank,
    hummingbird_retrieval,
    knn_search,
    linear_probe,
    overclustering,
)

C, P, H, W, D = 4, 14, 4, 4, 16
IGNORE = 255


def synthetic(n: int, seed: int, shuffle: bool = False, stripes: bool = True) -> DenseFeatures:
    g = torch.Generator().manual_seed(seed)
    col_labels = torch.randint(0, C, (n, W), generator=g)  # one class per stripe of patches
    if not stripes:  # one class per image
        col_labels = col_labels[:, :1].expand(n, W)
    patch_labels = col_labels[:, None, :].expand(n, H, W)
    feats = 0.1 * torch.randn(n, D, H, W, generator=g)
    feats += 5.0 * torch.nn.functional.one_hot(patch_labels, D).permute(0, 3, 1, 2).float()
    if shuffle:  # same marginal statistics, label information destroyed
        flat = feats.permute(0, 2, 3, 1).reshape(-1, D)
        flat = flat[torch.randperm(flat.shape[0], generator=g)]
        feats = flat.reshape(n, H, W, D).permute(0, 3, 1, 2)
    masks = patch_labels.repeat_interleave(P, 1).repeat_interleave(P, 2).clone()
    masks[:, :3, :3] = IGNORE  # a few ignored pixels must not count
    return DenseFeatures(feats.contiguous(), masks.to(torch.uint8), P, C, IGNORE)


FAST_LINEAR = LinearProbeConfig(epochs=30, batch_size=8, lr=0.1, lr_step_epoch=25)


def test_linear_probe_perfect_on_label_features():
    train, val = synthetic(24, 0, stripes=False), synthetic(8, 1, stripes=False)
    scores, conf = linear_probe(train, val, FAST_LINEAR, progress=False)
    assert scores.mean_iou == pytest.approx(100.0)
    assert conf.sum() == 8 * (100 * 100 - 5 * 5)  # 100x100 eval grid minus the ignored corner (3/56 -> 5 px)


def test_linear_probe_stripes_only_miss_boundary_pixels():
    # Bilinear upsampling of logits mixes the two patches next to a boundary with weights 0.52 / 0.48
    # at 100 px over 4 patches, so a learned head may flip a pixel column at a few stripe boundaries,
    # never more: errors stay within one eval pixel of a boundary.
    scores, conf = linear_probe(synthetic(24, 0), synthetic(8, 1), FAST_LINEAR, progress=False)
    errors = int(conf.sum() - conf.trace())
    assert scores.mean_iou > 99.5
    assert errors <= 8 * 3 * 100  # at most one 100-px column per boundary (3 per image)


def test_linear_probe_chance_on_shuffled_features():
    scores, _ = linear_probe(
        synthetic(24, 0, shuffle=True), synthetic(8, 1, shuffle=True), FAST_LINEAR, progress=False
    )
    assert scores.mean_iou < 30.0


def test_linear_probe_uses_views_per_epoch():
    train = synthetic(24, 0)
    two_views = DenseFeatures(
        torch.cat([train.features, train.features]), torch.cat([train.masks, train.masks]), P, C, IGNORE
    )
    scores, _ = linear_probe(two_views, synthetic(8, 1), FAST_LINEAR, num_views=2, progress=False)
    assert scores.mean_iou > 99.5
    with pytest.raises(ValueError, match="equal views"):
        linear_probe(two_views, synthetic(8, 1), FAST_LINEAR, num_views=5, progress=False)


@pytest.mark.parametrize("k", [C, 9])
def test_overclustering_perfect_on_label_features(k):
    (result,) = overclustering(synthetic(12, 2), OverclusterConfig(num_clusters=[k], seeds=[0, 1]), progress=False)
    assert result.matching == ("hungarian" if k == C else "greedy")
    assert result.mean_iou == pytest.approx(100.0)
    assert result.std == pytest.approx(0.0)
    assert result.seeds == [0, 1] and len(result.seed_values) == 2


def test_overclustering_chance_on_shuffled_features():
    results = overclustering(
        synthetic(12, 2, shuffle=True), OverclusterConfig(num_clusters=[C, 9], seeds=[0]), progress=False
    )
    assert all(r.mean_iou < 30.0 for r in results)


def test_hummingbird_perfect_on_label_features():
    scores, _, bank = hummingbird_retrieval(synthetic(16, 3), synthetic(6, 4), progress=False)
    assert scores.mean_iou == pytest.approx(100.0)
    assert bank == 16 * H * W  # every patch has labelled pixels (the corner patch keeps 196 - 9)


def test_hummingbird_chance_on_shuffled_features():
    scores, _, _ = hummingbird_retrieval(synthetic(16, 3, shuffle=True), synthetic(6, 4, shuffle=True), progress=False)
    assert scores.mean_iou < 30.0


def test_memory_bank_soft_labels_and_size():
    train = synthetic(4, 5)
    train.masks[0, :P, :P] = 0
    train.masks[0, :P, : P // 2] = 1  # patch (0, 0) of image 0: half class 1, half class 0
    keys, labels = build_memory_bank(train)
    assert torch.allclose(keys.norm(dim=1), torch.ones(len(keys)))
    assert torch.allclose(labels.sum(1), torch.ones(len(labels)))
    assert torch.allclose(labels[0], torch.tensor([0.5, 0.5, 0.0, 0.0]))
    keys_small, _ = build_memory_bank(train, memory_size=8)
    assert keys_small.shape[0] == 8  # 2 patches from each of the 4 maps


def test_knn_search_exact_and_chunked():
    g = torch.Generator().manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(37, 8, generator=g), dim=1)
    keys = torch.nn.functional.normalize(torch.randn(101, 8, generator=g), dim=1)
    sims, idx = knn_search(queries, keys, 5, backend="torch", query_chunk=7, key_chunk=16, progress=False)
    ref_s, ref_i = (queries @ keys.T).topk(5, dim=1)
    torch.testing.assert_close(sims, ref_s)
    assert torch.equal(idx, ref_i)


def test_hummingbird_respects_temperature_and_k():
    train, val = synthetic(16, 3), synthetic(6, 4)
    cfg = HummingbirdConfig(num_neighbors=1, temperature=1.0, memory_size=64, backend="torch")
    scores, _, bank = hummingbird_retrieval(train, val, cfg, progress=False)
    assert bank == 64 and scores.mean_iou == pytest.approx(100.0)


def test_knn_faiss_backend_wiring(monkeypatch):
    """The faiss branch without faiss installed: a stand-in IndexFlatIP with faiss's API must give the torch answer
    (tests/test_evaluation_hummingbird.py runs the real faiss)."""
    import numpy as np

    from paka_hf.evaluation import knn as hb  # the module that imports faiss

    class FlatIP:
        def __init__(self, dim):
            self.dim, self.data = dim, np.zeros((0, dim), np.float32)

        def add(self, x):
            assert x.dtype == np.float32 and x.shape[1] == self.dim
            self.data = np.concatenate([self.data, x])

        def search(self, q, k):
            sims = q @ self.data.T
            idx = np.argsort(-sims, axis=1)[:, :k]
            return np.take_along_axis(sims, idx, 1), idx.astype(np.int64)

    monkeypatch.setattr(hb, "_faiss", lambda: type("faiss", (), {"IndexFlatIP": FlatIP}))
    g = torch.Generator().manual_seed(1)
    queries = torch.nn.functional.normalize(torch.randn(20, 8, generator=g), dim=1)
    keys = torch.nn.functional.normalize(torch.randn(50, 8, generator=g), dim=1)
    sims, idx = knn_search(queries, keys, 3, backend="faiss", progress=False)
    ref_s, ref_i = knn_search(queries, keys, 3, backend="torch", progress=False)
    torch.testing.assert_close(sims, ref_s)
    assert torch.equal(idx, ref_i)
    monkeypatch.setattr(hb, "_faiss", lambda: None)
    with pytest.raises(ImportError, match="faiss"):
        knn_search(queries, keys, 3, backend="faiss", progress=False)
