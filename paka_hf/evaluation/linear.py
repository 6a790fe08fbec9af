r"""Linear segmentation probe on frozen patch tokens (the Leopart / NeCo protocol; docs/EVALUATION.md).

A ``1 × 1`` convolution ``W ∈ R^{C × D}, b ∈ R^C`` maps each patch token ``f ∈ R^D`` to class logits.
The published protocol upsamples the tokens bilinearly to ``100 × 100`` and then applies the
``1 × 1`` conv; both operations are linear and act on different axes, so

.. math::  \mathrm{up}(W F + b) = W\,\mathrm{up}(F) + b

and we apply the conv on the ``h × w`` grid first and upsample the ``C``-channel logits (same
numbers, ``D / C`` times cheaper). Training: cross-entropy with ``ignore_index`` against the ground
truth nearest-resized to ``100 × 100``; SGD (lr 0.01, momentum 0.9, weight decay 1e-4), batch 128,
25 epochs, learning rate × 0.1 after epoch 20. Evaluation: argmax of the upsampled logits against the
ground truth at ``100 × 100``, accumulated into one confusion matrix over the split.

Augmentation: the published protocol draws a fresh ``RandomResizedCrop(0.8–1) + flip`` for every
epoch. Features here are frozen and computed once (:mod:`.features`), so training uses
``train.features`` as given: pass features extracted with ``augment=True, passes=V`` and epoch ``e``
uses view ``e mod V`` of every image (``V = epochs`` reproduces the protocol exactly; the default run
uses ``V = 2``, see ``docs/EVALUATION.md``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from paka_hf.evaluation.features import DenseFeatures
from paka_hf.evaluation.metrics import SegmentationScores, confusion_matrix, segmentation_scores


@dataclass
class LinearProbeConfig:
    """Settings of the linear protocol (defaults: docs/EVALUATION.md).

    Args:
        epochs: training epochs.
        batch_size: feature maps per step.
        lr: SGD learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        lr_step_epoch: epochs between learning-rate drops.
        lr_gamma: the learning rate's factor at each drop.
        eval_size: the side masks are trained and scored at.
        seed: the seed of the head's init and the batch order.
        device: where the head trains; None for the CPU.

    Example::

        LinearProbeConfig(epochs=5, lr=0.05)  # for run_evaluation via EvaluationSettings(linear=...)
    """

    epochs: int = 25
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_step_epoch: int = 20
    lr_gamma: float = 0.1
    eval_size: int = 100
    seed: int = 0
    device: str | None = None  # where the head trains (None: CPU); the runner passes its --device

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (for the results JSON).

        Returns:
            ``{field: value}``.
        """
        return asdict(self)


def resize_masks(masks: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of ``(N, H, W)`` integer masks to ``size`` (``int64`` result).

    Args:
        masks: ``(N, H, W)`` integer masks.
        size: a side, or ``(height, width)``.

    Returns:
        ``(N, *size)`` int64 masks.
    """
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(masks.shape[-2:]) == size:
        return masks.long()
    out = F.interpolate(masks[:, None].float(), size=size, mode="nearest-exact")
    return out[:, 0].long()


def _views(train: DenseFeatures, num_views: int) -> int:
    n = len(train)
    if n % num_views:
        raise ValueError(f"{n} training feature maps cannot be split into {num_views} equal views")
    return n // num_views


def train_linear_probe(
    train: DenseFeatures, config: LinearProbeConfig | None = None, *, num_views: int = 1, progress: bool = True
) -> nn.Conv2d:
    """Fit the ``1 × 1`` conv head on frozen ``train`` features; returns the head (``D → C``).

    ``num_views``: ``train`` holds ``num_views`` passes over the same images (pass-major); epoch ``e``
    trains on pass ``e mod num_views``.

    Args:
        train: the training features and masks.
        config: the protocol's settings; None for the defaults.
        num_views: the passes ``train`` holds.
        progress: show a progress bar over the SGD steps (with an ETA; the epoch and its last loss beside it).

    Returns:
        The trained head, on ``config.device``.

    Raises:
        ValueError: ``len(train)`` is not a multiple of ``num_views``.
    """
    cfg = config or LinearProbeConfig()
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    images = _views(train, num_views)
    dim = train.features.shape[1]
    device = torch.device(cfg.device or "cpu")
    head = nn.Conv2d(dim, train.num_classes, kernel_size=1).to(device)
    optimizer = torch.optim.SGD(head.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step_epoch, gamma=cfg.lr_gamma)
    targets = resize_masks(train.masks, cfg.eval_size).to(train.masks.dtype)  # compact; .long() per batch
    size = targets.shape[-2:]
    steps_per_epoch = math.ceil(images / cfg.batch_size)
    # counted in steps, not epochs: on a large split (VOC: 83 steps an epoch) the ETA shows after one step
    with tqdm(total=cfg.epochs * steps_per_epoch, desc="linear probe", unit="step", disable=not progress) as bar:
        for epoch in range(cfg.epochs):
            offset = (epoch % num_views) * images
            order = torch.randperm(images, generator=generator) + offset
            for start in range(0, images, cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                feats = train.features[idx].to(device).float()
                logits = F.interpolate(head(feats), size=size, mode="bilinear", align_corners=False)
                loss = F.cross_entropy(logits, targets[idx].to(device).long(), ignore_index=train.ignore_index)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                bar.update(1)
            scheduler.step()
            if progress and steps_per_epoch:  # one device sync per epoch, only when the bar is shown
                bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}", loss=f"{loss.item():.3f}", refresh=False)
    return head


@torch.no_grad()
def predict_linear(
    head: nn.Module, features: torch.Tensor, size: tuple[int, int], batch_size: int = 64
) -> torch.Tensor:
    """Argmax class map ``(N, *size)`` of the bilinearly upsampled logits.

    Args:
        head: the linear head.
        features: ``(N, D, h, w)`` feature maps.
        size: ``(height, width)`` of the predictions.
        batch_size: maps per forward pass.

    Returns:
        ``(N, *size)`` int64 class ids, on the CPU.
    """
    preds = []
    device = next(head.parameters()).device
    for start in range(0, features.shape[0], batch_size):
        logits = head(features[start : start + batch_size].to(device).float())
        preds.append(F.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(1).cpu())
    return torch.cat(preds)


@torch.no_grad()
def evaluate_linear_probe(head: nn.Module, val: DenseFeatures, eval_size: int = 100) -> torch.Tensor:
    """Confusion matrix ``(C, C)`` of the head on ``val`` at ``eval_size × eval_size``.

    Args:
        head: the linear head.
        val: the features and masks to score.
        eval_size: the side predictions and masks are compared at.

    Returns:
        The ``(C, C)`` int64 confusion matrix.

    Raises:
        ValueError: a mask value outside the classes and ignore (:func:`~paka_hf.evaluation.metrics.confusion_matrix`).
    """
    targets = resize_masks(val.masks, eval_size)
    preds = predict_linear(head, val.features, tuple(targets.shape[-2:]))
    return confusion_matrix(preds, targets, val.num_classes, val.ignore_index)


def linear_probe(
    train: DenseFeatures,
    val: DenseFeatures,
    config: LinearProbeConfig | None = None,
    *,
    num_views: int = 1,
    extra_zero_classes: int = 0,
    progress: bool = True,
) -> tuple[SegmentationScores, torch.Tensor]:
    """Train on ``train``, score on ``val``; returns (scores in percent, confusion matrix).

    Args:
        train: the training features and masks.
        val: the features and masks to score.
        config: the protocol's settings; None for the defaults.
        num_views: the passes ``train`` holds.
        extra_zero_classes: classes with IoU 0 added to the mean (:func:`~paka_hf.evaluation.metrics.segmentation_scores`).
        progress: show a progress bar.

    Returns:
        ``(scores, confusion)``.

    Raises:
        ValueError: ``train`` and ``val`` differ in feature dimension or classes, or ``len(train)`` is not a
            multiple of ``num_views``.

    Example::

        from paka_hf.evaluation import LinearProbeConfig, linear_probe
        scores, _ = linear_probe(train_features, val_features, LinearProbeConfig(epochs=5))
        print(scores.mean_iou)
    """
    cfg = config or LinearProbeConfig()
    if train.num_classes != val.num_classes or train.features.shape[1] != val.features.shape[1]:
        raise ValueError("train and val features must share the feature dimension and the class list")
    head = train_linear_probe(train, cfg, num_views=num_views, progress=progress)
    conf = evaluate_linear_probe(head, val, cfg.eval_size)
    return segmentation_scores(conf, extra_zero_classes), conf
