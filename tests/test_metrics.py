"""Scores of predicted classes on imbalanced sets: exact against scikit-learn, and the majority baseline's signature."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, confusion_matrix as sk_confusion, f1_score

from equinb import metrics

K = 7


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_match_scikit_learn(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.multinomial(torch.tensor([21., 123, 15, 8, 22, 1, 3]), 193, replacement=True, generator=gen)
    predicted = torch.where(torch.rand(193, generator=gen) < 0.6, labels, torch.randint(0, K, (193,), generator=gen))
    scores = metrics.classification_scores(predicted, labels, K)
    assert scores["top1"] == pytest.approx(100 * (predicted == labels).double().mean().item())
    assert metrics.top1(predicted, labels) == scores["top1"]
    assert scores["balanced_accuracy"] == pytest.approx(100 * balanced_accuracy_score(labels, predicted))
    assert scores["macro_f1"] == pytest.approx(100 * f1_score(labels, predicted, average="macro", zero_division=0))
    assert metrics.confusion_matrix(predicted, labels, K).tolist() == sk_confusion(labels, predicted,
                                                                                   labels=list(range(K))).tolist()


def test_top1_refuses_no_predictions_and_mismatched_shapes() -> None:
    assert metrics.top1(torch.tensor([1, 2, 3]), torch.tensor([1, 0, 3])) == pytest.approx(200 / 3)
    with pytest.raises(ValueError, match="one non-empty shape"):
        metrics.top1(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="one non-empty shape"):
        metrics.top1(torch.tensor([1, 2]), torch.tensor([1, 2, 3]))


def test_the_majority_baseline_scores_its_share_in_top1_and_one_over_k_in_balanced_accuracy() -> None:
    train = torch.tensor([1] * 10 + [0] * 3 + [2] * 3)
    test = torch.tensor([1] * 6 + [0] * 2 + [2] * 1 + [3] * 1)
    majority = metrics.majority_predictions(train, len(test))
    assert majority.tolist() == [1] * 10
    scores = metrics.classification_scores(majority, test, 4)
    assert scores["top1"] == pytest.approx(60.0)  # its class's share of the test set
    assert scores["balanced_accuracy"] == pytest.approx(25.0)  # 100 / (classes present)
    assert scores["macro_f1"] == pytest.approx(100 * 0.75 / 4)  # F1 of class 1 = 2*6/(6+10); others 0
    matrix = metrics.confusion_matrix(majority, test, 4)
    assert matrix[:, 1].sum() == 10 and matrix.sum() == 10 and (matrix[:, [0, 2, 3]] == 0).all()
    assert metrics.class_counts(test, 5).tolist() == [2, 6, 1, 1, 0]


def test_top1_counts_correct_predictions() -> None:
    assert metrics.top1(torch.tensor([1, 2, 3, 0]), torch.tensor([1, 2, 0, 1])) == 50.0


def test_bad_input_fails_clearly() -> None:
    with pytest.raises(ValueError, match="one non-empty length"):
        metrics.classification_scores(torch.tensor([0, 1]), torch.tensor([0]), 2)
    with pytest.raises(ValueError, match=r"class indices must lie in 0..1"):
        metrics.confusion_matrix(torch.tensor([0, 2]), torch.tensor([0, 1]), 2)
    with pytest.raises(ValueError, match="at least one training label"):
        metrics.majority_predictions(torch.tensor([], dtype=torch.long), 3)
