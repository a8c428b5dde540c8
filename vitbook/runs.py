"""What fixes a training run, and what it records.

* `Recipe`: every choice besides the model and the data (epochs, batch, learning rate and its
  schedule, weight decay, label smoothing, clipping, seed, the weight average).
* `History`: per-step loss and learning rate, per-layer gradient norms, per-epoch results.
* The pieces `vitbook.train.fit` assembles: the learning-rate schedule (`lr_at`), the weight-decay
  groups (`param_groups`), the layer groups of the gradient-flow plots (`layer_groups`), the
  per-step seed (`step_seed`), each epoch's sample order (`epoch_order`), the running totals
  (`EpochTotals`, `batch_stats`), the checkpoints (`CheckpointSaver`) and the progress bar (`ProgressBar`).

Plotting a history is the reader's business: `vitbook.viz.plot_history(history)`.
"""

from __future__ import annotations

import copy
import difflib
import math
import numbers
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DistributedSampler

from .checkpoint import save_checkpoint


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
    seed: int = 0
    grad_norm_every: int = 10  # record per-layer gradient norms every k steps (0: never)
    eval_batch_size: int = 1000
    compile: bool = False  # torch.compile the model (pays ~20-50 s once on a CPU)
    ema_decay: float | None = None  # judge and return a moving average of the weights (vitbook.ema)

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
        if self.ema_decay is not None:
            number("ema_decay", 0, 1, low_open=True)
            if self.ema_decay == 1:
                raise ValueError("ema_decay must be below 1 (e.g. 0.9995), got 1")
        if len(tuple(self.betas)) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, options: dict | Recipe | None) -> Recipe:
        """A `Recipe` from a dict of its fields (or a Recipe, or None for the defaults), with a
        TypeError that names unknown fields and the closest known one."""
        if options is None:
            return cls()
        if isinstance(options, Recipe):
            return options
        if not isinstance(options, dict):
            raise TypeError(
                f"a recipe is a vitbook.train.Recipe or a dict of its fields, got {type(options).__name__}"
            )
        fields = cls.__dataclass_fields__
        unknown = [k for k in options if k not in fields]
        if unknown:
            close = {k: difflib.get_close_matches(k, fields, n=1) for k in unknown}
            hints = ", ".join(
                f"{k!r}" + (f" (did you mean {c[0]!r}?)" if c else "") for k, c in close.items()
            )
            raise TypeError(
                f"unknown recipe field(s) {hints}; the fields of a Recipe are {', '.join(fields)}"
            )
        return cls(**options)


_RECIPE_HINTS = {
    "epochs": "a fraction such as 0.5 trains half an epoch",
    "batch_size": "the global batch, such as 128",
    "lr": "the peak learning rate, such as 3e-3",
    "eval_batch_size": "such as 1000",
}


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


def step_seed(seed: int, step: int) -> int:
    """The seed of every random draw at optimizer step ``step`` of a run seeded ``seed``: the
    batch's augmentation, dropout, masks. A run resumed at step s draws what it would have."""
    return seed * 1_000_003 + step


def epoch_order(n: int, world: int, rank: int, seed: int, epoch: int) -> torch.Tensor:
    sampler = DistributedSampler(
        range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True
    )
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler))


class EpochTotals:
    """Running sums of the current epoch: loss x samples, correct predictions, samples."""

    def __init__(self, loss: float = 0.0, correct: int = 0, seen: int = 0):
        self.loss, self.correct, self.seen = loss, correct, seen

    def add(self, batch) -> None:
        self.loss += batch.loss_sum
        self.correct += int(batch.correct)
        self.seen += int(batch.seen)

    def as_tuple(self) -> tuple:
        return (self.loss, self.correct, self.seen)

    def summary(self, has_accuracy: bool) -> dict:
        """The epoch's training loss and accuracy (None without logits)."""
        acc = self.correct / self.seen if has_accuracy and self.seen else None
        return {"train_loss": self.loss / max(1, self.seen), "train_acc": acc}


class BatchStats:
    def __init__(self, loss_sum: float, correct: float, seen: float):
        self.loss_sum, self.correct, self.seen = loss_sum, correct, seen
        self.loss = loss_sum / seen


def batch_stats(loss, logits, y, world: int) -> BatchStats:
    """The global batch's loss and accuracy (summed over processes under torchrun)."""
    device = loss.device
    correct = (
        (logits.argmax(1) == y).sum() if logits is not None else torch.zeros((), device=device)
    )
    stats = torch.stack(
        [
            loss.detach().float() * len(y),
            correct.float(),
            torch.tensor(float(len(y)), device=device),
        ]
    )
    if world > 1:
        dist.all_reduce(stats)
    return BatchStats(*stats.tolist())


def record_grad_norms(history: History, groups: dict, step: int) -> None:
    history.grad_steps.append(step)
    for name, ps in groups.items():
        norms = [p.grad.detach().float().norm() for p in ps if p.grad is not None]
        value = torch.stack(norms).norm().item() if norms else 0.0
        history.grad_norms.setdefault(name, []).append(value)


class CheckpointSaver:
    """Checkpoints of a run. A periodic checkpoint is held in memory until the next step's loss,
    computed with its weights, proves finite; only then is it written (`confirm`). So the
    checkpoint on disk always holds weights whose loss was finite, even when training diverges
    right after a save. The checkpoint it replaces is kept beside it (`vitbook.checkpoint.
    previous_path`), so a damaged latest checkpoint does not lose the run."""

    def __init__(self, path, state: Callable[[], dict]):
        self.path, self.state = path, state
        self.pending = None
        self.saved_step = None

    def hold(self) -> None:
        if self.path is not None:
            self.pending = copy.deepcopy(self.state())

    def confirm(self) -> None:
        if self.pending is not None:
            self.write(self.pending)

    def write(self, state: dict | None = None) -> None:
        self.pending = None
        if self.path is not None:
            state = self.state() if state is None else state
            save_checkpoint(self.path, state, keep_previous=True)
            self.saved_step = state["step"]


class ProgressBar:
    """One bar over all of a run's steps, with the epoch in its description and the running loss,
    accuracy and last validation accuracy after it. It redraws at most every two seconds and never
    per epoch: in a notebook every redraw is three widget messages, and nbval reads a cell's
    messages only after the cell ends, from a queue that drops messages past about 2,000 (the
    kernel's "idle" among them, which then fails the cell). A bar reset every epoch sent 4,000
    messages for chapter 12's 80-second students cell."""

    def __init__(
        self, enabled: bool, num_epochs: int, steps_per_epoch: int, step: int, total_steps: int
    ):
        from tqdm.auto import tqdm

        self.num_epochs = num_epochs
        self.postfix: dict[str, str] = {}
        self.bar = tqdm(
            total=total_steps,
            initial=step,
            desc=f"epoch {step // steps_per_epoch + 1}/{num_epochs}",
            unit="step",
            mininterval=2.0,
            maxinterval=10.0,
            disable=not enabled,
        )

    def start_epoch(self, epoch: int) -> None:
        self.bar.set_description(f"epoch {epoch + 1}/{self.num_epochs}", refresh=False)

    def step(self, totals: EpochTotals, has_accuracy: bool) -> None:
        self.postfix["loss"] = f"{totals.loss / totals.seen:.4f}"
        if has_accuracy:
            self.postfix["acc"] = f"{100 * totals.correct / totals.seen:.2f}%"
        self.bar.set_postfix(self.postfix, refresh=False)
        self.bar.update()

    def epoch_done(self, val_acc: float | None) -> None:
        if val_acc is not None:
            self.postfix["val_acc"] = f"{100 * val_acc:.2f}%"
            self.bar.set_postfix(self.postfix, refresh=False)

    def close(self) -> None:
        self.bar.close()
