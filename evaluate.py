"""Segmentation metrics.

Data-set-level figures come from one summed confusion matrix (so they can be added up across
batches and processes): pixel accuracy and per-label IoU / mIoU. run.py uses them for validation.
"""
from __future__ import annotations

import torch
from torch import Tensor

from dataset import IGNORE_INDEX


def confusion_matrix(pred: Tensor, target: Tensor, num_labels: int,
                     ignore_index: int = IGNORE_INDEX) -> Tensor:
    """(num_labels, num_labels) int64 counts, rows = ground truth, columns = prediction.

    pred, target: integer label maps of the same shape; target pixels equal to ignore_index
    are left out.
    """
    valid = target != ignore_index
    index = target[valid].long() * num_labels + pred[valid].long()
    return torch.bincount(index, minlength=num_labels ** 2).reshape(num_labels, num_labels)


def pixel_accuracy(cm: Tensor) -> float:
    return (cm.diag().sum() / cm.sum().clamp(min=1)).item()


def iou_per_label(cm: Tensor) -> Tensor:
    """(num_labels,) float IoU; NaN for labels neither present nor predicted."""
    cm = cm.double()
    inter = cm.diag()
    union = cm.sum(0) + cm.sum(1) - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.nan)


def mean_iou(cm: Tensor) -> float:
    """Mean IoU over the labels that occur in the ground truth or the prediction."""
    return iou_per_label(cm).nanmean().item()
