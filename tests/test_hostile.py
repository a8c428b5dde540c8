"""Hostile but realistic input (issue 17): every case gets the right, documented result or an
exception of a clear type whose message says what was expected, what came and what to do.

Everything here runs on tiny models and random tensors: no dataset is downloaded, no zoo model
is trained."""

import errno
import importlib
import importlib.util
import math
import os
import sys
import time

import numpy as np
import pytest
import torch
from conftest import tiny_config, tiny_zoo_model

from vitbook import (
    data,
    interop,
    recipes,  # noqa: F401  (registers the book's zoo entries)
    train,
    zoo,
)
from vitbook.model import CheckpointMismatchError, ViT, preset
from vitbook.runs import Recipe
from vitbook.transforms import DigitAugment

# ---------------------------------------------------------------------------------------------
# Model: configurations


@pytest.mark.parametrize(
    "field,value,error,says",
    [
        ("depth", -1, ValueError, "depth must be at least 1"),
        ("depth", 0, ValueError, "depth must be at least 1"),
        ("num_classes", 0, ValueError, "num_classes must be at least 1"),
        ("num_classes", -1, ValueError, "num_classes must be at least 1"),
        ("image_size", 0, ValueError, "image_size must be at least 1"),
        ("image_size", -28, ValueError, "image_size must be at least 1"),
        ("patch_size", 0, ValueError, "patch_size must be at least 1"),
        ("patch_size", -7, ValueError, "patch_size must be at least 1"),
        ("heads", 0, ValueError, "heads must be at least 1"),
        ("heads", -2, ValueError, "heads must be at least 1"),
        ("dim", 0, ValueError, "dim must be at least 1"),
        ("dim", -32, ValueError, "dim must be at least 1"),
        ("mlp_dim", -5, ValueError, "mlp_dim must be at least 1"),
        ("mlp_dim", 0, ValueError, "mlp_dim must be at least 1"),
        ("in_channels", 0, ValueError, "in_channels must be at least 1"),
        ("image_size", 28.0, TypeError, "image_size must be a whole number"),
        ("dim", "32", TypeError, "dim must be a whole number"),
        ("heads", None, TypeError, "heads must be a whole number"),
        ("depth", True, TypeError, "depth must be a whole number"),
        ("num_classes", 10.5, TypeError, "num_classes must be a whole number"),
        ("norm_eps", -1, ValueError, "norm_eps must be a small positive number"),
        ("norm_eps", 0.0, ValueError, "norm_eps must be a small positive number"),
        ("norm_eps", math.nan, ValueError, "norm_eps must be a small positive number"),
        ("norm_eps", "1e-6", TypeError, "norm_eps"),
        ("dropout", 1.5, ValueError, "drop probability"),
        ("dropout", -0.1, ValueError, "drop probability"),
        ("attn_dropout", 1.0, ValueError, "drop probability"),
        ("qkv_bias", "yes", TypeError, "True or False"),
        ("fused_attn", 1, TypeError, "True or False"),
        ("pool", "max", ValueError, "pool must be one of"),
        ("pos_embed", "rope", ValueError, "pos_embed must be one of"),
        ("patch_impl", "fft", ValueError, "patch_impl must be one of"),
    ],
)
def test_config_refuses(field, value, error, says):
    with pytest.raises(error, match=says):
        tiny_config(**{field: value})


@pytest.mark.parametrize("name", ["ViT-B/0", "ViT-B/-1", "ViT-X/16", "vit-b/16", "ViT-B16"])
def test_preset_refuses_a_bad_name(name):
    with pytest.raises(ValueError, match="patch_size must be at least 1|unknown preset"):
        preset(name)


def test_config_takes_numpy_integers_as_plain_ints():
    cfg = tiny_config(dim=np.int64(32), depth=np.int32(2))
    assert cfg.to_dict() == tiny_config().to_dict() and type(cfg.dim) is int


# ---------------------------------------------------------------------------------------------
# Model: what forward is given


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return ViT(tiny_config()).eval()


def test_forward_leaves_float32_input_untouched(tiny_model):
    x = torch.rand(2, 1, 28, 28)
    assert tiny_model.check_input(x) is x


def test_forward_reads_uint8_as_pixels_over_255(tiny_model):
    x8 = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(tiny_model(x8), tiny_model(x8.float() / 255))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_forward_casts_other_float_dtypes_to_the_weights(tiny_model, dtype):
    x = torch.rand(2, 1, 28, 28).to(dtype)
    with torch.no_grad():
        assert torch.equal(tiny_model(x), tiny_model(x.float()))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.int8])
def test_forward_refuses_integer_and_bool_images(tiny_model, dtype):
    x = torch.zeros(2, 1, 28, 28, dtype=dtype)
    with pytest.raises(TypeError, match=r"expected floating-point pixels .* x\.float\(\)"):
        tiny_model(x)


@pytest.mark.parametrize(
    "x",
    [np.zeros((2, 1, 28, 28), np.float32), [[[[0.0] * 28] * 28]], None, "image.png"],
    ids=["numpy", "list", "none", "path"],
)
def test_forward_refuses_non_tensors_with_what_to_pass(tiny_model, x):
    with pytest.raises(TypeError, match=r"expected a torch tensor .* torch\.as_tensor"):
        tiny_model(x)


@pytest.mark.parametrize(
    "shape,says",
    [
        ((2, 28, 28, 1), r"channels last .*permute\(0, 3, 1, 2\)"),
        ((2, 28, 28), r"unsqueeze\(1\)"),
        ((1, 28, 28), r"unsqueeze\(0\)|unsqueeze\(1\)"),
        ((28, 28), r"x\[None, None\]"),
        ((2, 3, 28, 28), "expected 1 channel"),
        ((2, 1, 32, 32), "expected 28x28 images"),
        ((2, 1, 28, 28, 1), "expected a batch of images"),
    ],
)
def test_forward_refuses_a_wrong_shape_with_the_fix(tiny_model, shape, says):
    with pytest.raises(ValueError, match=says):
        tiny_model(torch.rand(*shape))


# ---------------------------------------------------------------------------------------------
# Data helpers


@pytest.fixture(scope="module")
def small_ds():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (100, 28, 28), dtype=torch.uint8, generator=g)
    return data.ImageDataset(images, torch.arange(100) % 10, name="random")


@pytest.mark.parametrize(
    "indices,error,says",
    [
        ([100], IndexError, r"\[0, 100\)"),
        ([10000], IndexError, r"\[0, 100\)"),
        ([-1], IndexError, "negative indices"),
        ([1.5], TypeError, "integer indices"),
        (torch.tensor([0.0, 2.0]), TypeError, "integer indices"),
        ([True, False], IndexError, "boolean mask"),
    ],
)
def test_subset_refuses(small_ds, indices, error, says):
    with pytest.raises(error, match=says):
        small_ds.subset(indices)


def test_subset_takes_a_boolean_mask(small_ds):
    mask = small_ds.labels == 3
    assert torch.equal(small_ds.subset(mask).labels, torch.full((10,), 3))


@pytest.mark.parametrize(
    "val_size,error",
    [
        (20000, ValueError),
        (100, ValueError),
        (0, ValueError),
        (-5, ValueError),
        (0.1, TypeError),
        ("10", TypeError),
    ],
)
def test_train_val_split_refuses(small_ds, val_size, error):
    with pytest.raises(error, match="val_size"):
        data.train_val_split(small_ds, val_size=val_size)


@pytest.mark.parametrize(
    "per_class,says", [(0, "at least 1"), (-1, "at least 1"), (1000, "has only")]
)
def test_few_per_class_refuses(small_ds, per_class, says):
    with pytest.raises(ValueError, match=says):
        data.few_per_class(small_ds, per_class)


@pytest.mark.parametrize(
    "images,labels,error,says",
    [
        (torch.rand(4, 28, 28), torch.arange(4), ValueError, "stores uint8"),
        (
            torch.zeros(4, 28, 28, dtype=torch.uint8),
            torch.arange(3),
            ValueError,
            "one label per image",
        ),
        (
            torch.zeros(4, 28, 28, dtype=torch.uint8),
            torch.tensor([0.0, 1.5, 2, 3]),
            ValueError,
            "integer class labels",
        ),
        (
            torch.zeros(4, 28, 28, dtype=torch.uint8),
            torch.tensor([0, -1, 2, 3]),
            ValueError,
            "negative label",
        ),
        (np.zeros((4, 28, 28), np.uint8), torch.arange(4), TypeError, "torch tensors"),
        (torch.zeros(4, 28, dtype=torch.uint8), torch.arange(4), ValueError, r"\(N, H, W\)"),
    ],
    ids=["float-images", "short-labels", "fractional-labels", "negative-labels", "numpy", "2d"],
)
def test_image_dataset_refuses(images, labels, error, says):
    with pytest.raises(error, match=says):
        data.ImageDataset(images, labels)


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_vitbook_data_is_refused(monkeypatch, value):
    monkeypatch.setenv("VITBOOK_DATA", value)
    with pytest.raises(data.DataError, match="set but empty"):
        data.data_dir()


def test_vitbook_data_naming_a_file_is_refused(monkeypatch, tmp_path):
    f = tmp_path / "not-a-folder"
    f.write_text("x")
    monkeypatch.setenv("VITBOOK_DATA", str(f))
    with pytest.raises(data.DataError, match="which is a file; expected a folder"):
        data.data_dir()


def test_a_full_disk_during_a_data_cache_write_keeps_the_data(monkeypatch, tmp_path):
    monkeypatch.setenv("VITBOOK_DATA", str(tmp_path))
    images = np.zeros((3, 28, 28), np.uint8)
    labels = np.arange(3, dtype=np.uint8)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(data, "_from_torchvision", lambda name, split: None)
    monkeypatch.setattr(data, "_verify", lambda *a: None)
    monkeypatch.setattr(data, "_save_npz_atomic", full)
    with pytest.warns(UserWarning, match="could not cache mnist test"):
        got = data._load("mnist", "test", lambda split: (images, labels))
    assert got[0] is images and got[1] is labels


# ---------------------------------------------------------------------------------------------
# Training: what fit is given

RECIPE = dict(epochs=2, batch_size=16, lr=1e-3, warmup_epochs=0.5, seed=1, grad_norm_every=0)


def rand_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def tiny(seed=0, **cfg):
    torch.manual_seed(seed)
    return ViT(tiny_config(**{**dict(dim=16, depth=1, heads=2, mlp_dim=16), **cfg}))


def fit(model, tr, va=None, **kw):
    """train.fit with the tests' recipe, the digit augmentation, and some fields or loop options
    changed."""
    fields = {k: v for k, v in kw.items() if k in train.Recipe.__dataclass_fields__ or k == "lrr"}
    loop = {k: v for k, v in kw.items() if k not in fields}
    recipe = {**RECIPE, **fields}
    return train.fit(model, tr, va, recipe, progress=False, augmentation=DigitAugment(), **loop)


@pytest.mark.parametrize(
    "option,value,error,says",
    [
        ("batch_size", 0, ValueError, "batch_size must be a whole number >= 1"),
        ("batch_size", -64, ValueError, "batch_size must be a whole number >= 1"),
        ("batch_size", 16.0, TypeError, "batch_size must be a whole number"),
        ("epochs", 0, ValueError, "epochs must be a number > 0"),
        ("epochs", -1, ValueError, "epochs must be a number > 0"),
        ("epochs", math.nan, ValueError, "epochs"),
        ("epochs", math.inf, ValueError, "epochs"),
        ("lr", -1e-3, ValueError, "lr must be"),
        ("lr", math.nan, ValueError, "lr must be"),
        ("warmup_epochs", -1, ValueError, "warmup_epochs"),
        ("label_smoothing", 1.5, ValueError, "label_smoothing"),
        ("weight_decay", -0.1, ValueError, "weight_decay"),
        ("eval_batch_size", 0, ValueError, "eval_batch_size"),
        ("grad_norm_every", -1, ValueError, "grad_norm_every"),
        ("grad_clip", -1.0, ValueError, "grad_clip"),
        ("betas", (0.9,), ValueError, "betas"),
        ("lrr", 1e-3, TypeError, "did you mean 'lr'"),
        ("checkpoint_every", 0, ValueError, "checkpoint_every must be a whole number of steps"),
        ("checkpoint_every", -5, ValueError, "checkpoint_every"),
        ("stop_at_step", 0, ValueError, "stop_at_step"),
    ],
)
def test_fit_refuses_a_nonsense_option(option, value, error, says):
    with pytest.raises(error, match=says):
        fit(tiny(), rand_data(), **{option: value})


def _with_nan(x):
    x = x.clone()
    x[5, 0, 3, 3] = math.nan
    return x


def _with_inf(x):
    x = x.clone()
    x[7, 0, 0, 0] = math.inf
    return x


@pytest.mark.parametrize(
    "make,says",
    [
        (lambda x, y: (x, y[:-1]), "one label per image"),
        (lambda x, y: (x, y.float() + 0.5), "integer class labels"),
        (lambda x, y: (x, y - 1), "negative label"),
        (lambda x, y: (x, y + 10), "model has 10 classes"),
        (lambda x, y: ((x * 255).round(), y), "pixel values 0..255"),
        (lambda x, y: (_with_nan(x), y), "NaN or infinite pixels .* index 5"),
        (lambda x, y: (_with_inf(x), y), "NaN or infinite pixels .* index 7"),
        (lambda x, y: (x[:, 0], y), r"unsqueeze\(1\)"),
        (lambda x, y: (x[:8], y[:8]), "fewer than one batch"),
        (lambda x, y: (x.bool(), y), "expected images as floats"),
    ],
    ids=["short-labels", "float-labels", "negative-labels", "labels-beyond-head", "pixels-0-255",
         "nan-pixel", "inf-pixel", "no-channel-axis", "less-than-a-batch", "bool-images"],
)  # fmt: skip
def test_fit_refuses_bad_training_data_before_training(make, says):
    steps = []
    with pytest.raises((ValueError, TypeError), match=says):
        fit(tiny(), make(*rand_data()), on_step_end=lambda s, t: steps.append(s))
    assert not steps


@pytest.mark.parametrize(
    "val,says",
    [
        ((torch.rand(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)), "validation data is empty"),
        ([], "the dataset is empty"),
        ((torch.rand(4, 1, 32, 32), torch.arange(4)), "differ from the training images"),
        ((torch.rand(4, 1, 28, 28), torch.arange(3)), "one label per image"),
        (42, "expected a vitbook ImageDataset"),
    ],
    ids=["empty-tensors", "empty-list", "other-size", "short-labels", "a-number"],
)
def test_fit_refuses_a_bad_validation_set_before_training(val, says):
    steps = []
    with pytest.raises((ValueError, TypeError), match=says):
        fit(tiny(), rand_data(), val, on_step_end=lambda s, t: steps.append(s))
    assert not steps


def test_fit_reads_uint8_pairs_as_pixels_over_255():
    x, y = rand_data()
    x8 = (x * 255).round().to(torch.uint8)
    a, b = tiny(), tiny()
    fit(a, (x8, y), epochs=1)
    fit(b, (x8.float() / 255, y), epochs=1)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_fit_takes_numpy_pairs():
    x, y = rand_data()
    a, b = tiny(), tiny()
    fit(a, (x.numpy(), y.numpy()), epochs=1)
    fit(b, (x, y), epochs=1)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


# Resume: the checkpoint must belong to this model and this data.


@pytest.mark.parametrize(
    "change,says",
    [
        (dict(model=dict(heads=4)), r"model\.cfg\.heads: 2 in the checkpoint, 4 now"),
        (dict(model=dict(pool="mean")), r"model\.cfg\.pool: 'cls' in the checkpoint, 'mean' now"),
        (dict(model=dict(pos_embed="none")), r"model\.cfg\.pos_embed"),
        (dict(data_seed=1), "same size .* but other images or labels"),
        (dict(n=48), "64 images .* in the checkpoint, 48 .* now"),
    ],
    ids=["heads", "pool", "pos-embed", "other-images", "other-size"],
)
@pytest.mark.parametrize("finished", [False, True], ids=["interrupted", "finished"])
def test_resume_refuses_a_checkpoint_of_another_run(tmp_path, change, says, finished):
    ckpt = tmp_path / "run.pt"
    fit(tiny(), rand_data(), checkpoint=ckpt, **({} if finished else dict(stop_at_step=3)))
    other = tiny(**change.get("model", {}))
    with pytest.raises(train.ResumeMismatchError, match=says):
        fit(other, rand_data(change.get("n", 64), change.get("data_seed", 0)), checkpoint=ckpt)


def test_resume_refuses_a_checkpoint_without_a_fingerprint(tmp_path):
    ckpt = tmp_path / "run.pt"
    fit(tiny(), rand_data(), checkpoint=ckpt, stop_at_step=3)
    state = train.load_checkpoint(ckpt)
    del state["fingerprint"]
    train.save_checkpoint(ckpt, state)
    with pytest.raises(train.ResumeMismatchError, match="older vitbook"):
        fit(tiny(), rand_data(), checkpoint=ckpt)


# Interruption at an epoch boundary keeps the epoch's record.


def test_stop_at_the_epoch_boundary_keeps_the_epochs_record(tmp_path):
    tr, va = rand_data(), rand_data(32, seed=5)
    whole = fit(tiny(), tr, va)
    ckpt = tmp_path / "run.pt"
    first = fit(tiny(), tr, va, checkpoint=ckpt, stop_at_step=4)  # 4 steps = one epoch
    assert [e["epoch"] for e in first.epochs] == [1]
    resumed_model = tiny(seed=9)
    resumed = fit(resumed_model, tr, va, checkpoint=ckpt)
    assert [e["epoch"] for e in resumed.epochs] == [1, 2]
    assert [e["val_acc"] for e in resumed.epochs] == [e["val_acc"] for e in whole.epochs]


def test_a_crash_during_end_of_epoch_evaluation_keeps_the_epochs_record(tmp_path, monkeypatch):
    tr, va = rand_data(), rand_data(32, seed=5)
    ckpt = tmp_path / "run.pt"
    real = train.evaluate

    def crash(*a, **k):
        raise KeyboardInterrupt  # the kill arrives while epoch 1 is being evaluated

    monkeypatch.setattr(train, "evaluate", crash)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny(), tr, va, checkpoint=ckpt, checkpoint_every=2)
    monkeypatch.setattr(train, "evaluate", real)
    resumed = fit(tiny(seed=9), tr, va, checkpoint=ckpt, checkpoint_every=2)
    assert [e["epoch"] for e in resumed.epochs] == [1, 2]


def test_the_kept_checkpoint_holds_weights_whose_loss_was_finite(tmp_path):
    ckpt = tmp_path / "run.pt"
    model = tiny()

    def diverge(step, total):
        if step == 4:  # the update that produced step 4's weights blew them up
            with torch.no_grad():
                model.head.weight.fill_(math.nan)

    with pytest.raises(train.NonFiniteLossError, match="nan at step 4") as info:
        fit(model, rand_data(), checkpoint=ckpt, checkpoint_every=2, on_step_end=diverge, epochs=3)
    state = train.load_checkpoint(ckpt)
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert "(step 2), was kept" in str(info.value)


# Saving on a full disk.


@pytest.mark.parametrize(
    "failure",
    [
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0"),
        OSError(errno.ENOSPC, "No space left on device"),
    ],
    ids=["torch-enforce-fail", "enospc"],
)
def test_a_full_disk_names_the_checkpoint_and_leaves_no_tmp(tmp_path, monkeypatch, failure):
    path = tmp_path / "c.pt"

    def broken_save(obj, f):
        f.write(b"half")
        raise failure

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(train.CheckpointWriteError, match=f"could not write the checkpoint {path}"):
        train.save_checkpoint(path, {"step": 1})
    assert list(tmp_path.iterdir()) == []


def test_a_tmp_file_left_by_a_killed_writer_is_removed_on_the_next_save(tmp_path):
    path = tmp_path / "c.pt"
    stale = tmp_path / "c.pt.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    old = time.time() - 2 * train.STALE_TMP_SECONDS
    os.utime(stale, (old, old))
    fresh = tmp_path / "c.pt.writing.tmp"  # another writer, now: left alone
    fresh.write_bytes(b"")
    train.save_checkpoint(path, {"step": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "c.pt.writing.tmp"]


# ---------------------------------------------------------------------------------------------
# Interop


@pytest.fixture(scope="module")
def vit_sd():
    torch.manual_seed(0)
    model = ViT(tiny_config(heads=4)).eval()
    return model, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "wrap,note",
    [
        (lambda sd: {"state_dict": sd}, "checkpoint['state_dict']"),
        (lambda sd: {"model": sd, "optimizer": {}, "epoch": 3}, "checkpoint['model']"),
        (lambda sd: {"model_state_dict": sd}, "checkpoint['model_state_dict']"),
        (lambda sd: {f"module.{k}": v for k, v in sd.items()}, "prefix 'module.'"),
        (lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}}, "prefix 'module.'"),
        (lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()}, "prefix '_orig_mod.'"),
    ],
    ids=["state_dict", "model", "model_state_dict", "ddp-prefix", "wrapped-ddp", "compiled"],
)
def test_from_timm_unwraps_what_trainers_save_and_says_so(vit_sd, wrap, note, capsys):
    model, sd = vit_sd
    got = interop.from_timm(wrap(sd), heads=4)
    assert note in capsys.readouterr().out
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(got.eval()(x), model(x))


def _resnet_like():
    return {
        "conv1.weight": torch.zeros(8, 3, 7, 7),
        "bn1.weight": torch.ones(8),
        "layer1.0.conv1.weight": torch.zeros(8, 8, 3, 3),
        "fc.weight": torch.zeros(10, 8),
    }


@pytest.mark.parametrize(
    "make,error,says",
    [
        (lambda sd: {}, CheckpointMismatchError, "the state dict is empty"),
        (lambda sd: {"state_dict": {}}, CheckpointMismatchError, "the state dict is empty"),
        (lambda sd: _resnet_like(), CheckpointMismatchError, "does not look like a ViT.*conv1.weight"),
        (lambda sd: interop.to_torchvision_state_dict(ViT(tiny_config())), CheckpointMismatchError, "use interop.from_torchvision"),
        (lambda sd: {k: v for k, v in sd.items() if k != "cls_token"}, CheckpointMismatchError, "lacks cls_token"),
        (lambda sd: {k: v for k, v in sd.items() if k != "pos_embed"}, CheckpointMismatchError, "lacks pos_embed"),
        (lambda sd: {k: v for k, v in sd.items() if k != "head.weight"}, CheckpointMismatchError, "lacks head.weight"),
        (lambda sd: {k: v for k, v in sd.items() if k != "patch_embed.proj.weight"}, CheckpointMismatchError, "lacks patch_embed.proj.weight"),
        (lambda sd: {**sd, "blocks.0.mlp.fc1.weight": torch.zeros(65, 32)}, CheckpointMismatchError, r"(?s)^(?!.*fc2).*blocks\.0\.mlp\.fc1\.weight: \(65, 32\)"),
        (lambda sd: {k: v.tolist() for k, v in sd.items()}, TypeError, "not tensors"),
        (lambda sd: "vit.pth", TypeError, r"torch\.load\(path"),
        (lambda sd: None, TypeError, "expected an nn.Module or a state dict"),
    ],
    ids=["empty", "wrapped-empty", "resnet", "torchvision-to-timm", "no-cls-token", "no-pos-embed",
         "no-head", "no-patch-embed", "odd-fc1", "lists", "a-path", "none"],
)  # fmt: skip
def test_from_timm_refuses(vit_sd, make, error, says):
    with pytest.raises(error, match=says) as info:
        interop.from_timm(make(vit_sd[1]), heads=4)
    assert "KeyError" not in str(info.value)


@pytest.mark.parametrize(
    "make,says",
    [
        (lambda sd: sd, "use interop.from_timm"),
        (lambda sd: _resnet_like(), "does not look like a ViT"),
        (lambda sd: {}, "the state dict is empty"),
    ],
    ids=["timm-to-torchvision", "resnet", "empty"],
)
def test_from_torchvision_refuses(vit_sd, make, says):
    with pytest.raises(CheckpointMismatchError, match=says):
        interop.from_torchvision(make(vit_sd[1]), heads=4)


def test_a_heads_argument_that_contradicts_the_model_is_refused():
    import timm

    tm = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=28, patch_size=7, in_chans=1,
        num_classes=10, embed_dim=32, depth=1, num_heads=4,
    )  # fmt: skip
    with pytest.raises(ValueError, match="heads=2 was passed, but the model has 4 heads"):
        interop.from_timm(tm, heads=2)
    assert interop.from_timm(tm, heads=4).cfg.heads == 4


# ---------------------------------------------------------------------------------------------
# Zoo: the key follows the code the training runs


def _vitbook_module(tmp_path, name, source):
    """A module of the vitbook package written to a file, so that its source can be read."""
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"vitbook.{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


RECIPES = """
import torch
from vitbook.model import ViT
from conftest import tiny_config, tiny_zoo_model


def helper(model):{comment}
    with torch.no_grad():
        model.head.bias.fill_({value})


def build():
    return ViT(tiny_config())


def train(model, declaration):
    helper(model)
    return {{}}
{extra}"""


def _key(module):
    return zoo.Model("k", "key test", module.build, None, Recipe(), module.train).key()


def test_the_zoo_key_follows_a_changed_helper_and_ignores_comments_and_unrelated_code(tmp_path):
    try:
        base = _vitbook_module(tmp_path, "_hk0", RECIPES.format(comment="", value=0.5, extra=""))
        comment = _vitbook_module(
            tmp_path, "_hk1", RECIPES.format(comment="  # a note", value=0.5, extra="# more\n")
        )
        unrelated = _vitbook_module(
            tmp_path,
            "_hk2",
            RECIPES.format(comment="", value=0.5, extra="\ndef plot():\n    return 1\n"),
        )
        changed = _vitbook_module(
            tmp_path, "_hk3", RECIPES.format(comment="", value=0.25, extra="")
        )
        # module names differ; the sources are hashed with the module name, so compare via a rename
        keys = {}
        for label, m in (
            ("base", base),
            ("comment", comment),
            ("unrelated", unrelated),
            ("changed", changed),
        ):
            for f in (m.helper, m.build, m.train):
                f.__module__ = "vitbook._hk"
            keys[label] = _key(m)
        assert keys["comment"] == keys["base"]
        assert keys["unrelated"] == keys["base"]
        assert keys["changed"] != keys["base"]
    finally:
        for n in ("_hk0", "_hk1", "_hk2", "_hk3"):
            sys.modules.pop(f"vitbook.{n}", None)


@pytest.mark.parametrize(
    "entry,module,helper",
    [
        ("mnist-vit", "recipes.classifiers", "supervised"),
        ("student-plain", "recipes.students", "student_train_set"),
        ("student-soft", "data", "few_per_class"),
        ("mnist-mae", "ssl", "mae_loss_fn"),
        ("fashion-vit", "train", "evaluate"),
        ("vit-mixed-digits", "recipes.synthetic_digits", "mixed_sets"),
        ("student-soft", "distill", "student_loss_fn"),
        ("ssl-eval", "recipes.ssl_table", "evaluate_encoder"),
        ("mnist-ijepa", "ema", "blend_"),
    ],
)
def test_a_changed_training_helper_changes_the_zoo_key(
    tmp_path, monkeypatch, entry, module, helper
):
    target = importlib.import_module(f"vitbook.{module}")
    original = getattr(target, helper)
    # an edit of the helper's source reaches every module that imported it by name
    holders = [
        m for n, m in list(sys.modules.items())
        if n.startswith("vitbook") and getattr(m, helper, None) is original
    ]  # fmt: skip
    before = zoo.REGISTRY[entry].key()
    changed = _vitbook_module(
        tmp_path,
        "_hk_helper",
        f"def {helper}(*args, **kwargs):\n    return 'changed'\n",
    )
    try:
        # ... and the declaration, where it names the helper itself (its training or data)
        declared = [
            f
            for f in ("train", "data", "compute")
            if getattr(zoo.REGISTRY[entry], f, None) is original
        ]
        for m in holders:
            monkeypatch.setattr(m, helper, getattr(changed, helper))
        for f in declared:
            monkeypatch.setattr(zoo.REGISTRY[entry], f, getattr(changed, helper))
        assert zoo.REGISTRY[entry].key() != before
        for m in holders:
            monkeypatch.setattr(m, helper, original)
        for f in declared:
            monkeypatch.setattr(zoo.REGISTRY[entry], f, original)
        assert zoo.REGISTRY[entry].key() == before
    finally:
        sys.modules.pop("vitbook._hk_helper", None)


@pytest.mark.parametrize(
    "module,name",
    [
        ("recipes.synthetic_digits", "few_real_labels"),
        ("recipes.benchmarks", "best_accuracy"),
        ("viz", "plot_history"),
        ("interop", "resize_model"),
        ("zoo", "get"),
    ],
)
def test_an_unrelated_function_leaves_the_mnist_vit_key_alone(monkeypatch, tmp_path, module, name):
    before = zoo.REGISTRY["mnist-vit"].key()
    other = _vitbook_module(tmp_path, "_hk_other", f"def {name}(*a, **k):\n    return 0\n")
    try:
        monkeypatch.setattr(
            importlib.import_module(f"vitbook.{module}"), name, getattr(other, name)
        )
        assert zoo.REGISTRY["mnist-vit"].key() == before
    finally:
        sys.modules.pop("vitbook._hk_other", None)


# Zoo: caches on real file systems


@pytest.fixture
def tiny_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("VITBOOK_CACHE", str(tmp_path / "zoo"))
    calls = []

    def train_it(model):
        calls.append(1)
        with torch.no_grad():
            model.head.bias.fill_(0.5)
        return {"test_accuracy": 0.5}

    entry = zoo.register(tiny_zoo_model("tiny-hostile", train_it))
    yield entry, calls
    zoo.REGISTRY.pop("tiny-hostile")


def _read_only(*args, **kwargs):
    raise OSError(errno.EROFS, "Read-only file system")


def test_a_read_only_cache_that_holds_the_model_is_used(tiny_entry, monkeypatch):
    zoo.get("tiny-hostile")
    monkeypatch.setattr(zoo, "FileLock", _read_only)
    monkeypatch.setattr(type(tiny_entry[0].path().parent), "mkdir", _read_only)
    model = zoo.get("tiny-hostile")
    assert torch.equal(model.head.bias, torch.full((10,), 0.5))
    assert zoo.info("tiny-hostile")["test_accuracy"] == 0.5


def test_a_read_only_cache_without_the_model_says_what_to_do(tiny_entry, monkeypatch):
    monkeypatch.setattr(zoo, "FileLock", _read_only)
    with pytest.raises(OSError, match=r"not writable .* \$VITBOOK_CACHE"):
        zoo.get("tiny-hostile")


@pytest.mark.parametrize(
    "failure",
    [RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos"), OSError(errno.ENOSPC, "No space left on device")],
    ids=["torch-enforce-fail", "enospc"],
)  # fmt: skip
def test_a_full_disk_during_a_zoo_save_keeps_the_trained_model(tiny_entry, monkeypatch, failure):
    entry, calls = tiny_entry

    def broken_save(obj, f):
        raise failure

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.warns(UserWarning, match=f"could not cache 'tiny-hostile' in {entry.path()}"):
        model = zoo.get("tiny-hostile")
    assert torch.equal(model.head.bias, torch.full((10,), 0.5)) and calls == [1]
    assert not any(p.suffix == ".tmp" for p in entry.path().parent.iterdir())


@pytest.mark.parametrize("value,says", [("", "set but empty"), ("FILE", "which is a file")])
def test_a_bad_vitbook_cache_is_refused(monkeypatch, tmp_path, value, says):
    if value == "FILE":
        value = str(tmp_path / "f")
        (tmp_path / "f").write_text("x")
    monkeypatch.setenv("VITBOOK_CACHE", value)
    with pytest.raises(ValueError, match=says):
        zoo.cache_dir()
