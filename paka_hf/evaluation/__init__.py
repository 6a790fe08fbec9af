"""Dense evaluation of frozen patch features: linear probe, overclustering, Hummingbird retrieval.

Public API (see ``docs/EVALUATION.md``)::

    from paka_hf.evaluation import run_evaluation, EvaluationSettings
    report = run_evaluation("facebook/dinov2-small", "camvid", ["linear", "hummingbird"], data_dir="data/camvid")
    report.save("results.json")

Lower-level pieces work on :class:`DenseFeatures` directly (``linear_probe``, ``overclustering``,
``hummingbird_retrieval``), so any feature extractor can be scored.
"""

from .datasets import (
    ADE20K,
    BENCHMARKS,
    HUB_SPECS,
    CamVid,
    COCOSegmentation,
    DatasetError,
    FolderSegmentation,
    HubSegmentation,
    HubSpec,
    SegmentationDataset,
    VOCSegmentation,
    load_segmentation_dataset,
    read_class_names,
)
from .features import DenseFeatures, FeatureCache, build_transform, extract_features
from .hummingbird import HummingbirdConfig, build_memory_bank, hummingbird_retrieval, knn_search
from .linear import LinearProbeConfig, linear_probe, train_linear_probe
from .metrics import (
    METRIC_PATH,
    SegmentationScores,
    confusion_matrix,
    greedy_match,
    hungarian_match,
    match_clusters,
    segmentation_scores,
)
from .overcluster import OverclusterConfig, OverclusterResult, overclustering
from .results import EvaluationReport, MetricResult
from .runner import PROTOCOLS, EvaluationSettings, run_evaluation

__all__ = [
    "ADE20K", "BENCHMARKS", "HUB_SPECS", "CamVid", "COCOSegmentation", "DatasetError", "FolderSegmentation",
    "HubSegmentation", "HubSpec", "SegmentationDataset", "VOCSegmentation", "load_segmentation_dataset",
    "read_class_names", "DenseFeatures", "FeatureCache", "build_transform", "extract_features",
    "HummingbirdConfig", "build_memory_bank", "hummingbird_retrieval", "knn_search", "LinearProbeConfig", "linear_probe",
    "train_linear_probe", "METRIC_PATH", "SegmentationScores", "confusion_matrix", "greedy_match",
    "hungarian_match", "match_clusters", "segmentation_scores", "OverclusterConfig", "OverclusterResult",
    "overclustering", "EvaluationReport", "MetricResult", "PROTOCOLS", "EvaluationSettings", "run_evaluation",
]  # fmt: skip
