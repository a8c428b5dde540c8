"""Trained models that chapters share, trained once and cached.

``zoo.get("mnist-vit")`` returns a trained model. The first call trains it with a fixed recipe
(progress bars and all) and saves it under ``$VITBOOK_CACHE`` (default ``~/.cache/vitbook/zoo``);
later calls load it in a second. The file name carries a key made of the recipe and the code
version (a hash of the vitbook modules the training uses), so changing either retrains instead
of loading a stale model. A file lock makes two processes that ask at once train it once.

This is what lets every chapter run alone, in any order, in a fresh kernel: a chapter that needs
"the trained MNIST ViT" asks the zoo instead of depending on chapter 4 having run.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from filelock import FileLock

from . import data
from .model import ViT, ViTConfig, load_checked
from .train import evaluate, fit, save_checkpoint, seed_everything

PACKAGE_DIR = Path(__file__).parent


def cache_dir() -> Path:
    """``$VITBOOK_CACHE`` or ``~/.cache/vitbook/zoo``."""
    return Path(os.environ.get("VITBOOK_CACHE", "~/.cache/vitbook/zoo")).expanduser()


@dataclass
class Entry:
    """A zoo model: how to build it untrained, how to train it, and what fixes the result."""

    name: str
    description: str
    build: Callable[[], nn.Module]
    train: Callable[[nn.Module], dict]  # trains in place; returns measured metrics
    recipe: dict  # everything that fixes the result besides the code; part of the key
    modules: tuple[str, ...] = ("model", "train", "data", "transforms", "zoo")
    minutes: float = 2.0  # rough cold training time on 2 CPU cores, for the message
    depends: tuple[str, ...] = field(default_factory=tuple)  # zoo models it starts from

    def key(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps(self.recipe, sort_keys=True, default=str).encode())
        for mod in sorted(self.modules):
            h.update((PACKAGE_DIR / f"{mod}.py").read_bytes())
        h.update(torch.__version__.encode())
        for dep in self.depends:
            h.update(REGISTRY[dep].key().encode())
        return h.hexdigest()[:16]

    def path(self) -> Path:
        return cache_dir() / f"{self.name}-{self.key()}.pt"


REGISTRY: dict[str, Entry] = {}


def register(entry: Entry) -> Entry:
    REGISTRY[entry.name] = entry
    return entry


def names() -> list[str]:
    """The names of the zoo's models."""
    return sorted(REGISTRY)


def _entry(name: str) -> Entry:
    if name not in REGISTRY:
        raise KeyError(f"no zoo model named {name!r}; the zoo has: {', '.join(names())}")
    return REGISTRY[name]


def is_cached(name: str) -> bool:
    return _entry(name).path().exists()


def _train_and_save(entry: Entry, path: Path) -> None:
    print(
        f"zoo: training {entry.name!r} ({entry.description}); first use, about "
        f"{entry.minutes:g} min on 2 CPU cores. It is cached in {path.parent} for next time."
    )
    start = time.perf_counter()
    model = entry.build()
    metrics = entry.train(model)
    metrics["train_seconds"] = round(time.perf_counter() - start, 1)
    model.cpu().eval()
    save_checkpoint(
        path,
        {
            "state_dict": model.state_dict(),
            "metrics": metrics,
            "recipe": entry.recipe,
            "key": entry.key(),
        },
    )


def get(name: str, device: str | torch.device = "cpu", retrain: bool = False) -> nn.Module:
    """The trained model ``name`` in eval mode on ``device`` (CPU unless asked), training and
    caching it on first use."""
    entry = _entry(name)
    path = entry.path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if retrain and path.exists():
            path.unlink()
        if not path.exists():
            _train_and_save(entry, path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise RuntimeError(
            f"the cached zoo model {path} cannot be read ({e}); call zoo.get({name!r}, retrain=True)"
        ) from e
    model = entry.build()
    load_checked(model, state["state_dict"], f"cached zoo model {path.name}")
    return model.to(device).eval()


def info(name: str) -> dict:
    """What was measured when ``name`` was trained (test accuracy, training time, ...), plus its
    recipe and cache key. Trains it first if needed."""
    get(name)
    state = torch.load(_entry(name).path(), map_location="cpu", weights_only=False)
    return {"name": name, "key": state["key"], "recipe": state["recipe"], **state["metrics"]}


def source(name: str) -> str:
    """The code that trains ``name``, for readers who want to see the recipe."""
    return inspect.getsource(_entry(name).train)


# ---------------------------------------------------------------------------------------------
# The models


def mnist_config(**overrides) -> ViTConfig:
    """The book's MNIST ViT: 28x28 digits in 7x7 patches (a 4x4 grid), width 64, 3 blocks of
    4 heads, MLP 128, mean-pooled patch tokens; about 100k parameters. Explicit attention, since
    for 17 tokens it is faster on a CPU than the fused kernel (see `python -m vitbook.bench`)."""
    fields = dict(
        image_size=28, patch_size=7, in_channels=1, num_classes=10,
        dim=64, depth=3, heads=4, mlp_dim=128, pool="mean", fused_attn=False,
    )  # fmt: skip
    fields.update(overrides)
    return ViTConfig(**fields)


# The chapter-4 recipe: what the MNIST ViT is trained with (AdamW, warm-up + cosine, label
# smoothing, small affine augmentation).
MNIST_RECIPE = dict(
    epochs=9,
    batch_size=128,
    lr=3e-3,
    warmup_epochs=0.5,
    weight_decay=0.05,
    label_smoothing=0.1,
    augment=True,
    seed=0,
)


def train_mnist_classifier(model: nn.Module, recipe: dict, train_set=None) -> dict:
    """Train on MNIST's 60,000 training digits with ``recipe``; report test accuracy."""
    seed_everything(recipe.get("seed", 0))
    train_set = train_set if train_set is not None else data.mnist("train")
    test_set = data.mnist("test")
    history = fit(model, train_set, test_set, **recipe)
    return {
        "test_accuracy": evaluate(model, test_set)["accuracy"],
        "epochs": history.final.get("epoch"),
    }


def _build_seeded(cfg_fn: Callable[[], ViTConfig], seed: int = 0) -> Callable[[], nn.Module]:
    def build():
        seed_everything(seed)
        return ViT(cfg_fn())

    return build


register(
    Entry(
        name="mnist-vit",
        description="the chapter-4 ViT trained on MNIST",
        build=_build_seeded(mnist_config),
        train=lambda m: train_mnist_classifier(m, MNIST_RECIPE),
        recipe={"config": mnist_config().to_dict(), **MNIST_RECIPE},
        minutes=2,
    )
)
