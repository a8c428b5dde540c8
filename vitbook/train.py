"""Training and evaluation: one small loop that every chapter uses.

`fit(model, train_data, val_data, recipe)` trains any model on an in-memory image dataset with
AdamW, linear warm-up then cosine decay, label smoothing and gradient clipping, as the `Recipe`
says, and returns a `History` (per-step loss and learning rate, per-layer gradient norms,
per-epoch train/validation loss and accuracy). Everything else is an option of the loop: the
loss, the augmentation, the device (the model's own unless told), checkpoints, a progress bar,
callbacks. It is

* deterministic: every random draw of step s comes from a generator seeded by (seed, s), so
  the same seed gives the same weights bit for bit on the same machine, and a run resumed
  from a checkpoint ends exactly where the uninterrupted one does;
* safe to interrupt: checkpoints are written to a temporary file and renamed into place, so a
  crash never leaves half a checkpoint; a non-finite loss stops training with a clear error and
  leaves the last good checkpoint alone;
* distributed when launched by ``torchrun --nproc_per_node N``: DistributedDataParallel over
  gloo (CPU) or nccl (GPU), each process taking its share of every global batch.

`evaluate` runs a classifier where it is, on a dataset, and returns accuracy, loss and logits.
"""

from __future__ import annotations

import math
import numbers
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import (  # noqa: F401  (the errors and savers are part of train's interface)
    STALE_TMP_SECONDS,
    CheckpointWriteError,
    ResumeMismatchError,
    data_fingerprint,
    fingerprint_differences,
    load_checkpoint,
    model_fingerprint,
    resumable_state,
    save_checkpoint,
)
from .ema import WeightAverage
from .loops import (  # noqa: F401
    as_device,
    as_tensors,
    check_images,
    evaluating,
    model_device,
    pick_device,
    training_tensors,
)
from .model import load_checked
from .runs import (  # noqa: F401  (Recipe, History and the schedule are part of train's interface)
    BatchStats,
    CheckpointSaver,
    EpochTotals,
    History,
    ProgressBar,
    Recipe,
    batch_stats,
    epoch_order,
    layer_groups,
    lr_at,
    param_groups,
    record_grad_norms,
    step_seed,
)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint was left as it was."""


def seed_everything(seed: int) -> None:
    """Seed torch's global generator (model initialisation, dropout)."""
    torch.manual_seed(seed)


def classification_loss(label_smoothing: float = 0.0) -> Callable:
    """The default loss: cross-entropy with label smoothing. A loss function takes
    (model, images, labels) and returns (loss, logits or None)."""

    def loss_fn(model, x, y):
        logits = model(x)
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing), logits

    return loss_fn


def autocast(device: torch.device):
    """bf16 autocast on CUDA (where it speeds up the matrix products), nothing elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def evaluate(model: nn.Module, data, batch_size: int = 1000, device=None) -> dict:
    """Accuracy and mean cross-entropy of a classifier on a dataset, computed where the model
    is (``device`` moves the model there first).

    Returns a dict with ``accuracy`` (fraction in [0, 1]), ``loss``, ``n``, and the
    ``predictions``, ``labels`` and ``logits`` tensors (on the CPU) for confusion matrices and
    error analysis."""
    if device is not None:
        model.to(as_device(device))
    device = model_device(model)
    x, y = as_tensors(data)
    if len(x) == 0:
        raise ValueError(
            "evaluate got an empty dataset (0 images): expected at least one (image, label); "
            "check the subset or filter that built it"
        )
    logits = []
    with evaluating(model), autocast(device):
        for i in range(0, len(x), batch_size):
            logits.append(model(x[i : i + batch_size].to(device)).float().cpu())
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


LOOP_OPTIONS = (
    "loss_fn, augmentation, device, checkpoint, checkpoint_every, resume, progress, "
    "stop_at_step, on_epoch_end, on_step_end"
)


def fit(
    model: nn.Module,
    train_data,
    val_data=None,
    recipe: Recipe | dict | None = None,
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
    **unknown,
) -> History:
    """Train ``model`` on ``train_data`` as ``recipe`` says; evaluate on ``val_data`` after
    every epoch. Returns the `History`.

    ``recipe`` is a `Recipe` or a dict of its fields (epochs, batch_size, lr, ...). The rest are
    options of the loop: ``loss_fn(model, x, y) -> (loss, logits or None)`` replaces the
    classification loss (the self-supervised and distillation chapters use this);
    ``augmentation(x, u)`` transforms every batch (u: (B, augmentation.num_random) uniform
    numbers; `vitbook.transforms.DigitAugment` for digits), none by default. ``device`` defaults
    to the model's own. With ``checkpoint`` set, the state is saved atomically every
    ``checkpoint_every`` steps and at the end of every epoch, and a run finds and resumes from
    an existing checkpoint (``resume=True``). ``stop_at_step`` stops early (after saving), which
    is how the tests interrupt a run. ``on_step_end(step, total_steps)`` runs after every
    optimizer step (I-JEPA's EMA update), ``on_epoch_end(record)`` after every epoch's
    evaluation. With ``recipe.ema_decay``, the model judged after every epoch and returned at
    the end is the moving average of the weights (`vitbook.ema.WeightAverage`); the trained
    weights' validation accuracy is recorded beside it as ``val_acc_trained``.
    """
    if unknown:
        raise TypeError(
            f"fit got unknown option(s) {', '.join(map(repr, unknown))}. Recipe fields go in "
            f"recipe=Recipe(...) or recipe={{...}} (fields: {', '.join(Recipe.__dataclass_fields__)}); "
            f"the loop options are {LOOP_OPTIONS}"
        )
    r = Recipe.from_dict(recipe)
    _check_whole("checkpoint_every", checkpoint_every)
    if stop_at_step is not None:
        _check_whole("stop_at_step", stop_at_step)
    rank, world = _dist_env()
    device = as_device(device) if device is not None else model_device(model)
    if world > 1:
        device = _init_dist(device)
    if r.batch_size % world != 0:
        raise ValueError(f"batch_size {r.batch_size} must be divisible by the {world} processes")
    torch.manual_seed(r.seed)
    x_all, y_all = training_tensors(model, train_data, val_data, loss_fn is None, r.batch_size)
    loss_fn = loss_fn or classification_loss(r.label_smoothing)
    n = len(x_all)
    steps_per_epoch = n // r.batch_size
    total_steps = max(1, round(r.epochs * steps_per_epoch))
    warmup_steps = max(1, round(r.warmup_epochs * steps_per_epoch))
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    local_bs = r.batch_size // world
    is_main = rank == 0

    model.to(device)
    optimizer = torch.optim.AdamW(
        param_groups(model, r.weight_decay), lr=r.lr, betas=r.betas,
        fused=device.type in ("cpu", "cuda"),
    )  # fmt: skip
    average = WeightAverage(model, r.ema_decay) if r.ema_decay else None
    fingerprint = {"model": model_fingerprint(model), "data": data_fingerprint(x_all, y_all)}
    history, step, totals = (
        History(steps_per_epoch=steps_per_epoch, recipe=r.to_dict()),
        0,
        EpochTotals(),
    )
    if checkpoint is not None and resume and Path(checkpoint).exists():
        history, step, totals = _resume(checkpoint, r, fingerprint, model, optimizer, average)

    def state() -> dict:
        return {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "average": average.state_dict() if average is not None else None,
            "history": history.to_dict(), "step": step, "recipe": r.to_dict(),
            "epoch_stats": totals.as_tuple(), "fingerprint": fingerprint,
        }  # fmt: skip

    saver = CheckpointSaver(checkpoint if is_main else None, state)
    train_model = model
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if r.compile:
        train_model = torch.compile(train_model)
    groups = layer_groups(model)
    params = [p for p in model.parameters() if p.requires_grad]
    bar = ProgressBar(progress and is_main, num_epochs, steps_per_epoch, step, total_steps)
    start = time.perf_counter() - history.final.get("time", 0.0)

    while step < total_steps:
        epoch = step // steps_per_epoch
        order = epoch_order(n, world, rank, r.seed, epoch)  # this process's share of the epoch
        epoch_end = min((epoch + 1) * steps_per_epoch, total_steps)
        bar.start_epoch(epoch)
        train_model.train()
        while step < epoch_end:
            # 1. The batch: this step's samples, augmented with this step's random numbers.
            k = step - epoch * steps_per_epoch
            idx = order[k * local_bs : (k + 1) * local_bs]
            torch.manual_seed(step_seed(r.seed, step))  # dropout and anything else global
            x, y = _batch(x_all[idx], y_all[idx], augmentation, r, step, rank, world)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            # 2. The loss, at this step's learning rate.
            lr = lr_at(step, total_steps, warmup_steps, r.lr, r.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast(device):
                loss, logits = loss_fn(train_model, x, y)
            batch = batch_stats(loss, logits, y, world)
            if not math.isfinite(batch.loss):
                bar.close()
                raise _non_finite(batch.loss, step, epoch, lr, r, x, checkpoint, saver.saved_step)
            saver.confirm()  # the held checkpoint's weights just gave a finite loss
            # 3. The update: gradients (their norms recorded now and then), clipping, AdamW.
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if r.grad_norm_every and step % r.grad_norm_every == 0 and is_main:
                record_grad_norms(history, groups, step)
            if r.grad_clip:
                nn.utils.clip_grad_norm_(params, r.grad_clip)
            optimizer.step()
            if average is not None:
                average.update()
            step += 1
            if on_step_end is not None:
                on_step_end(step, total_steps)
            # 4. The record.
            history.step_loss.append(batch.loss)
            history.step_lr.append(lr)
            totals.add(batch)
            bar.step(totals, logits is not None)
            if step == epoch_end:  # saving and stopping wait for the epoch's record
                break
            if checkpoint is not None and step % checkpoint_every == 0:
                saver.hold()
            if stop_at_step is not None and step >= stop_at_step:
                saver.write()
                bar.close()
                return history
        # The epoch's record: training loss and accuracy, then validation (of the average).
        record = {"epoch": epoch + 1, "lr": lr, **totals.summary(logits is not None)}
        if val_data is not None and is_main:
            record.update(_validate(model, average, val_data, r.eval_batch_size))
        bar.epoch_done(record.get("val_acc"))
        record["time"] = time.perf_counter() - start
        history.epochs.append(record)
        totals = EpochTotals()
        finished = step >= total_steps
        stopping = stop_at_step is not None and step >= stop_at_step
        if finished and average is not None:
            model.load_state_dict(average.module.state_dict())  # the run's result is the average
        if finished or stopping:
            saver.write()  # no later step will check these weights
        else:
            saver.hold()
        if on_epoch_end is not None:
            on_epoch_end(record)
        if stopping:
            break
    bar.close()
    return history


# --------------------------------------------------------------------------------------------
# The pieces of `fit`


def _check_whole(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a whole number of steps >= 1, got {value!r}")


def _batch(x, y, augmentation, r: Recipe, step: int, rank: int, world: int):
    """The batch of ``step``, augmented with numbers drawn from the step's own generator (so a
    resumed run draws what the uninterrupted one did; under torchrun each process takes its
    samples' share of the global batch's numbers)."""
    if augmentation is None:
        return x, y
    g = torch.Generator().manual_seed(step_seed(r.seed, step))
    u = torch.rand(r.batch_size, augmentation.num_random, generator=g)
    return augmentation(x, u[rank::world]), y


def _validate(model, average, val_data, batch_size: int) -> dict:
    """Validation loss and accuracy of the model judged: the weight average where there is
    one (the trained weights' accuracy beside it), else the model itself."""
    ev = evaluate(average.module if average is not None else model, val_data, batch_size)
    out = {"val_loss": ev["loss"], "val_acc": ev["accuracy"]}
    if average is not None:
        out["val_acc_trained"] = evaluate(model, val_data, batch_size)["accuracy"]
    return out


def _resume(checkpoint, r: Recipe, fingerprint: dict, model, optimizer, average):
    """Load a checkpoint of this run into the model, optimizer and weight average; returns
    (history, step, the running totals of a half-done epoch)."""
    state = resumable_state(checkpoint, r.to_dict(), fingerprint)
    load_checked(model, state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if average is not None:
        average.load_state_dict(state["average"])
    history, step = History.from_dict(state["history"]), state["step"]
    partial = step % history.steps_per_epoch
    return history, step, EpochTotals(*state["epoch_stats"]) if partial else EpochTotals()


def _non_finite(value, step, epoch, lr, r: Recipe, x, checkpoint, saved_step) -> NonFiniteLossError:
    if checkpoint and saved_step is not None:
        where = f"the last good checkpoint, {checkpoint} (step {saved_step}), was kept"
    elif checkpoint:
        where = "no checkpoint was written yet"
    else:
        where = "no checkpoint was asked for"
    if not torch.isfinite(x).all():
        cause = "this batch's images hold NaN or infinite values (after augmentation)"
    else:
        cause = f"Lower the learning rate (now {r.lr}) or set grad_clip"
    return NonFiniteLossError(
        f"the loss became {value} at step {step} (epoch {epoch + 1}, lr {lr:.2e}); {where}. {cause}."
    )


# --------------------------------------------------------------------------------------------
# Distributed helpers


def _dist_env() -> tuple[int, int]:
    """(rank, world size) when launched by torchrun, else (0, 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world


def _init_dist(device: torch.device) -> torch.device:
    """Join the process group; under torchrun on GPUs, each process takes its own GPU."""
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device
