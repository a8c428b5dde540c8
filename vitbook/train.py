"""Training and evaluation: one small engine that every chapter uses.

`fit` trains any model on an in-memory image dataset with AdamW, linear warm-up then cosine
decay, label smoothing, gradient clipping and batch augmentation, and returns a `History`
(per-step loss and learning rate, per-layer gradient norms, per-epoch train/validation loss
and accuracy). It is

* deterministic: every random draw of step s comes from a generator seeded by (seed, s), so
  the same seed gives the same weights bit for bit on the same machine, and a run resumed
  from a checkpoint ends exactly where the uninterrupted one does;
* safe to interrupt: checkpoints are written to a temporary file and renamed into place, so a
  crash never leaves half a checkpoint; a non-finite loss stops training with a clear error and
  leaves the last good checkpoint alone;
* distributed when launched by ``torchrun --nproc_per_node N``: DistributedDataParallel over
  gloo (CPU) or nccl (GPU), each process taking its share of every global batch.

Plotting lives in `vitbook.viz`; `History.plot()` is a shortcut to it.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import math
import numbers
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DistributedSampler

from .data import class_labels
from .model import load_checked
from .transforms import DigitAugment

# --------------------------------------------------------------------------------------------
# Devices and data


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The device to train on: the one asked for, else CUDA, then Apple's MPS, then the CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


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


def seed_everything(seed: int) -> None:
    """Seed torch's global generator (model initialisation, dropout)."""
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------
# The recipe and the history


@dataclass
class Recipe:
    """Everything that fixes a training run besides the model and the data."""

    epochs: float = 5
    batch_size: int = 128  # the global batch, split across processes under torchrun
    lr: float = 3e-3
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    warmup_epochs: float = 0.5
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    label_smoothing: float = 0.1
    grad_clip: float | None = 1.0
    augment: bool = True  # DigitAugment: small rotations, shifts and scalings
    seed: int = 0
    grad_norm_every: int = 10  # record per-layer gradient norms every k steps (0: never)
    eval_batch_size: int = 1000
    compile: bool = False  # torch.compile the model (pays ~20-50 s once on a CPU)

    def __post_init__(self):
        def number(name, low, high=math.inf, integer=False, low_open=False):
            v = getattr(self, name)
            kind = "a whole number" if integer else "a number"
            ok_type = isinstance(v, numbers.Integral if integer else numbers.Real)
            if isinstance(v, bool) or not ok_type:
                raise TypeError(f"{name} must be {kind}, got {v!r} ({type(v).__name__})")
            if not math.isfinite(v) or v < low or (low_open and v == low) or v > high:
                side = f"> {low}" if low_open else f">= {low}"
                raise ValueError(
                    f"{name} must be {kind} {side}"
                    + (f" and <= {high}" if high != math.inf else "")
                    + f", got {v}; {_RECIPE_HINTS.get(name, 'see vitbook.train.Recipe')}"
                )

        number("epochs", 0, low_open=True)
        number("batch_size", 1, integer=True)
        number("lr", 0)
        number("min_lr_ratio", 0, 1)
        number("warmup_epochs", 0)
        number("weight_decay", 0)
        number("label_smoothing", 0, 1)
        number("grad_norm_every", 0, integer=True)
        number("eval_batch_size", 1, integer=True)
        number("seed", -math.inf, integer=True)
        if self.grad_clip is not None:
            number("grad_clip", 0)
        if len(tuple(self.betas)) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")

    def to_dict(self) -> dict:
        return asdict(self)


_RECIPE_HINTS = {
    "epochs": "a fraction such as 0.5 trains half an epoch",
    "batch_size": "the global batch, such as 128",
    "lr": "the peak learning rate, such as 3e-3",
    "eval_batch_size": "such as 1000",
}


def recipe_from(options: dict) -> Recipe:
    """A `Recipe` from keyword arguments, with a TypeError that names unknown fields."""
    fields = Recipe.__dataclass_fields__
    unknown = [k for k in options if k not in fields]
    if unknown:
        close = {k: difflib.get_close_matches(k, fields, n=1) for k in unknown}
        hints = ", ".join(
            f"{k!r}" + (f" (did you mean {c[0]!r}?)" if c else "") for k, c in close.items()
        )
        raise TypeError(
            f"fit got unknown option(s) {hints}; recipe fields are {', '.join(fields)}, and the "
            f"loop options are loss_fn, augmentation, device, checkpoint, checkpoint_every, "
            f"resume, progress, stop_at_step, on_epoch_end, on_step_end"
        )
    return Recipe(**options)


@dataclass
class History:
    """What happened during training. Lists grow as training goes; ``epochs`` holds one dict per
    epoch with ``epoch, train_loss, train_acc, val_loss, val_acc, lr, time`` (seconds since the
    start, evaluation included)."""

    step_loss: list[float] = field(default_factory=list)
    step_lr: list[float] = field(default_factory=list)
    grad_steps: list[int] = field(default_factory=list)
    grad_norms: dict[str, list[float]] = field(default_factory=dict)
    epochs: list[dict] = field(default_factory=list)
    steps_per_epoch: int = 0
    recipe: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> History:
        return cls(**d)

    @property
    def final(self) -> dict:
        """The last epoch's record."""
        return self.epochs[-1] if self.epochs else {}

    def plot(self, **kwargs):
        """Loss and accuracy curves (see `vitbook.viz.plot_history`)."""
        from .viz import plot_history

        return plot_history(self, **kwargs)

    def plot_grad_flow(self, **kwargs):
        """Per-layer gradient norms over training (see `vitbook.viz.plot_grad_flow`)."""
        from .viz import plot_grad_flow

        return plot_grad_flow(self, **kwargs)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint was left as it was."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full or read-only disk); the message names the path.
    The previous checkpoint, if any, is intact, and no temporary file is left behind."""


class ResumeMismatchError(ValueError):
    """A checkpoint belongs to another model or other training data than the run resuming it."""


# --------------------------------------------------------------------------------------------
# Pieces of the loop


def lr_at(step: int, total_steps: int, warmup_steps: int, lr: float, min_lr_ratio: float) -> float:
    """Linear warm-up from lr/warmup to lr, then a cosine down to lr * min_lr_ratio."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: not on biases, norms, the class token or embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or name.endswith(("cls_token", "pos_embed", "dist_token", "mask_token"))
        (no_decay if skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def layer_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Parameters grouped by layer, in order, for gradient-flow plots: embeddings, each block,
    the final norm and the head ("blocks.3" and friends; other models group by top-level child)."""
    groups: dict[str, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        parts = name.split(".")
        if parts[0] in ("blocks", "encoder_blocks", "decoder_blocks") and len(parts) > 1:
            key = f"{parts[0]}.{parts[1]}"
        elif parts[0] in ("cls_token", "pos_embed", "patch_embed", "dist_token"):
            key = "embed"
        else:
            key = parts[0]
        groups.setdefault(key, []).append(p)
    return groups


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


STALE_TMP_SECONDS = 600  # a temporary file untouched this long was left by a killed writer


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` with torch.save to a temporary file beside ``path``, then rename it into
    place: a reader sees the old checkpoint or the new one, never half of one. A failed write
    (a full disk) raises `CheckpointWriteError` naming the path and removes its temporary file;
    temporary files that a killed writer left beside ``path`` are removed on the next save."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_tmp(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    except OSError as e:
        raise CheckpointWriteError(
            e.errno,
            f"cannot write the checkpoint {path} ({e.strerror or e}); choose a writable folder",
        ) from e
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        raise CheckpointWriteError(
            getattr(e, "errno", None),
            f"could not write the checkpoint {path} ({type(e).__name__}: {str(e).strip()[:200]}); "
            f"is the disk full or read-only? The previous checkpoint at that path, if any, is "
            f"intact. Free some space or choose another path.",
        ) from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _remove_stale_tmp(path: Path) -> None:
    now = time.time()
    for tmp in path.parent.glob(f"{glob_escape(path.name)}.*.tmp"):
        try:
            if now - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                tmp.unlink()
        except OSError:
            pass


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def model_fingerprint(model: nn.Module) -> dict:
    """What identifies a model beyond its tensor shapes: its class and the configuration of
    every part that has one (``cfg``), such as heads or pooling."""
    configs = {}
    for name, m in model.named_modules():
        cfg = getattr(m, "cfg", None)
        if hasattr(cfg, "to_dict"):
            configs[name or "model"] = cfg.to_dict()
    return {"class": type(model).__qualname__, "configs": configs}


def data_fingerprint(x: torch.Tensor, y: torch.Tensor) -> dict:
    """A cheap fingerprint of a training set: its size and image shape, and a hash of 64 images
    spread over it and of all labels."""
    n = len(x)
    idx = torch.linspace(0, n - 1, min(n, 64)).round().long()
    h = hashlib.sha256()
    h.update(x[idx].detach().float().cpu().contiguous().numpy().tobytes())
    h.update(y.detach().long().cpu().contiguous().numpy().tobytes())
    return {"n": n, "shape": list(x.shape[1:]), "sample_sha256": h.hexdigest()[:16]}


def _fingerprint_differences(saved: dict, now: dict) -> list[str]:
    out = []
    sm, nm = saved.get("model", {}), now["model"]
    if sm.get("class") != nm["class"]:
        out.append(f"the model: a {sm.get('class')} in the checkpoint, a {nm['class']} now")
    else:
        for part in sorted(set(sm.get("configs", {})) | set(nm["configs"])):
            a, b = sm.get("configs", {}).get(part, {}), nm["configs"].get(part, {})
            for k in sorted(set(a) | set(b)):
                if a.get(k) != b.get(k):
                    out.append(f"{part}.cfg.{k}: {a.get(k)!r} in the checkpoint, {b.get(k)!r} now")
    sd, nd = saved.get("data", {}), now["data"]
    if sd.get("n") != nd["n"] or sd.get("shape") != nd["shape"]:
        out.append(
            f"the training data: {sd.get('n')} images of shape {sd.get('shape')} in the "
            f"checkpoint, {nd['n']} of shape {nd['shape']} now"
        )
    elif sd.get("sample_sha256") != nd["sample_sha256"]:
        out.append(
            f"the training data: the same size ({nd['n']} images) but other images or labels"
        )
    return out


def load_checkpoint(path: str | Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise RuntimeError(
            f"cannot read the checkpoint {path} ({type(e).__name__}: {e}); delete it to start over"
        ) from e
    if not isinstance(state, dict):
        raise RuntimeError(
            f"cannot read the checkpoint {path}: expected a dict, found a {type(state).__name__}; "
            f"delete it to start over"
        )
    return state


def classification_loss(label_smoothing: float = 0.0) -> Callable:
    """The default loss: cross-entropy with label smoothing. A loss function takes
    (model, images, labels) and returns (loss, logits or None)."""

    def loss_fn(model, x, y):
        logits = model(x)
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing), logits

    return loss_fn


# --------------------------------------------------------------------------------------------
# Distributed helpers


def _dist_env() -> tuple[int, int]:
    """(rank, world size) when launched by torchrun, else (0, 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world


def _init_dist(device: torch.device) -> None:
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


# --------------------------------------------------------------------------------------------
# The loop


@torch.no_grad()
def evaluate(model: nn.Module, data, batch_size: int = 1000, device=None) -> dict:
    """Accuracy and mean cross-entropy of a classifier on a dataset.

    Returns a dict with ``accuracy`` (fraction in [0, 1]), ``loss``, ``n``, and the
    ``predictions``, ``labels`` and ``logits`` tensors for confusion matrices and error analysis."""
    device = pick_device(device) if device is None else torch.device(device)
    x, y = as_tensors(data)
    was_training = model.training
    model.eval()
    logits = []
    for i in range(0, len(x), batch_size):
        with _autocast(device):
            logits.append(model(x[i : i + batch_size].to(device)).float().cpu())
    model.train(was_training)
    logits = torch.cat(logits)
    preds = logits.argmax(dim=1)
    return {
        "accuracy": (preds == y).float().mean().item(),
        "loss": F.cross_entropy(logits, y).item(),
        "n": len(y),
        "predictions": preds,
        "labels": y,
        "logits": logits,
    }


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def fit(
    model: nn.Module,
    train_data,
    val_data=None,
    *,
    loss_fn: Callable | None = None,
    augmentation: Callable | None = None,
    device=None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 200,
    resume: bool = True,
    progress: bool = True,
    stop_at_step: int | None = None,
    on_epoch_end: Callable | None = None,
    on_step_end: Callable | None = None,
    **recipe,
) -> History:
    """Train ``model`` on ``train_data``; evaluate on ``val_data`` after every epoch.

    Keyword arguments beyond those named are fields of `Recipe` (epochs, batch_size, lr, ...).
    ``loss_fn(model, x, y) -> (loss, logits or None)`` replaces the classification loss (the
    self-supervised and distillation chapters use this); ``augmentation(x, u)`` replaces
    `DigitAugment` (u: (B, augmentation.num_random) uniform numbers). With ``checkpoint`` set, the state is
    saved atomically every ``checkpoint_every`` steps and at the end of every epoch, and a run
    finds and resumes from an existing checkpoint (``resume=True``). ``stop_at_step`` stops early
    (after saving), which is how the tests interrupt a run. ``on_step_end(step, total_steps)``
    runs after every optimizer step (I-JEPA's EMA update), ``on_epoch_end(record)`` after every
    epoch's evaluation.
    """
    r = recipe_from(recipe)
    for name, value, least in (
        ("checkpoint_every", checkpoint_every, 1),
        ("stop_at_step", stop_at_step, 1),
    ):
        if value is None and name == "stop_at_step":
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
            raise ValueError(f"{name} must be a whole number of steps >= {least}, got {value!r}")
    rank, world = _dist_env()
    device = pick_device(device)
    if world > 1:
        _init_dist(device)
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if r.batch_size % world != 0:
        raise ValueError(f"batch_size {r.batch_size} must be divisible by the {world} processes")
    torch.manual_seed(r.seed)
    default_loss = loss_fn is None
    loss_fn = loss_fn or classification_loss(r.label_smoothing)
    augment = augmentation if augmentation is not None else (DigitAugment() if r.augment else None)

    x_all, y_all = as_tensors(train_data)
    check_images(x_all, "training data")
    n = len(x_all)
    steps_per_epoch = n // r.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"{n} training images are fewer than one batch of {r.batch_size}; pass a smaller "
            f"batch_size (at most {n}) or more data"
        )
    num_classes = getattr(getattr(model, "cfg", None), "num_classes", None)
    if default_loss and num_classes is not None and y_all.max() >= num_classes:
        raise ValueError(
            f"the training labels go up to {y_all.max().item()}, but the model has "
            f"{num_classes} classes (labels 0..{num_classes - 1}); build it with "
            f"num_classes={y_all.max().item() + 1} or relabel the data"
        )
    if val_data is not None:  # refused now, not after an epoch of training
        x_val, y_val = as_tensors(val_data)
        check_images(x_val, "validation data")
        if tuple(x_val.shape[1:]) != tuple(x_all.shape[1:]):
            raise ValueError(
                f"validation images of shape {tuple(x_val.shape[1:])} differ from the training "
                f"images {tuple(x_all.shape[1:])}"
            )
        del x_val, y_val
    fingerprint = {"model": model_fingerprint(model), "data": data_fingerprint(x_all, y_all)}
    total_steps = max(1, round(r.epochs * steps_per_epoch))
    warmup_steps = max(1, round(r.warmup_epochs * steps_per_epoch))
    local_bs = r.batch_size // world

    model.to(device)
    optimizer = torch.optim.AdamW(
        param_groups(model, r.weight_decay),
        lr=r.lr,
        betas=r.betas,
        fused=device.type in ("cpu", "cuda"),
    )
    history = History(steps_per_epoch=steps_per_epoch, recipe=r.to_dict())
    step = 0
    run_loss, run_correct, run_seen = 0.0, 0, 0  # running totals of the current epoch
    if checkpoint is not None and resume and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint)
        if state.get("recipe") != r.to_dict():
            raise ValueError(
                f"the checkpoint {checkpoint} was written by a different recipe "
                f"({state.get('recipe')}); delete it or pass the same recipe to resume"
            )
        if "fingerprint" not in state:
            raise ResumeMismatchError(
                f"the checkpoint {checkpoint} records neither the model nor the data it was "
                f"trained on (an older vitbook wrote it), so resuming could return another "
                f"model; delete it to start over, or pass resume=False"
            )
        differ = _fingerprint_differences(state["fingerprint"], fingerprint)
        if differ:
            raise ResumeMismatchError(
                f"the checkpoint {checkpoint} belongs to another run: "
                + "; ".join(differ)
                + ". Delete it or choose another checkpoint path to train this one from the "
                "start (resume=False overwrites it)."
            )
        load_checked(model, state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history = History.from_dict(state["history"])
        step = state["step"]
        if step % steps_per_epoch:
            run_loss, run_correct, run_seen = state["epoch_stats"]

    train_model = model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if r.compile:
        train_model = torch.compile(train_model)
    groups = layer_groups(model)
    params = [p for p in model.parameters() if p.requires_grad]
    is_main = rank == 0

    def state_dict() -> dict:
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "history": history.to_dict(),
            "step": step,
            "recipe": r.to_dict(),
            "epoch_stats": (run_loss, run_correct, run_seen),
            "fingerprint": fingerprint,
        }

    # A periodic checkpoint is held in memory until the next step's loss, computed with its
    # weights, proves finite; only then is it written. So the checkpoint on disk always holds
    # weights whose loss was finite, even when training diverges right after a save.
    pending = None
    saved_step = None

    def write(state=None):
        nonlocal pending, saved_step
        pending = None
        if checkpoint is not None and is_main:
            state = state_dict() if state is None else state
            save_checkpoint(checkpoint, state)
            saved_step = state["step"]

    def hold():
        nonlocal pending
        if checkpoint is not None and is_main:
            pending = copy.deepcopy(state_dict())

    from tqdm.auto import tqdm

    num_epochs = math.ceil(total_steps / steps_per_epoch)
    # Bars refresh at most once a second: a notebook front end (and nbval, which reads the
    # kernel's messages only after a cell ends) must not be flooded with widget updates.
    bar = dict(mininterval=1.0, maxinterval=10.0, disable=not (progress and is_main))
    epoch_bar = tqdm(total=num_epochs, desc="epochs", initial=step // steps_per_epoch, **bar)
    batch_bar = tqdm(total=steps_per_epoch, desc="batches", leave=False, **bar)
    start = time.perf_counter() - (history.final.get("time", 0.0) if history.epochs else 0.0)
    while step < total_steps:
        epoch = step // steps_per_epoch
        sampler = DistributedSampler(
            range(n), num_replicas=world, rank=rank, shuffle=True, seed=r.seed, drop_last=True
        )
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler))  # this process's share of the epoch, (n / world,)
        epoch_steps = min(steps_per_epoch, total_steps - epoch * steps_per_epoch)
        batch_bar.reset(total=epoch_steps)  # one bar for all epochs: no trail of closed bars
        batch_bar.update(step - epoch * steps_per_epoch)
        batch_bar.set_description(f"epoch {epoch + 1}/{num_epochs}")
        train_model.train()
        while step < (epoch + 1) * steps_per_epoch and step < total_steps:
            k = step - epoch * steps_per_epoch
            idx = order[k * local_bs : (k + 1) * local_bs]
            x, y = x_all[idx], y_all[idx]
            g = _step_generator(r.seed, step)
            torch.manual_seed(r.seed * 1_000_003 + step)  # dropout and anything else global
            if augment is not None:
                u = torch.rand(r.batch_size, augment.num_random, generator=g)
                x = augment(x, u[rank::world])  # this process's samples of the global batch
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            lr = lr_at(step, total_steps, warmup_steps, r.lr, r.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with _autocast(device):
                loss, logits = loss_fn(train_model, x, y)
            correct = (
                (logits.argmax(1) == y).sum()
                if logits is not None
                else torch.zeros((), device=device)
            )
            stats = torch.stack(
                [
                    loss.detach().float() * len(y),
                    correct.float(),
                    torch.tensor(float(len(y)), device=device),
                ]
            )
            if world > 1:  # the global batch's loss and accuracy, not this process's share
                dist.all_reduce(stats)
            batch_loss_sum, batch_correct, batch_seen = stats.tolist()
            loss_value = batch_loss_sum / batch_seen
            if not math.isfinite(loss_value):
                batch_bar.close()
                epoch_bar.close()
                where = (
                    f"the last good checkpoint, {checkpoint} (step {saved_step}), was kept"
                    if checkpoint and saved_step is not None
                    else "no checkpoint was written yet"
                    if checkpoint
                    else "no checkpoint was asked for"
                )
                if not torch.isfinite(x).all():
                    cause = "this batch's images hold NaN or infinite values (after augmentation)"
                else:
                    cause = f"Lower the learning rate (now {r.lr}) or set grad_clip"
                raise NonFiniteLossError(
                    f"the loss became {loss_value} at step {step} (epoch {epoch + 1}, lr {lr:.2e}); "
                    f"{where}. {cause}."
                )
            if pending is not None:  # its weights just gave a finite loss
                write(pending)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            record = r.grad_norm_every and step % r.grad_norm_every == 0 and is_main
            if record:
                history.grad_steps.append(step)
                for name, ps in groups.items():
                    norms = [p.grad.detach().float().norm() for p in ps if p.grad is not None]
                    value = torch.stack(norms).norm().item() if norms else 0.0
                    history.grad_norms.setdefault(name, []).append(value)
            if r.grad_clip:
                nn.utils.clip_grad_norm_(params, r.grad_clip)
            optimizer.step()
            step += 1
            if on_step_end is not None:
                on_step_end(step, total_steps)
            history.step_loss.append(loss_value)
            history.step_lr.append(lr)
            run_loss += batch_loss_sum
            run_seen += int(batch_seen)
            run_correct += int(batch_correct)
            postfix = {"loss": f"{run_loss / run_seen:.4f}"}
            if logits is not None:
                postfix["acc"] = f"{100 * run_correct / run_seen:.2f}%"
            batch_bar.set_postfix(postfix, refresh=False)
            batch_bar.update()
            # At the end of an epoch, saving and stopping wait until its record is appended.
            epoch_done = step == (epoch + 1) * steps_per_epoch or step == total_steps
            if checkpoint is not None and step % checkpoint_every == 0 and not epoch_done:
                hold()
            if stop_at_step is not None and step >= stop_at_step and not epoch_done:
                write()
                batch_bar.close()
                epoch_bar.close()
                return history
        record = {
            "epoch": epoch + 1,
            "train_loss": run_loss / max(1, run_seen),
            "train_acc": run_correct / run_seen if logits is not None and run_seen else None,
            "lr": lr,
        }
        if val_data is not None and is_main:
            ev = evaluate(model, val_data, r.eval_batch_size, device)
            record.update(val_loss=ev["loss"], val_acc=ev["accuracy"])
            epoch_bar.set_postfix({"val_acc": f"{100 * ev['accuracy']:.2f}%"}, refresh=False)
        record["time"] = time.perf_counter() - start
        history.epochs.append(record)
        run_loss, run_correct, run_seen = 0.0, 0, 0
        epoch_bar.update()
        stopping = stop_at_step is not None and step >= stop_at_step
        if step >= total_steps or stopping:
            write()  # the end (or the asked-for stop): no later step will check these weights
        else:
            hold()
        if on_epoch_end is not None:
            on_epoch_end(record)
        if stopping:
            batch_bar.close()
            epoch_bar.close()
            return history
    batch_bar.close()
    epoch_bar.close()
    return history
