"""fedsys.metrics against scikit-learn, on hand-made predictions and a few random ones."""

import math

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    recall_score,
    roc_auc_score,
)

from fedsys.metrics import classification_metrics, confusion, macro_f1, per_class_recall, roc_auc

# 4 classes; class 2 is never predicted, class 3 is predicted once but never true.
LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 2, 1, 0])
PREDICTIONS = np.array([0, 1, 0, 1, 1, 0, 1, 3, 1, 0])


def _one_hot_probabilities(predictions, num_classes):
    probabilities = np.full((len(predictions), num_classes), 0.1 / (num_classes - 1))
    probabilities[np.arange(len(predictions)), predictions] = 0.9
    return probabilities


def test_confusion_matches_scikit_learn():
    matrix = confusion(LABELS, PREDICTIONS, 4)

    assert (matrix == confusion_matrix(LABELS, PREDICTIONS, labels=range(4))).all()


def test_macro_f1_matches_scikit_learn_with_a_never_predicted_and_a_never_true_class():
    ours = macro_f1(confusion(LABELS, PREDICTIONS, 4))

    assert ours == pytest.approx(f1_score(LABELS, PREDICTIONS, average="macro", zero_division=0.0))


def test_macro_f1_ignores_classes_absent_from_labels_and_predictions():
    labels, predictions = np.array([0, 1, 1, 0, 1]), np.array([0, 1, 0, 0, 1])

    ours = macro_f1(confusion(labels, predictions, 5))  # classes 2-4 appear nowhere

    assert ours == pytest.approx(f1_score(labels, predictions, average="macro"))


def test_per_class_recall_matches_scikit_learn_and_is_zero_without_support():
    ours = per_class_recall(confusion(LABELS, PREDICTIONS, 4))

    expected = recall_score(LABELS, PREDICTIONS, average=None, labels=range(4), zero_division=0.0)
    assert ours == pytest.approx(expected)
    assert ours[3] == 0.0


def test_roc_auc_matches_scikit_learn_with_tied_scores():
    labels = np.array([0, 0, 1, 1, 0, 1, 1, 0, 1, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.4, 0.8, 0.4, 0.8, 0.2, 0.1, 0.4, 0.8, 0.9, 0.1])

    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))


def test_roc_auc_when_every_score_ties_is_one_half():
    labels = np.array([0, 1, 1, 0, 1])

    assert roc_auc(labels, np.full(5, 0.3)) == pytest.approx(0.5)


def test_roc_auc_of_a_perfect_and_an_inverted_ranking():
    labels = np.array([0, 0, 1, 1])

    assert roc_auc(labels, np.array([0.1, 0.2, 0.7, 0.9])) == 1.0
    assert roc_auc(labels, np.array([0.9, 0.7, 0.2, 0.1])) == 0.0


def test_roc_auc_with_one_class_only_is_nan():
    assert math.isnan(roc_auc(np.array([1, 1, 1]), np.array([0.2, 0.5, 0.9])))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_binary_predictions_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=200)
    positive = np.round(rng.random(200) * 0.5 + 0.3 * labels, 1)  # coarse: many ties
    probabilities = np.stack([1 - positive, positive], axis=1)

    metrics = classification_metrics(labels, probabilities)

    predictions = probabilities.argmax(axis=1)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(labels, predictions))
    assert metrics["macro-f1"] == pytest.approx(f1_score(labels, predictions, average="macro"))
    assert metrics["recall-1"] == pytest.approx(recall_score(labels, predictions))
    assert metrics["roc-auc"] == pytest.approx(roc_auc_score(labels, positive))


def test_classification_metrics_reports_recall_per_class_and_no_auc_for_multiclass():
    metrics = classification_metrics(LABELS, _one_hot_probabilities(PREDICTIONS, 4))

    assert metrics["accuracy"] == pytest.approx(accuracy_score(LABELS, PREDICTIONS))
    assert [metrics[f"recall-{k}"] for k in range(4)] == pytest.approx(
        recall_score(LABELS, PREDICTIONS, average=None, labels=range(4), zero_division=0.0)
    )
    assert "roc-auc" not in metrics
