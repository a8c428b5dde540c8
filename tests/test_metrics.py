import numpy as np
import pytest
import torch

from vitbook import metrics


def test_auroc_matches_a_hand_count_with_ties():
    scores = [0.1, 0.4, 0.35, 0.8, 0.4]
    positive = [0, 0, 1, 1, 1]
    # pairs (pos, neg): (0.35,0.1)=1 (0.35,0.4)=0 (0.8,0.1)=1 (0.8,0.4)=1 (0.4,0.1)=1 (0.4,0.4)=0.5 -> 4.5/6
    assert metrics.auroc(scores, positive) == pytest.approx(4.5 / 6)
    assert metrics.auroc([1, 2, 3], [0, 1, 1]) == 1.0
    assert metrics.auroc([3, 2, 1], [0, 1, 1]) == 0.0
    with pytest.raises(ValueError):
        metrics.auroc([1, 2], [1, 1])


def test_roc_curve_runs_from_origin_to_one():
    fpr, tpr = metrics.roc_curve([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0])
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert list(tpr) == [0, 0.5, 0.5, 1, 1]


def test_precision_and_recall_per_class():
    pr = metrics.precision_recall([0, 0, 1, 2, 2], [0, 1, 1, 2, 0], 3)
    np.testing.assert_allclose(pr["precision"], [0.5, 1.0, 0.5])
    np.testing.assert_allclose(pr["recall"], [0.5, 0.5, 1.0])


def test_knn_and_linear_probe_separate_separable_clusters_and_not_noise():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=g) * 4
    y = torch.arange(300) % 3
    x = centres[y] + torch.randn(300, 16, generator=g)
    assert metrics.knn_accuracy(x[:200], y[:200], x[200:], y[200:]) > 0.95
    assert metrics.linear_probe(x[:200], y[:200], x[200:], y[200:]) > 0.95
    noise = torch.randn(300, 16, generator=g)
    assert metrics.linear_probe(noise[:200], y[:200], noise[200:], y[200:]) < 0.6
    assert metrics.silhouette(x, y) > 0.5 > metrics.silhouette(noise, y)
