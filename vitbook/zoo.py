"""Trained models that chapters share, trained once and cached.

``zoo.get("mnist-vit")`` returns a trained model. The first call trains it with a fixed recipe
(progress bars and all) and saves it under ``$VITBOOK_CACHE`` (default ``~/.cache/vitbook/zoo``);
later calls load it in a second. The file name carries a key made of the recipe and the code
the entry runs: the source of every vitbook function and class that its build and train
functions reach, followed through names, closures and default arguments (`code_sources`). So
changing the recipe or any helper the training calls retrains instead of loading a stale model,
while a comment or an unrelated function elsewhere leaves the key alone. A file lock makes two
processes that ask at once train it once; a model already cached is read without the lock, so a
read-only cache works.

This is what lets every chapter run alone, in any order, in a fresh kernel: a chapter that needs
"the trained MNIST ViT" asks the zoo instead of depending on chapter 4 having run.

This module is the cache alone (key, lock, atomic save, load, adopt). What it holds is registered
from outside: the book's models by `vitbook.recipes` (``import vitbook.recipes``), anyone's with
`register`. Models train on the best device there is (`vitbook.loops.pick_device`: CUDA, MPS,
else the CPU) and are cached on the CPU.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from filelock import FileLock

from . import data, release
from .checkpoint import load_checkpoint, save_checkpoint
from .claims import seed as book_seed
from .codehash import code_sources
from .loops import as_device, pick_device
from .model import load_checked
from .runs import Recipe


def cache_dir() -> Path:
    """``$VITBOOK_CACHE`` or ``~/.cache/vitbook/zoo`` (an empty value or a file is refused)."""
    return data.folder_from_env("VITBOOK_CACHE", "~/.cache/vitbook/zoo", ValueError)


# ---------------------------------------------------------------------------------------------
# What a zoo key hashes: the code an entry runs.

# The zoo's own cache functions: a training that asks the zoo for another model depends on that
# model's key (through ``Entry.depends``), not on how the cache works.
_KEY_STOP = {
    __name__: frozenset(
        {
            "get",
            "info",
            "adopt",
            "is_cached",
            "names",
            "_entry",
            "_ensure",
            "_train_and_save",
            "_save",
            "_load",
            "_say",
        }
    )
}


@dataclass
class Entry:
    """A zoo model: how to build it untrained, how to train it, and what fixes the result."""

    name: str
    description: str
    build: Callable[[], nn.Module] | None  # None for a cached *result* (metrics, no model)
    train: Callable[[nn.Module | None], dict]  # trains in place; returns measured metrics
    recipe: dict  # everything that fixes the result besides the code; part of the key
    # The vitbook modules the training uses, for readers; the key follows the code itself.
    modules: tuple[str, ...] = ("model", "train", "data", "transforms")
    minutes: float = 2.0  # rough cold training time on 2 CPU cores, for the message
    depends: tuple[str, ...] = field(default_factory=tuple)  # zoo models it starts from

    def key(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps(self.recipe, sort_keys=True, default=str).encode())
        roots = [f for f in (self.build, self.train) if f is not None]
        for source in code_sources(*roots, stop=_KEY_STOP):
            h.update(source.encode())
        h.update(str(ZOO_VERSION).encode())
        h.update(f"seed {SEED}".encode())
        h.update(torch.__version__.encode())
        for dep in self.depends:
            h.update(REGISTRY[dep].key().encode())
        return h.hexdigest()[:16]

    def path(self) -> Path:
        return cache_dir() / f"{self.name}-{self.key()}.pt"


REGISTRY: dict[str, Entry] = {}
# The seed of every model here: ``$VITBOOK_SEED`` (default 0), read once at import. It is part
# of every key, so models of different seeds live side by side in one cache.
SEED = book_seed()
# Bump to retrain every model at once (the key already follows every helper the training runs).
ZOO_VERSION = 1


def register(entry: Entry) -> Entry:
    REGISTRY[entry.name] = entry
    return entry


def names() -> list[str]:
    """The names of the zoo's models."""
    return sorted(REGISTRY)


def _entry(name: str) -> Entry:
    if name not in REGISTRY:
        if not REGISTRY:
            raise KeyError(
                f"no zoo model named {name!r}: the zoo is empty. The book's models are "
                f"registered by `import vitbook.recipes`; register your own with zoo.register"
            )
        raise KeyError(f"no zoo model named {name!r}; the zoo has: {', '.join(names())}")
    return REGISTRY[name]


def is_cached(name: str) -> bool:
    return _entry(name).path().exists()


def _train_and_save(entry: Entry, path: Path) -> dict:
    what = "computing" if entry.build is None else "training"
    print(
        f"zoo: {what} {entry.name!r} ({entry.description}); first use, about "
        f"{entry.minutes:g} min on 2 CPU cores. It is cached in {path.parent} for next time."
    )
    for dep in entry.depends:  # train what this starts from first, each under its own lock
        _ensure(dep)
    start = time.perf_counter()
    model = entry.build().to(pick_device()) if entry.build is not None else None
    metrics = entry.train(model)
    metrics["train_seconds"] = round(time.perf_counter() - start, 1)
    state = model.cpu().eval().state_dict() if model is not None else None
    saved = {"state_dict": state, "metrics": metrics, "recipe": entry.recipe, "key": entry.key()}
    try:
        save_checkpoint(path, saved)
    except OSError as e:  # a full or read-only disk: keep what was just trained
        warnings.warn(
            f"zoo: could not cache {entry.name!r} in {path} ({e}). The trained model is used from "
            f"memory this time and will be trained again next time; free some space or set "
            f"$VITBOOK_CACHE to a writable folder.",
            stacklevel=3,
        )
    return saved


def _save(entry: Entry, path: Path, state: dict | None, metrics: dict) -> None:
    """What a cached zoo file holds, written atomically (one place, for trained and adopted)."""
    save_checkpoint(
        path, {"state_dict": state, "metrics": metrics, "recipe": entry.recipe, "key": entry.key()}
    )


def _lock(path: Path) -> FileLock:
    """The lock that makes one process train ``path``; a clear error where the cache is not
    writable (a model already cached is read without it)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path) + ".lock")
        lock.acquire()
    except OSError as e:
        raise OSError(
            e.errno,
            f"the zoo cache {path.parent} is not writable ({e.strerror or e}), and "
            f"{path.name} is not in it yet. Set $VITBOOK_CACHE to a writable folder (or copy "
            f"the cached model into this one).",
        ) from e
    return lock


def _ensure(name: str, retrain: bool = False) -> dict:
    """Load ``name`` from the cache; else fetch it from the published release (where the network
    answers and the key matches exactly, the digest verified); else train (or compute) it. Then
    return its saved state, verified."""
    entry = _entry(name)
    path = entry.path()
    if retrain or not path.exists():  # a cached file is whole (written atomically): read it as is
        lock = _lock(path)
        try:
            if retrain and path.exists():
                path.unlink()
            if not path.exists():
                got, where = (
                    (False, "retrain asked") if retrain else release.fetch(name, entry.key(), path)
                )
                if not got:
                    state = _train_and_save(entry, path)
                    _say(name, f"trained here just now, in {state['metrics']['train_seconds']:g} s")
                    return state
                _say(name, f"downloaded from {where}, SHA-256 verified against the manifest")
        finally:
            lock.release()
    return _load(entry, path)


_SAID: set[str] = set()


def _say(name: str, where: str) -> None:
    """One line per model and process: where the model a chapter uses came from."""
    if name not in _SAID:
        _SAID.add(name)
        print(f"zoo: {name!r} {where}")


def _load(entry: Entry, path: Path) -> dict:
    """The cached state of ``entry``, its digest checked: a damaged file is an error that says
    what to do, never silently retrained over or used."""
    state = load_checkpoint(
        path,
        f"Nothing was overwritten. Delete the file and the zoo trains {entry.name!r} again on "
        f"next use, or call zoo.get({entry.name!r}, retrain=True) to retrain it now",
    )
    metrics = state.get("metrics", {})
    took = f", trained in {metrics['train_seconds']:g} s" if "train_seconds" in metrics else ""
    _say(entry.name, f"loaded from the cache {path.parent}{took}")
    return state


def get(name: str, device: str | torch.device = "cpu", retrain: bool = False) -> nn.Module:
    """The trained model ``name`` in eval mode on ``device`` (CPU unless asked), training and
    caching it on first use."""
    entry = _entry(name)
    if entry.build is None:
        raise ValueError(f"{name!r} is a cached result, not a model: use zoo.info({name!r})")
    state = _ensure(name, retrain)
    model = entry.build()
    load_checked(model, state["state_dict"], f"cached zoo model {entry.path().name}")
    return model.to(as_device(device)).eval()


def adopt(name: str, model: nn.Module, recipe: Recipe | dict, metrics: dict | None = None) -> bool:
    """Cache ``model``, which a chapter trained itself, as the zoo's ``name``, so that the zoo
    does not train the same thing a second time (chapter 4 trains the MNIST ViT in front of the
    reader; chapters 5-13 then load it).

    Only a model trained exactly as the zoo would train it may stand in: the same configuration
    and ``recipe`` (checked here), built right after ``seed_everything(recipe["seed"])`` and
    trained by ``fit`` (which draws every random number from generators seeded by the recipe's
    seed and the step, so the result does not depend on what ran before). Returns True if it
    was written, False if the zoo already had the model (which is left alone).
    """
    entry = _entry(name)
    if entry.build is None:
        raise ValueError(f"{name!r} is a cached result, not a model")
    fields = recipe.to_dict() if isinstance(recipe, Recipe) else dict(recipe)
    given = {"config": model.cfg.to_dict(), **fields}
    if given != entry.recipe:
        differ = sorted(
            k for k in set(given) | set(entry.recipe) if given.get(k) != entry.recipe.get(k)
        )
        raise ValueError(
            f"this model was not trained with {name!r}'s recipe ({', '.join(differ)} differ); "
            f"only a model trained exactly as the zoo would train it can stand in for it"
        )
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    load_checked(entry.build(), state, f"the model offered as {name!r}")
    path = entry.path()
    if path.exists():
        return False
    lock = _lock(path)
    try:
        if path.exists():
            return False
        _save(entry, path, state, {**(metrics or {}), "adopted": True})
    finally:
        lock.release()
    print(f"zoo: cached this model as {name!r} in {path.parent}; later chapters load it")
    return True


def info(name: str) -> dict:
    """What was measured when ``name`` was trained (test accuracy, training time, ...), plus its
    recipe and cache key; for a result entry, the result. Trains or computes it first if needed."""
    state = _ensure(name)
    return {"name": name, "key": state["key"], "recipe": state["recipe"], **state["metrics"]}


def source(name: str) -> str:
    """The code that trains ``name``, for readers who want to see the recipe."""
    return inspect.getsource(_entry(name).train)


def pack_release(folder: str | Path) -> Path:
    """Copy every current, verified cached model and result into ``folder`` with a manifest of
    names, keys and SHA-256 digests (`vitbook.release`), to attach to a release of the
    repository (``make zoo-release``). Returns the manifest's path; entries not cached are
    listed as skipped."""
    import shutil

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    models, skipped = [], []
    for name in names():
        entry = REGISTRY[name]
        path = entry.path()
        if not path.exists():
            skipped.append(name)
            continue
        _load(entry, path)  # verified before it is published
        shutil.copyfile(path, folder / path.name)
        models.append({"name": name, "key": entry.key(), "file": path.name})
    out = release.write_manifest(folder, models)
    print(
        f"zoo release: {len(models)} files and {out.name} in {folder}; not cached, so skipped: "
        f"{', '.join(skipped) or 'none'}"
    )
    return out
