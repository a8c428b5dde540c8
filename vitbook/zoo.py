"""Trained models that chapters share, trained once and cached.

``zoo.get("mnist-vit")`` returns a trained model. The first call trains it and saves it under
``$VITBOOK_CACHE`` (`vitbook.settings.cache_dir`); later calls load it in a second. Chapters run
alone, in any order, in a fresh kernel: a chapter that needs "the trained MNIST ViT" asks the
zoo instead of depending on chapter 4 having run.

A zoo model is declared once, as a `Model`: its architecture and configuration, its `Recipe`
(the seed included), its training data and augmentation, the procedure that trains it and the
models it starts from. Everything else derives from that declaration:

* `Model.build`: the untrained network, initialised under the recipe's seed with torch's global
  random state left as it was (so loading a model, or asking for its untrained control with
  `untrained`, changes nothing for the code around it);
* `Model.key`: the declaration's values and the source of every vitbook function and class its
  architecture, data and training reach (`vitbook.codehash`), plus the keys of the models it
  starts from: change any of them and the model is retrained instead of loaded stale;
* the training: ``model.train(network, model)``, which reads its recipe, data and options from
  the declaration it is given.

A cached computation that is not a model (a table of probe accuracies) is a `Result`, read with
`result`. Every cached file carries the SHA-256 of its bytes (`vitbook.checkpoint`): a damaged
one is an error that says what to do, never retrained over silently. A file lock makes two
processes that ask at once train it once. Where no file is cached, the published release is
tried before training (`vitbook.release`: same key, digest verified). Models train on the best
device there is (`vitbook.loops.pick_device`) and are cached on the CPU.

This module is the cache alone; the book's models are declared in `vitbook.recipes`
(``import vitbook.recipes``), anyone's with `register`.
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
from typing import Any

import torch
import torch.nn as nn
from filelock import FileLock

from . import release, settings
from .checkpoint import load_checkpoint, save_checkpoint
from .codehash import code_sources
from .loops import as_device, pick_device
from .model import load_checked
from .runs import Recipe


def cache_dir() -> Path:
    """``$VITBOOK_CACHE`` or ``~/.cache/vitbook/zoo`` (`vitbook.settings.cache_dir`)."""
    return settings.cache_dir()


# The zoo's own cache functions: a training that asks the zoo for another model depends on that
# model's key (through ``depends``), not on how the cache works.
_KEY_STOP = {
    __name__: frozenset(
        {"get", "info", "result", "untrained", "is_cached", "names", "_entry", "_ensure",
         "_train_and_save", "_load", "_say", "_print"}
    )
}  # fmt: skip
# Bump to retrain every model at once (the key already follows every helper the training runs).
ZOO_VERSION = 2


def _json(value) -> str:
    return json.dumps(value, sort_keys=True, default=repr)


@dataclass
class Model:
    """A zoo model, declared once.

    ``architecture(config, **arch)`` builds the untrained network (``architecture(**arch)``
    when ``config`` is None); ``train(network, model)`` trains it in place and returns what was
    measured, reading ``model.recipe``, ``model.data()``, ``model.augmentation`` and
    ``model.options``; ``data()`` returns the training data and the evaluation data (or None);
    ``depends`` names the zoo models the training starts from."""

    name: str
    description: str
    architecture: Callable[..., nn.Module]
    config: Any
    recipe: Recipe
    train: Callable[[nn.Module, Model], dict]
    data: Callable[[], tuple] | None = None
    augmentation: Any = None
    arch: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    depends: tuple[str, ...] = ()
    minutes: float = 2.0  # rough cold training time on 2 CPU cores, for the message

    def build(self) -> nn.Module:
        """The untrained network, initialised under the recipe's seed, exactly as training
        starts from it; torch's global random state is left as it was."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.recipe.seed)
            if self.config is None:
                return self.architecture(**self.arch)
            return self.architecture(self.config, **self.arch)

    def declaration(self) -> dict:
        """The declaration's values, as the key records them."""
        cfg = self.config.to_dict() if hasattr(self.config, "to_dict") else self.config
        return {
            "architecture": getattr(self.architecture, "__qualname__", repr(self.architecture)),
            "config": cfg,
            "arch": self.arch,
            "recipe": self.recipe.to_dict(),
            "data": getattr(self.data, "__qualname__", None),
            "augmentation": repr(self.augmentation),
            "options": self.options,
        }

    def key(self) -> str:
        roots = [self.architecture, self.train]
        roots += [r for r in (self.data, type(self.augmentation)) if callable(r)]
        return _key(_json(self.declaration()), roots, self.depends)

    def path(self) -> Path:
        return cache_dir() / f"{self.name}-{self.key()}.pt"


@dataclass
class Result:
    """A cached computation that is not a model: ``compute(result)`` returns a dict (a table of
    accuracies), read with `result`. ``options`` and ``seed`` fix it, with the code it runs."""

    name: str
    description: str
    compute: Callable[[Result], dict]
    seed: int
    options: dict = field(default_factory=dict)
    depends: tuple[str, ...] = ()
    minutes: float = 2.0

    def key(self) -> str:
        return _key(
            _json({"seed": self.seed, "options": self.options}), [self.compute], self.depends
        )

    def path(self) -> Path:
        return cache_dir() / f"{self.name}-{self.key()}.pt"


def _key(values: str, roots: list, depends: tuple[str, ...]) -> str:
    h = hashlib.sha256(values.encode())
    for source in code_sources(*roots, stop=_KEY_STOP):
        h.update(source.encode())
    h.update(f"zoo {ZOO_VERSION} torch {torch.__version__}".encode())
    for dep in depends:
        h.update(_entry(dep).key().encode())
    return h.hexdigest()[:16]


REGISTRY: dict[str, Model | Result] = {}


def register(entry: Model | Result) -> Model | Result:
    REGISTRY[entry.name] = entry
    return entry


def names() -> list[str]:
    """The names of the zoo's models and results."""
    return sorted(REGISTRY)


def _entry(name: str) -> Model | Result:
    if name not in REGISTRY:
        if not REGISTRY:
            raise KeyError(
                f"no zoo model named {name!r}: the zoo is empty. The book's models are "
                f"registered by `import vitbook.recipes`; register your own with zoo.register"
            )
        raise KeyError(f"no zoo model named {name!r}; the zoo has: {', '.join(names())}")
    return REGISTRY[name]


def _model(name: str) -> Model:
    entry = _entry(name)
    if not isinstance(entry, Model):
        raise ValueError(f"{name!r} is a cached result, not a model: use zoo.result({name!r})")
    return entry


def entry(name: str) -> Model | Result:
    """The declaration of ``name``: read it (``zoo.entry(name).description``), or
    ``dataclasses.replace`` it and ``register`` the copy under a new name to train a variant."""
    return _entry(name)


def is_cached(name: str) -> bool:
    return _entry(name).path().exists()


def untrained(name: str) -> nn.Module:
    """The zoo model ``name`` before training, in eval mode: the network its training started
    from, bit for bit (the negative control of a chapter's findings)."""
    return _model(name).build().eval()


def _train_and_save(entry: Model | Result, path: Path) -> dict:
    what = "training" if isinstance(entry, Model) else "computing"
    _print(
        f"zoo: {what} {entry.name!r}, {entry.description}: first use, about "
        f"{entry.minutes:g} min on 2 CPU cores, then cached ($VITBOOK_CACHE) for next time."
    )
    for dep in entry.depends:  # train what this starts from first, each under its own lock
        _ensure(dep)
    start = time.perf_counter()
    if isinstance(entry, Model):
        network = entry.build().to(pick_device())
        metrics = entry.train(network, entry)
        state = network.cpu().eval().state_dict()
        declared = entry.declaration()
    else:
        metrics, state, declared = entry.compute(entry), None, {"options": entry.options}
    metrics["train_seconds"] = round(time.perf_counter() - start, 1)
    saved = {"state_dict": state, "metrics": metrics, "declaration": declared, "key": entry.key()}
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
        _print(f"zoo: {name!r} {where}")


def _print(message: str) -> None:
    """A message in lines that fit the book's column (a printout must not wrap on the page)."""
    from .show import wrapped

    print(wrapped(message))


def _load(entry: Model | Result, path: Path) -> dict:
    """The cached state of ``entry``, its digest checked: a damaged file is an error that says
    what to do, never silently retrained over or used."""
    state = load_checkpoint(
        path,
        f"Nothing was overwritten. Delete the file and the zoo trains {entry.name!r} again on "
        f"next use, or call zoo.get({entry.name!r}, retrain=True) to retrain it now",
    )
    metrics = state.get("metrics", {})
    took = f" (trained in {metrics['train_seconds']:g} s)" if "train_seconds" in metrics else ""
    _say(entry.name, f"loaded from the cache{took}")
    return state


def get(name: str, device: str | torch.device = "cpu", retrain: bool = False) -> nn.Module:
    """The trained model ``name`` in eval mode on ``device`` (CPU unless asked), training and
    caching it on first use. Loading leaves torch's global random state as it was."""
    entry = _model(name)
    state = _ensure(name, retrain)
    model = entry.build()
    load_checked(model, state["state_dict"], f"cached zoo model {entry.path().name}")
    return model.to(as_device(device)).eval()


def info(name: str) -> dict:
    """What was measured when the model ``name`` was trained (test accuracy, training time, its
    training history, ...), plus its declaration and cache key. Trains it first if needed."""
    _model(name)
    state = _ensure(name)
    return {
        "name": name,
        "key": state["key"],
        "declaration": state["declaration"],
        **state["metrics"],
    }


def result(name: str) -> dict:
    """The cached computation ``name`` (a `Result`), computing it first if needed."""
    entry = _entry(name)
    if not isinstance(entry, Result):
        raise ValueError(f"{name!r} is a model, not a result: use zoo.get or zoo.info({name!r})")
    state = _ensure(name)
    return {k: v for k, v in state["metrics"].items() if k != "train_seconds"}


def source(name: str) -> str:
    """The code that trains ``name``, for readers who want to see the recipe."""
    entry = _entry(name)
    return inspect.getsource(entry.train if isinstance(entry, Model) else entry.compute)


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
