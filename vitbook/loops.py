"""What every loop over a model and a dataset needs, training or measuring.

* `as_tensors`: a `vitbook.data.ImageDataset`, a pair (images, labels) or any dataset of
  (image, label) items, as float images in [0, 1] and integer labels; `check_images` refuses
  what no model should train on (NaN pixels, 0..255 values, a missing channel axis).
* `model_device`: where a model's weights are, which is where its inputs must go;
  `pick_device`: where to put a new one (CUDA, else Apple's MPS, else the CPU).
* `evaluating`: eval mode for a block, then the mode the model was in.

`vitbook.train`, `vitbook.metrics`, `vitbook.attention` and `vitbook.ssl` all start here.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from .data import class_labels


def as_tensors(data) -> tuple[torch.Tensor, torch.Tensor]:
    """(images float (N, C, H, W), labels (N,)) from a `vitbook.data.ImageDataset`, a pair
    (images, labels) of tensors or numpy arrays, or any dataset of (image, label) items (stacked
    once). Float images are taken as they are (expected in [0, 1]); uint8 images are 8-bit
    pixels and are scaled to [0, 1] by ``x.float() / 255``, as `ImageDataset` does. Labels must
    be whole class indices, one per image."""
    if hasattr(data, "tensors"):
        return data.tensors()
    if data is None:
        raise TypeError("expected a dataset or a pair (images, labels), got None")
    if isinstance(data, tuple | list) and len(data) == 2 and _array_like(data[0]):
        x, y = torch.as_tensor(data[0]), data[1]
    else:
        if not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):
            raise TypeError(
                f"expected a vitbook ImageDataset, a pair (images, labels) or a dataset of "
                f"(image, label) items, got {type(data).__name__}"
            )
        if len(data) == 0:
            raise ValueError("the dataset is empty: expected at least one (image, label) item")
        xs, ys = zip(*(data[i] for i in range(len(data))))
        x, y = torch.stack([torch.as_tensor(v) for v in xs]), ys
    y = class_labels(y)
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(
            f"{len(x)} images but labels of shape {tuple(y.shape)}: expected one label per "
            f"image, shape ({len(x)},)"
        )
    if x.dtype == torch.uint8:
        return x.float() / 255.0, y  # 8-bit pixels -> [0, 1]
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"expected images as floats in [0, 1] or uint8 pixels, got {x.dtype}")
    return x.float(), y


def _array_like(v) -> bool:
    return torch.is_tensor(v) or type(v).__module__ == "numpy"


def check_images(x: torch.Tensor, what: str) -> None:
    """Raise a ValueError when ``x`` (from `as_tensors`) is not a batch of images a model can
    train on: the wrong number of dimensions, NaN or infinite pixels, or pixels 0..255."""
    if x.ndim != 4:
        hint = " Add the channel dimension with x.unsqueeze(1)." if x.ndim == 3 else ""
        raise ValueError(
            f"the {what} must be images (N, C, H, W), got shape {tuple(x.shape)}.{hint}"
        )
    if len(x) == 0:
        raise ValueError(f"the {what} is empty: expected at least one image")
    finite = torch.isfinite(x)
    if not finite.all():
        bad = (~finite).flatten(1).any(1).nonzero().flatten()
        raise ValueError(
            f"the {what} holds NaN or infinite pixels in {len(bad)} image(s), the first at "
            f"index {bad[0].item()}; remove or repair them (e.g. torch.nan_to_num) before training"
        )
    top = x.max().item()
    if top > 1.001 and top <= 255 and torch.equal(x, x.round()):
        raise ValueError(
            f"the {what} looks like pixel values 0..255 (whole numbers up to {top:g}), expected "
            f"floats in [0, 1]; divide by 255, or pass the uint8 tensor as it is"
        )


def training_tensors(model, train_data, val_data, default_loss: bool, batch_size: int):
    """The training images and labels, checked, and the validation set checked against them
    (refused now, not after an epoch of training)."""
    x_all, y_all = as_tensors(train_data)
    check_images(x_all, "training data")
    if len(x_all) < batch_size:
        raise ValueError(
            f"{len(x_all)} training images are fewer than one batch of {batch_size}; pass a "
            f"smaller batch_size (at most {len(x_all)}) or more data"
        )
    num_classes = getattr(getattr(model, "cfg", None), "num_classes", None)
    if default_loss and num_classes is not None and y_all.max() >= num_classes:
        raise ValueError(
            f"the training labels go up to {y_all.max().item()}, but the model has "
            f"{num_classes} classes (labels 0..{num_classes - 1}); build it with "
            f"num_classes={y_all.max().item() + 1} or relabel the data"
        )
    if val_data is not None:
        x_val, _ = as_tensors(val_data)
        check_images(x_val, "validation data")
        if tuple(x_val.shape[1:]) != tuple(x_all.shape[1:]):
            raise ValueError(
                f"validation images of shape {tuple(x_val.shape[1:])} differ from the training "
                f"images {tuple(x_all.shape[1:])}"
            )
    return x_all, y_all


_DEVICE_NAMES = {"gpu": "cuda", "nvidia": "cuda", "apple": "mps", "metal": "mps"}


def as_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device that this machine has, or a ValueError that says what came,
    what torch calls it and which devices are here ("gpu" -> use "cuda")."""
    if isinstance(device, torch.device):
        dev = device
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as e:
            name = str(device).strip().lower()
            hint = _DEVICE_NAMES.get(name.split(":")[0])
            fix = (
                f"pass device={hint!r}"
                if hint
                else "pass 'cpu', 'cuda' (an NVIDIA GPU) or 'mps' (Apple)"
            )
            raise ValueError(
                f"device={device!r} is not a device torch knows: {fix}. On this machine: "
                f"{', '.join(available_devices())}"
            ) from e
    here = available_devices()
    if dev.type in ("cuda", "mps") and dev.type not in here:
        raise ValueError(
            f"device={device!r} asks for {dev.type}, which this machine does not have (torch "
            f"sees: {', '.join(here)}); pass device='cpu', or leave it out to use the best there is"
        )
    return dev


def available_devices() -> list[str]:
    """The device types torch can use here, best first."""
    out = []
    if torch.cuda.is_available():
        out.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append("mps")
    return out + ["cpu"]


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The device to train on: the one asked for, else CUDA, then Apple's MPS, then the CPU."""
    if device is not None:
        return as_device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (or buffer); the CPU for a model without any."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def evaluating(model: nn.Module):
    """``with evaluating(model):`` runs the block in eval mode (no dropout), then puts the model
    back in the mode it was in, also when the block raises."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
