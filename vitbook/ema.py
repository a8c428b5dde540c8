"""Exponential moving averages of weights: one implementation for two uses.

* `WeightAverage`: a recipe option of `vitbook.train.fit` (``Recipe(ema_decay=0.9995)``). A
  copy of the model follows its weights, ``avg <- d * avg + (1 - d) * current`` after every
  optimizer step; the average of the last few thousand steps usually generalises a little
  better than the last step's weights.
* I-JEPA's target encoder (`vitbook.ssl.IJEPA.update_target`) is the same update with its own
  momentum schedule: it calls `blend_`.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


@torch.no_grad()
def blend_(average: nn.Module, current: nn.Module, weight: float) -> None:
    """In place: ``average <- (1 - weight) * average + weight * current`` for every floating
    parameter and buffer (BatchNorm statistics included); counters such as BatchNorm's
    ``num_batches_tracked`` are copied. The two modules must have the same state_dict keys."""
    mine, theirs = average.state_dict(), current.state_dict()
    if mine.keys() != theirs.keys():
        missing = sorted(set(mine) ^ set(theirs))[:5]
        raise ValueError(
            f"cannot average two different models: their weights differ in {missing}; "
            f"average a model only with a copy of itself"
        )
    floats = [k for k, t in mine.items() if t.is_floating_point()]
    if floats:
        torch._foreach_lerp_([mine[k] for k in floats], [theirs[k] for k in floats], weight)
    for k, t in mine.items():
        if not t.is_floating_point():
            t.copy_(theirs[k])


class WeightAverage:
    """A moving average of ``model``'s weights, kept in ``self.module`` (a frozen copy in eval
    mode). Call `update` after every optimizer step.

    The decay warms up, ``d = min(decay, (1 + t) / (10 + t))`` after t updates, so the average
    forgets the untrained start quickly: without it, BatchNorm's running variance (1.0 at
    initialisation, ~0.02 after training on MNIST) keeps decay**t of its starting value, enough
    to make an averaged CNN predict one class for the first half of a 15-epoch run."""

    def __init__(self, model: nn.Module, decay: float):
        if isinstance(decay, bool) or not isinstance(decay, float | int) or not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be a number between 0 and 1 (e.g. 0.9995), got {decay!r}")
        self.model = model
        self.decay = float(decay)
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    def update(self) -> None:
        """Blend in the current weights of the model given at construction."""
        self.updates += 1
        blend_(self.module, self.model, 1.0 - self.current_decay())

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]
