"""In-memory image datasets: `ImageDataset` (images and labels as tensors, with class names),
the checks every label and index passes (`class_labels`, `checked_indices`), and subsets drawn
from a seed (`train_val_split`, `few_per_class`). Where the images come from is `vitbook.data`.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

MNIST_CLASSES = tuple(str(d) for d in range(10))


class ImageDataset(Dataset):
    """A labelled image set held in memory as uint8: item i is ``(image (1, 28, 28) float in [0, 1],
    int label)``. ``images`` and ``labels`` are open for fast batched access."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes=MNIST_CLASSES, name=""):
        if not torch.is_tensor(images) or not torch.is_tensor(labels):
            raise TypeError(
                f"ImageDataset takes torch tensors, got images {type(images).__name__} and labels "
                f"{type(labels).__name__}; convert with torch.as_tensor"
            )
        if images.ndim == 3:
            images = images[:, None]  # (N, H, W) -> (N, 1, H, W)
        if images.dtype != torch.uint8:
            raise ValueError(
                f"ImageDataset stores uint8 images (0..255), got {images.dtype}; convert float "
                f"images in [0, 1] with (x * 255).round().to(torch.uint8)"
            )
        if images.ndim != 4:
            raise ValueError(
                f"ImageDataset expects images (N, H, W) or (N, C, H, W), got shape {tuple(images.shape)}"
            )
        if labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"{len(images)} images but labels of shape {tuple(labels.shape)}: expected one "
                f"label per image, shape ({len(images)},)"
            )
        self.images = images
        self.labels = class_labels(labels)
        self.classes = tuple(classes)
        self.name = name

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i].float() / 255.0, int(self.labels[i])

    def __repr__(self) -> str:
        return f"ImageDataset({self.name!r}, {len(self)} images {tuple(self.images.shape[1:])}, {len(self.classes)} classes)"

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images as floats in [0, 1], (N, 1, H, W), and labels (N,)."""
        return self.images.float() / 255.0, self.labels

    def subset(self, indices) -> ImageDataset:
        """The images at ``indices`` (integers in [0, len), or a boolean mask of length len)."""
        idx = checked_indices(indices, len(self))
        return ImageDataset(self.images[idx], self.labels[idx], self.classes, self.name)


def class_labels(labels) -> torch.Tensor:
    """Labels as a long tensor; float labels with a fractional part or negative labels raise a
    ValueError instead of being truncated or wrapped."""
    labels = torch.as_tensor(labels)
    if labels.dtype == torch.bool or labels.is_complex():
        raise TypeError(f"expected integer class labels, got {labels.dtype}")
    if labels.is_floating_point():
        if not torch.isfinite(labels).all() or not torch.equal(labels, labels.round()):
            bad = labels[~torch.isfinite(labels) | (labels != labels.round())][:3].tolist()
            raise ValueError(
                f"expected integer class labels, got {labels.dtype} values such as {bad}; "
                f"labels are class indices 0, 1, 2, ... (pass labels.long() after rounding, or "
                f"argmax of one-hot or soft labels)"
            )
    labels = labels.long()
    if len(labels) and labels.min() < 0:
        raise ValueError(
            f"expected class labels 0, 1, 2, ..., got a negative label {labels.min().item()}"
        )
    return labels


def checked_indices(indices, n: int) -> torch.Tensor:
    """``indices`` as a long tensor of positions in [0, n), or an IndexError/TypeError that says
    what came. A boolean mask of length n selects where it is True."""
    idx = torch.as_tensor(indices)
    if idx.dtype == torch.bool:
        if idx.shape != (n,):
            raise IndexError(
                f"a boolean mask must have one entry per image ({n}), got shape {tuple(idx.shape)}"
            )
        return idx.nonzero().flatten()
    if idx.is_floating_point() or idx.is_complex():
        raise TypeError(
            f"expected integer indices, got {idx.dtype}; pass whole numbers in [0, {n})"
        )
    idx = idx.long().flatten()
    if len(idx) and (idx.min() < 0 or idx.max() >= n):
        bad = idx[(idx < 0) | (idx >= n)][:5].tolist()
        raise IndexError(
            f"indices must lie in [0, {n}) for a dataset of {n} images, got {bad}"
            f"{' (negative indices are not counted from the end here)' if min(bad) < 0 else ''}"
        )
    return idx


@dataclass
class Split:
    """A training set and a held-out validation set carved from it."""

    train: ImageDataset
    val: ImageDataset


def train_val_split(ds: ImageDataset, val_size: int = 5000, seed: int = 0) -> Split:
    """A seeded random split of a dataset into train and validation parts; ``val_size`` is a
    number of images, at least 1 and fewer than the dataset holds."""
    if isinstance(val_size, bool) or not isinstance(val_size, numbers.Integral):
        raise TypeError(
            f"val_size is a number of images, got {val_size!r}; for a fraction f pass "
            f"val_size=round(f * len(ds))"
        )
    if not 0 < val_size < len(ds):
        raise ValueError(
            f"val_size must leave images on both sides: between 1 and {len(ds) - 1} for "
            f"{len(ds)} images, got {val_size}"
        )
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(ds), generator=g)
    return Split(ds.subset(perm[val_size:]), ds.subset(perm[:val_size]))


def few_per_class(ds: ImageDataset, per_class: int, classes=None, seed: int = 0) -> ImageDataset:
    """A seeded subset with ``per_class`` examples of each class (of ``classes``, default all)."""
    return ds.subset(few_per_class_indices(ds, per_class, classes, seed))


def few_per_class_indices(ds: ImageDataset, per_class: int, classes=None, seed: int = 0):
    """The sorted positions `few_per_class` picks (to mark them in the full set, say)."""
    if isinstance(per_class, bool) or not isinstance(per_class, numbers.Integral) or per_class < 1:
        raise ValueError(
            f"per_class is a number of images of each class, at least 1; got {per_class!r}"
        )
    g = torch.Generator().manual_seed(seed)
    classes = range(len(ds.classes)) if classes is None else classes
    picked = []
    for c in classes:
        idx = (ds.labels == c).nonzero().flatten()
        if len(idx) < per_class:
            raise ValueError(f"class {c} has only {len(idx)} examples, {per_class} were asked for")
        picked.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    return torch.cat(picked).sort().values
