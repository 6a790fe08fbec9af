"""Metrics and matching: hand-computed confusion matrices, the offline `evaluate` module, K > #classes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from paka_hf.evaluation.metrics import (
    METRIC_PATH,
    confusion_matrix,
    greedy_match,
    hungarian_match,
    match_clusters,
    matched_confusion,
    segmentation_scores,
)

# 3 classes, ignore 255. Rows = ground truth, columns = prediction.
TARGET = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1], [0, 1, 2, 255]])
PRED = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 1], [0, 1, 1, 0]])
# pixel by pixel: (0,0) (0,1) (1,1) (1,1) | (2,2) (2,0) ign (1,1) | (0,0) (1,1) (2,1) ign
EXPECTED = torch.tensor([[2, 1, 0], [0, 4, 0], [1, 1, 1]])


def test_confusion_matrix_matches_hand_count():
    conf = confusion_matrix(PRED, TARGET, num_classes=3, ignore_index=255)
    assert torch.equal(conf, EXPECTED)


def test_scores_match_hand_computation():
    scores = segmentation_scores(EXPECTED)
    # IoU_0 = 2 / (3 + 3 - 2) = 0.5, IoU_1 = 4 / (4 + 6 - 4) = 2/3, IoU_2 = 1 / (3 + 1 - 1) = 1/3
    expected_iou = np.array([0.5, 2 / 3, 1 / 3]) * 100
    np.testing.assert_allclose(scores.per_class_iou, expected_iou)
    assert scores.mean_iou == pytest.approx(expected_iou.mean())
    assert scores.pixel_accuracy == pytest.approx(7 / 10 * 100)


def test_absent_class_is_left_out_and_published_convention_adds_zero_classes():
    conf = torch.tensor([[5, 0, 0], [0, 5, 0], [0, 0, 0]])  # class 2 neither present nor predicted
    scores = segmentation_scores(conf)
    assert math.isnan(scores.per_class_iou[2])
    assert scores.mean_iou == pytest.approx(100.0)
    assert scores.per_class_dict(["a", "b", "c"])["c"] is None
    published = segmentation_scores(conf, extra_zero_classes=1)  # e.g. ADE20K's "other" over 151
    assert published.mean_iou == pytest.approx(200.0 / 3)


def test_confusion_rejects_out_of_range_targets():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 7]), num_classes=3, ignore_index=255)


def test_evaluate_module_loads_offline_and_agrees(monkeypatch):
    evaluate = pytest.importorskip("evaluate")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    metric = evaluate.load(METRIC_PATH)
    out = metric.compute(predictions=[PRED.numpy()], references=[TARGET.numpy()], num_labels=3, ignore_index=255)
    scores = segmentation_scores(EXPECTED)
    np.testing.assert_array_equal(out["confusion_matrix"], EXPECTED.numpy())
    assert out["mean_iou"] * 100 == pytest.approx(scores.mean_iou)
    assert out["overall_accuracy"] * 100 == pytest.approx(scores.pixel_accuracy)
    np.testing.assert_allclose(np.asarray(out["per_category_iou"]) * 100, scores.per_class_iou)


def test_hungarian_recovers_a_permutation():
    overlap = np.array([[0, 9, 1], [1, 0, 8], [7, 2, 0]])  # cluster 0 ≈ class 1, 1 ≈ 2, 2 ≈ 0
    np.testing.assert_array_equal(hungarian_match(overlap), [1, 2, 0])
    np.testing.assert_array_equal(match_clusters(overlap), [1, 2, 0])
    # greedy would send clusters 0 and 1 to the same class here; Hungarian must not
    tricky = np.array([[10, 9], [8, 1]])
    np.testing.assert_array_equal(hungarian_match(tricky), [1, 0])
    np.testing.assert_array_equal(greedy_match(tricky), [0, 0])


def test_greedy_many_to_one_when_more_clusters_than_classes():
    # 5 clusters, 2 classes: clusters 0, 2, 3 are mostly class 0; 1, 4 mostly class 1
    overlap = np.array([[6, 1], [0, 5], [3, 2], [4, 0], [1, 9]])
    mapping = match_clusters(overlap)  # auto -> greedy since K > C
    np.testing.assert_array_equal(mapping, [0, 1, 0, 0, 1])
    conf = matched_confusion(overlap, mapping, num_classes=2)
    # ground truth class 0: 6+3+4 predicted 0, 0+1 predicted 1; class 1: 1+2+0 predicted 0, 5+9 predicted 1
    np.testing.assert_array_equal(conf.numpy(), [[13, 1], [3, 14]])
    with pytest.raises(ValueError, match="K <= C"):
        hungarian_match(overlap)
