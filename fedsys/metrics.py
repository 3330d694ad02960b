"""Classification metrics, computed from labels and predicted probabilities with NumPy."""

from __future__ import annotations

import numpy as np


def confusion(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """``num_classes x num_classes`` counts; rows are true classes."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def per_class_recall(matrix: np.ndarray) -> np.ndarray:
    """Recall of each class (0 where a class has no examples)."""
    support = matrix.sum(axis=1)
    recall: np.ndarray = np.divide(np.diag(matrix), support, out=np.zeros(len(matrix)), where=support > 0)
    return recall


def macro_f1(matrix: np.ndarray) -> float:
    """Unweighted mean F1 over classes present in labels or predictions (as scikit-learn)."""
    tp = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0)
    actual = matrix.sum(axis=1)
    denom = predicted + actual
    present = denom > 0
    return float((2 * tp[present] / denom[present]).mean()) if present.any() else 0.0


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Binary ROC-AUC via the rank statistic (ties get average ranks); NaN if one class only."""
    positives = labels == 1
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg_rank = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg_rank, counts)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Accuracy, macro-F1, per-class recall (``recall-<k>``) and, for 2 classes, ROC-AUC."""
    num_classes = probabilities.shape[1]
    predictions = probabilities.argmax(axis=1)
    matrix = confusion(labels, predictions, num_classes)
    out = {
        "accuracy": float((predictions == labels).mean()) if len(labels) else float("nan"),
        "macro-f1": macro_f1(matrix),
    }
    out.update({f"recall-{k}": float(r) for k, r in enumerate(per_class_recall(matrix))})
    if num_classes == 2:
        out["roc-auc"] = roc_auc(labels, probabilities[:, 1])
    return out
