"""Scores of predicted classes on an imbalanced test set, where plain top-1 says little.

On ISIC 2018 two thirds of the test images are nevi, so a model that always answers "nevus" scores about
64% top-1 and has learned nothing. These scores see through that:

- ``confusion_matrix``: counts [K, K], rows the true class, columns the predicted class;
- ``balanced_accuracy``: the mean per-class recall over the classes present in the test set (a constant
  answer scores exactly 100 / K);
- ``macro_f1``: the mean F1 over the classes that are present or predicted, a class without a true
  positive counting 0 (as scikit-learn's ``f1_score(average="macro", zero_division=0)``);
- ``top1``: the share of correct predictions (the one top-1 every chapter and the training engine use);
- ``majority_predictions``: the baseline that always answers the most frequent training class.

All scores are in percent. Shapes: predicted [N] and labels [N], class indices in 0..K-1.
"""

from __future__ import annotations

import torch

__all__ = ["top1", "confusion_matrix", "class_counts", "balanced_accuracy", "macro_f1", "classification_scores",
           "majority_predictions"]

Tensor = torch.Tensor


def top1(predicted: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy (%): the share of ``predicted`` equal to ``labels``. Shapes: [N], [N] with N >= 1."""
    if len(labels) == 0 or predicted.shape != labels.shape:
        raise ValueError(f"top1 needs predictions and labels of one non-empty shape [N], got "
                         f"{tuple(predicted.shape)} and {tuple(labels.shape)}")
    return 100.0 * float((predicted == labels).sum()) / len(labels)


def _check(predicted: Tensor, labels: Tensor, n_classes: int) -> tuple[Tensor, Tensor]:
    predicted, labels = torch.as_tensor(predicted).long().reshape(-1), torch.as_tensor(labels).long().reshape(-1)
    if predicted.shape != labels.shape or labels.numel() == 0:
        raise ValueError(f"predicted and labels need one non-empty length, got {tuple(predicted.shape)} and "
                         f"{tuple(labels.shape)}")
    both = torch.cat([predicted, labels])
    if int(both.min()) < 0 or int(both.max()) >= n_classes:
        raise ValueError(f"class indices must lie in 0..{n_classes - 1}, got {int(both.min())}..{int(both.max())}")
    return predicted, labels


def class_counts(labels: Tensor, n_classes: int) -> Tensor:
    """Images per class. Shapes: labels [N] -> [K] (long)."""
    labels = torch.as_tensor(labels).long().reshape(-1)
    return torch.bincount(labels, minlength=n_classes)[:n_classes]


def confusion_matrix(predicted: Tensor, labels: Tensor, n_classes: int) -> Tensor:
    """Counts [K, K] (long): entry (i, j) is the number of images of class i predicted as class j."""
    predicted, labels = _check(predicted, labels, n_classes)
    return torch.bincount(labels * n_classes + predicted, minlength=n_classes ** 2).reshape(n_classes, n_classes)


def balanced_accuracy(predicted: Tensor, labels: Tensor, n_classes: int) -> float:
    """Mean recall (%) over the classes present in ``labels``."""
    matrix = confusion_matrix(predicted, labels, n_classes).double()
    support = matrix.sum(1)
    present = support > 0
    return 100.0 * float((matrix.diagonal()[present] / support[present]).mean())


def macro_f1(predicted: Tensor, labels: Tensor, n_classes: int) -> float:
    """Mean F1 (%) over the classes present in ``labels`` or in ``predicted``; F1 = 0 without a true positive."""
    matrix = confusion_matrix(predicted, labels, n_classes).double()
    tp, support, predicted_count = matrix.diagonal(), matrix.sum(1), matrix.sum(0)
    seen = (support + predicted_count) > 0
    f1 = 2 * tp / (support + predicted_count).clamp(min=1)  # = 2PR / (P + R), and 0 where tp = 0
    return 100.0 * float(f1[seen].mean())


def classification_scores(predicted: Tensor, labels: Tensor, n_classes: int) -> dict[str, float]:
    """``top1``, ``balanced_accuracy`` and ``macro_f1`` (%) of one set of predictions."""
    predicted, labels = _check(predicted, labels, n_classes)
    return dict(top1=top1(predicted, labels),
                balanced_accuracy=balanced_accuracy(predicted, labels, n_classes),
                macro_f1=macro_f1(predicted, labels, n_classes))


def majority_predictions(train_labels: Tensor, n_test: int) -> Tensor:
    """The majority baseline: the most frequent training class (the lowest index on a tie) for each of
    ``n_test`` images. Shapes: train_labels [N_train] -> [n_test] (long)."""
    train_labels = torch.as_tensor(train_labels).long().reshape(-1)
    if train_labels.numel() == 0:
        raise ValueError("the majority baseline needs at least one training label")
    majority = int(torch.bincount(train_labels).argmax())
    return torch.full((int(n_test),), majority, dtype=torch.long)
