"""Downstream classification metrics (LIMU-BERT paper protocol: accuracy and macro-F1).

Plain NumPy, no scikit-learn. Labels and predictions are integer class indices in
[0, C). Shapes: N examples, C classes.

Macro-F1 follows scikit-learn's `f1_score(average="macro")` when called with no explicit
`labels=`: the per-class F1 scores are averaged over the classes that occur in `labels`
OR in `predictions` (the union). A class that is neither a true label nor ever predicted
has an undefined F1 and is left out of the mean; a class that occurs on only one side
scores 0 and counts. Undefined precision or recall (a zero denominator) is taken as 0,
as scikit-learn's default `zero_division` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _as_class_indices(values, name: str) -> np.ndarray:
    """A 1-D int64 array of class indices; floats are accepted only when integral."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of class indices, got shape {array.shape}")
    if array.dtype == bool:
        return array.astype(np.int64)
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.int64)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise ValueError(f"{name} must hold integer class indices, got non-integral values")
        return array.astype(np.int64)
    if array.size == 0:  # e.g. np.asarray([]) is float64; an object-dtype empty list lands here
        return np.zeros((0,), np.int64)
    raise ValueError(f"{name} must hold integer class indices, got dtype {array.dtype}")


def _checked(labels, predictions, num_classes: int | None) -> tuple[np.ndarray, np.ndarray]:
    y_true = _as_class_indices(labels, "labels")
    y_pred = _as_class_indices(predictions, "predictions")
    if y_true.shape[0] != y_pred.shape[0]:
        raise ValueError(
            f"labels and predictions differ in length: {y_true.shape[0]} vs {y_pred.shape[0]}"
        )
    if y_true.shape[0] == 0:
        raise ValueError("no examples: labels and predictions are empty")
    if num_classes is not None:
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        for name, array in (("labels", y_true), ("predictions", y_pred)):
            bad = (array < 0) | (array >= num_classes)
            if np.any(bad):
                raise ValueError(
                    f"{name} out of range [0, {num_classes}): "
                    f"{sorted(set(array[bad].tolist()))[:10]}"
                )
    return y_true, y_pred


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """int64 [C, C] counts: row = true class, column = predicted class."""
    y_true, y_pred = _checked(labels, predictions, num_classes)
    flat = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def accuracy(labels, predictions) -> float:
    """Fraction of predictions equal to the label."""
    y_true, y_pred = _checked(labels, predictions, None)
    return float(np.mean(y_true == y_pred))


def _per_class(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1, support and predicted counts per class from a confusion matrix."""
    matrix = np.asarray(matrix, np.int64)
    tp = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)  # true examples per class
    predicted = matrix.sum(axis=0)  # predictions per class
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
        recall = np.where(support > 0, tp / np.maximum(support, 1), 0.0)
        denominator = support + predicted  # = 2 tp + fp + fn
        f1 = np.where(denominator > 0, 2.0 * tp / np.maximum(denominator, 1), 0.0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support, "predicted": predicted}


def _macro_f1_from_matrix(matrix: np.ndarray) -> float:
    stats = _per_class(matrix)
    present = (stats["support"] > 0) | (stats["predicted"] > 0)  # union of true and predicted
    return float(np.mean(stats["f1"][present]))


def macro_f1(labels, predictions, num_classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions.

    Matches scikit-learn's `f1_score(y_true, y_pred, average="macro")` (see module docstring).
    """
    return _macro_f1_from_matrix(confusion_matrix(labels, predictions, num_classes))


def classification_metrics(labels, predictions, class_names: Sequence[str]) -> dict[str, Any]:
    """JSON-friendly summary: accuracy, macro-F1, per-class scores and the confusion matrix.

    `class_names[c]` names class index c, so C = len(class_names). `per_class` lists every
    class (also those with no support and never predicted, whose scores are 0); `macro_f1`
    averages only the classes in `macro_f1_classes` (present in labels or predictions).
    """
    class_names = [str(name) for name in class_names]
    if not class_names:
        raise ValueError("class_names is empty")
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names has duplicates: {class_names}")
    num_classes = len(class_names)
    matrix = confusion_matrix(labels, predictions, num_classes)
    stats = _per_class(matrix)
    present = (stats["support"] > 0) | (stats["predicted"] > 0)
    per_class = {
        name: {
            "precision": float(stats["precision"][c]),
            "recall": float(stats["recall"][c]),
            "f1": float(stats["f1"][c]),
            "support": int(stats["support"][c]),
        }
        for c, name in enumerate(class_names)
    }
    num_examples = int(matrix.sum())
    return {
        "accuracy": float(np.trace(matrix) / num_examples),
        "macro_f1": float(np.mean(stats["f1"][present])),
        "macro_f1_classes": [name for name, keep in zip(class_names, present) if keep],
        "num_examples": num_examples,
        "class_names": class_names,
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
    }
