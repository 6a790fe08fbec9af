"""Dense evaluation of frozen patch features: linear probe, overclustering, Hummingbird retrieval, known-warp
correspondence, SPair-71k keypoint transfer and a linear depth probe.

Public API (see ``docs/EVALUATION.md``)::

    from paka_hf.evaluation import run_evaluation, EvaluationSettings
    report = run_evaluation("facebook/dinov2-small", "camvid", ["linear", "hummingbird"], data_dir="data/camvid")
    report.save("results.json")

    from paka_hf.evaluation import comparison_table, evaluate_models
    reports = evaluate_models(["facebook/dinov2-small", "out/my_paka"], protocols=["warp"], warp_images="photos/")
    print(comparison_table(reports))

Lower-level pieces work on :class:`DenseFeatures` directly (``linear_probe``, ``overclustering``,
``hummingbird_retrieval``), so any feature extractor can be scored; the correspondence and depth protocols are
in :mod:`.correspondence`, :mod:`.spair` and :mod:`.depth`.

``__all__`` lists what a user calls. The benchmark classes (``CamVid``, ``VOCSegmentation``...), the metric
helpers (``confusion_matrix``, ``hungarian_match``...) and the constants (``BENCHMARKS``, ``PROTOCOLS``,
``SEGMENTATION_PROTOCOLS``, ``HUB_SPECS``, ``METRIC_PATH``) are importable from here too, and documented in their
modules.
"""

# Importable from here as well, outside __all__: the building blocks and constants behind the calls above.
from paka_hf.evaluation.compare import comparison_table
from paka_hf.evaluation.correspondence import CorrespondenceConfig
from paka_hf.evaluation.datasets import (
    ADE20K as ADE20K,
)
from paka_hf.evaluation.datasets import (
    BENCHMARKS as BENCHMARKS,
)
from paka_hf.evaluation.datasets import (
    HUB_SPECS as HUB_SPECS,
)
from paka_hf.evaluation.datasets import (
    CamVid as CamVid,
)
from paka_hf.evaluation.datasets import (
    COCOSegmentation as COCOSegmentation,
)
from paka_hf.evaluation.datasets import (
    DatasetError as DatasetError,
)
from paka_hf.evaluation.datasets import (
    FolderSegmentation as FolderSegmentation,
)
from paka_hf.evaluation.datasets import (
    HubSegmentation as HubSegmentation,
)
from paka_hf.evaluation.datasets import (
    HubSpec as HubSpec,
)
from paka_hf.evaluation.datasets import (
    SegmentationDataset as SegmentationDataset,
)
from paka_hf.evaluation.datasets import (
    VOCSegmentation as VOCSegmentation,
)
from paka_hf.evaluation.datasets import load_segmentation_dataset, read_class_names
from paka_hf.evaluation.depth import DepthProbeConfig
from paka_hf.evaluation.features import DenseFeatures, extract_features
from paka_hf.evaluation.features import (
    FeatureCache as FeatureCache,
)
from paka_hf.evaluation.hummingbird import HummingbirdConfig, hummingbird_retrieval
from paka_hf.evaluation.hummingbird import (
    build_memory_bank as build_memory_bank,
)
from paka_hf.evaluation.hummingbird import (
    knn_search as knn_search,
)
from paka_hf.evaluation.linear import LinearProbeConfig, linear_probe
from paka_hf.evaluation.linear import (
    train_linear_probe as train_linear_probe,
)
from paka_hf.evaluation.metrics import (
    METRIC_PATH as METRIC_PATH,
)
from paka_hf.evaluation.metrics import (
    SegmentationScores as SegmentationScores,
)
from paka_hf.evaluation.metrics import (
    confusion_matrix as confusion_matrix,
)
from paka_hf.evaluation.metrics import (
    greedy_match as greedy_match,
)
from paka_hf.evaluation.metrics import (
    hungarian_match as hungarian_match,
)
from paka_hf.evaluation.metrics import (
    match_clusters as match_clusters,
)
from paka_hf.evaluation.metrics import (
    segmentation_scores as segmentation_scores,
)
from paka_hf.evaluation.overcluster import OverclusterConfig, overclustering
from paka_hf.evaluation.overcluster import (
    OverclusterResult as OverclusterResult,
)
from paka_hf.evaluation.results import EvaluationReport
from paka_hf.evaluation.results import (
    MetricResult as MetricResult,
)
from paka_hf.evaluation.runner import (
    PROTOCOLS as PROTOCOLS,
)
from paka_hf.evaluation.runner import (
    SEGMENTATION_PROTOCOLS as SEGMENTATION_PROTOCOLS,
)
from paka_hf.evaluation.runner import EvaluationSettings, evaluate_models, run_evaluation
from paka_hf.evaluation.spair import SPairConfig

__all__ = [
    "CorrespondenceConfig",
    "DenseFeatures",
    "DepthProbeConfig",
    "EvaluationReport",
    "EvaluationSettings",
    "HummingbirdConfig",
    "LinearProbeConfig",
    "OverclusterConfig",
    "SPairConfig",
    "comparison_table",
    "evaluate_models",
    "extract_features",
    "hummingbird_retrieval",
    "linear_probe",
    "load_segmentation_dataset",
    "overclustering",
    "read_class_names",
    "run_evaluation",
]
