"""What each metric type of an evaluation result means: the direction that is better and the Hub task it
belongs to. Read by the evaluation (results, comparison tables) and by the model card, which imports this
light module rather than the evaluation package (that one brings datasets and scikit-learn)."""

from __future__ import annotations

#: Every ``metric_type`` a result may carry, and whether a larger value is better (comparison tables use it to
#: say which model wins). ``mean_iou``, ``pixel_accuracy``, ``pck`` and ``delta1`` are percentages; ``rmse`` is in
#: metres; ``abs_rel`` is a ratio. Segmentation protocols report ``mean_iou`` (task ``semantic-segmentation``),
#: correspondence protocols ``pck`` (task ``keypoint-matching``), the depth probe ``rmse``, ``delta1`` and
#: ``abs_rel`` (task ``depth-estimation``); the task names are the Hub's pipeline tags.
HIGHER_IS_BETTER = {
    "mean_iou": True,
    "pixel_accuracy": True,
    "pck": True,
    "delta1": True,
    "rmse": False,
    "abs_rel": False,
}

#: The task (the Hub's ``model-index`` ``task.type``, a pipeline tag) of each metric type in
#: :data:`HIGHER_IS_BETTER`: segmentation protocols report mIoU and pixel accuracy, the correspondence protocols
#: (known warp, SPair-71k) PCK, the depth probe RMSE, AbsRel and δ₁. The card shows one results table per task,
#: in this order.
TASK_OF_METRIC = {
    "mean_iou": "semantic-segmentation",
    "pixel_accuracy": "semantic-segmentation",
    "pck": "keypoint-matching",
    "rmse": "depth-estimation",
    "abs_rel": "depth-estimation",
    "delta1": "depth-estimation",
}
