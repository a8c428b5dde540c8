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

import math
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
    """(images float (N, C, H, W), labels (N,)) from a `vitbook.data.ImageDataset`, a pair of
    tensors, or any dataset of (image, label) items (stacked once)."""
    if hasattr(data, "tensors"):
        return data.tensors()
    if isinstance(data, tuple | list) and len(data) == 2 and torch.is_tensor(data[0]):
        return data[0].float(), torch.as_tensor(data[1]).long()
    if len(data) == 0:
        raise ValueError("the dataset is empty")
    xs, ys = zip(*(data[i] for i in range(len(data))))
    return torch.stack(xs).float(), torch.as_tensor(ys).long()


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

    def to_dict(self) -> dict:
        return asdict(self)


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


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` with torch.save to a temporary file beside ``path``, then rename it into
    place: a reader sees the old checkpoint or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_checkpoint(path: str | Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise RuntimeError(
            f"cannot read the checkpoint {path} ({type(e).__name__}: {e}); delete it to start over"
        ) from e


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
    r = Recipe(**recipe)
    rank, world = _dist_env()
    device = pick_device(device)
    if world > 1:
        _init_dist(device)
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if r.batch_size % world != 0:
        raise ValueError(f"batch_size {r.batch_size} must be divisible by the {world} processes")
    torch.manual_seed(r.seed)
    loss_fn = loss_fn or classification_loss(r.label_smoothing)
    augment = augmentation if augmentation is not None else (DigitAugment() if r.augment else None)

    x_all, y_all = as_tensors(train_data)
    n = len(x_all)
    steps_per_epoch = n // r.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{n} training images are fewer than one batch of {r.batch_size}")
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
        }

    def save():
        if checkpoint is not None and is_main:
            save_checkpoint(checkpoint, state_dict())

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
                    f"the last good checkpoint, {checkpoint}, was kept"
                    if checkpoint
                    else "no checkpoint was asked for"
                )
                raise NonFiniteLossError(
                    f"the loss became {loss_value} at step {step} (epoch {epoch + 1}, lr {lr:.2e}); "
                    f"{where}. Lower the learning rate (now {r.lr}) or set grad_clip."
                )
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
            if checkpoint is not None and step % checkpoint_every == 0:
                save()
            if stop_at_step is not None and step >= stop_at_step:
                save()
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
        save()
        if on_epoch_end is not None:
            on_epoch_end(record)
    batch_bar.close()
    epoch_bar.close()
    return history
