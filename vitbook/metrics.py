"""Measuring representations and classifiers: features, linear probes, kNN accuracy,
silhouette, per-class precision and recall, and AUROC for telling unknowns apart.

Small, dependency-light implementations (torch and numpy; scikit-learn only for the
silhouette score), each checked against a hand-computed case in tests/test_metrics.py.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .loops import as_tensors, evaluating, model_device


@torch.no_grad()
def extract_features(
    model: nn.Module, data, batch_size: int = 1000
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pooled representation ``model.features(x)`` (B, D) of every image, computed where the
    model is, and the labels; both on the CPU."""
    x, y = as_tensors(data)
    device = model_device(model)
    with evaluating(model):
        feats = [
            model.features(x[i : i + batch_size].to(device)).float().cpu()
            for i in range(0, len(x), batch_size)
        ]
    return torch.cat(feats), y


def fit_linear_probe(
    train_feats,
    train_labels,
    num_classes: int | None = None,
    epochs: int = 100,
    lr: float = 0.05,
    weight_decay: float = 1e-4,
):
    """A logistic-regression classifier on frozen features, standardised with the training
    set's statistics (full-batch AdamW; deterministic). Returns ``(w (D, K), b (K,), mean,
    std)``: the logits of features ``f`` are ``((f - mean) / std) @ w + b``."""
    g = torch.Generator().manual_seed(0)
    mean, std = train_feats.mean(0), train_feats.std(0) + 1e-6
    xtr = (train_feats - mean) / std
    k = int(train_labels.max()) + 1 if num_classes is None else num_classes
    w = (torch.randn(xtr.shape[1], k, generator=g) * 0.01).to(xtr.device).requires_grad_()
    b = torch.zeros(k, device=xtr.device, requires_grad=True)  # where the features are
    opt = torch.optim.AdamW([w, b], lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(epochs):
            loss = F.cross_entropy(xtr @ w + b, train_labels.to(xtr.device))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return w.detach(), b.detach(), mean, std


def linear_probe(train_feats, train_labels, test_feats, test_labels, **kwargs) -> float:
    """Test accuracy of `fit_linear_probe`'s classifier (logistic regression on frozen,
    standardised features)."""
    k = int(max(train_labels.max(), test_labels.max())) + 1
    w, b, mean, std = fit_linear_probe(train_feats, train_labels, k, **kwargs)
    return (((test_feats - mean) / std @ w + b).argmax(1) == test_labels).float().mean().item()


def knn_accuracy(train_feats, train_labels, test_feats, test_labels, k: int = 10) -> float:
    """Accuracy of a k-nearest-neighbour vote (cosine similarity) in the embedding."""
    a, b = F.normalize(train_feats.float(), dim=1), F.normalize(test_feats.float(), dim=1)
    preds = []
    for i in range(0, len(b), 1000):
        sim = b[i : i + 1000] @ a.T  # (n, N)
        idx = sim.topk(k, dim=1).indices
        votes = F.one_hot(train_labels[idx], int(train_labels.max()) + 1).sum(1)
        preds.append(votes.argmax(1))
    return (torch.cat(preds) == test_labels).float().mean().item()


def silhouette(feats, labels, sample: int = 2000, seed: int = 0) -> float:
    """Mean silhouette coefficient (-1 to 1; higher means tighter, better separated classes),
    on a seeded sample of at most ``sample`` points."""
    from sklearn.metrics import silhouette_score

    f, y = np.asarray(feats, dtype=np.float64), np.asarray(labels)
    if len(f) > sample:
        idx = np.random.default_rng(seed).choice(len(f), sample, replace=False)
        f, y = f[idx], y[idx]
    return float(silhouette_score(f, y))


def auroc(scores, is_positive) -> float:
    """Area under the ROC curve: the probability that a random positive scores higher than a
    random negative (ties count half). Computed from ranks, exactly."""
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=np.float64).ravel()
    pos = np.asarray(is_positive, dtype=bool).ravel()
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both positives and negatives")
    ranks = rankdata(s)  # ties get the average of their ranks
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(scores, is_positive) -> tuple[np.ndarray, np.ndarray]:
    """False-positive and true-positive rates at every threshold (for plotting)."""
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(is_positive, dtype=bool)
    order = np.argsort(-s, kind="stable")
    tp = np.cumsum(pos[order])
    fp = np.cumsum(~pos[order])
    return np.concatenate([[0], fp / max(1, fp[-1])]), np.concatenate([[0], tp / max(1, tp[-1])])


def precision_recall(predictions, labels, num_classes: int) -> dict[str, np.ndarray]:
    """Per-class precision and recall (NaN where a class is never predicted or never present)."""
    p = np.asarray(predictions)
    y = np.asarray(labels)
    prec, rec = np.full(num_classes, np.nan), np.full(num_classes, np.nan)
    for c in range(num_classes):
        tp = np.sum((p == c) & (y == c))
        if np.sum(p == c):
            prec[c] = tp / np.sum(p == c)
        if np.sum(y == c):
            rec[c] = tp / np.sum(y == c)
    return {"precision": prec, "recall": rec}
