"""Dense evaluation of frozen patch features: linear probe, overclustering, Hummingbird retrieval.

Public API (see ``docs/EVALUATION.md``)::

    from paka_hf.evaluation import run_evaluation, EvaluationSettings
    report = run_evaluation("facebook/dinov2-small", "camvid", ["linear", "hummingbird"], data_dir="data/camvid")
    report.save("results.json")

Lower-level pieces work on :class:`DenseFeatures` directly (``linear_probe``, ``overclustering``,
``hummingbird_retrieval``), so any feature extractor can be scored.

``__all__`` lists what a user calls. The benchmark classes (``CamVid``, ``VOCSegmentation``...), the metric
helpers (``confusion_matrix``, ``hungarian_match``...) and the constants (``BENCHMARKS``, ``PROTOCOLS``,
``HUB_SPECS``, ``METRIC_PATH``) are importable from here too, and documented in their modules.
"""

# Importable from here as well, outside __all__: the building blocks and constants behind the calls above.
from .datasets import (
    ADE20K as ADE20K,
)
from .datasets import (
    BENCHMARKS as BENCHMARKS,
)
from .datasets import (
    HUB_SPECS as HUB_SPECS,
)
from .datasets import (
    CamVid as CamVid,
)
from .datasets import (
    COCOSegmentation as COCOSegmentation,
)
from .datasets import (
    DatasetError as DatasetError,
)
from .datasets import (
    FolderSegmentation as FolderSegmentation,
)
from .datasets import (
    HubSegmentation as HubSegmentation,
)
from .datasets import (
    HubSpec as HubSpec,
)
from .datasets import (
    SegmentationDataset as SegmentationDataset,
)
from .datasets import (
    VOCSegmentation as VOCSegmentation,
)
from .datasets import load_segmentation_dataset, read_class_names
from .features import DenseFeatures, extract_features
from .features import (
    FeatureCache as FeatureCache,
)
from .hummingbird import HummingbirdConfig, hummingbird_retrieval
from .hummingbird import (
    build_memory_bank as build_memory_bank,
)
from .hummingbird import (
    knn_search as knn_search,
)
from .linear import LinearProbeConfig, linear_probe
from .linear import (
    train_linear_probe as train_linear_probe,
)
from .metrics import (
    METRIC_PATH as METRIC_PATH,
)
from .metrics import (
    SegmentationScores as SegmentationScores,
)
from .metrics import (
    confusion_matrix as confusion_matrix,
)
from .metrics import (
    greedy_match as greedy_match,
)
from .metrics import (
    hungarian_match as hungarian_match,
)
from .metrics import (
    match_clusters as match_clusters,
)
from .metrics import (
    segmentation_scores as segmentation_scores,
)
from .overcluster import OverclusterConfig, overclustering
from .overcluster import (
    OverclusterResult as OverclusterResult,
)
from .results import EvaluationReport
from .results import (
    MetricResult as MetricResult,
)
from .runner import (
    PROTOCOLS as PROTOCOLS,
)
from .runner import EvaluationSettings, run_evaluation

__all__ = [
    "DenseFeatures",
    "EvaluationReport",
    "EvaluationSettings",
    "HummingbirdConfig",
    "LinearProbeConfig",
    "OverclusterConfig",
    "extract_features",
    "hummingbird_retrieval",
    "linear_probe",
    "load_segmentation_dataset",
    "overclustering",
    "read_class_names",
    "run_evaluation",
]
