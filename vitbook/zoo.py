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
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import inspect
import json
import pkgutil
import sys
import textwrap
import time
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from filelock import FileLock

from . import data
from .claims import seed as book_seed
from .model import ViT, ViTConfig, load_checked
from .train import evaluate, fit, load_checkpoint, save_checkpoint, seed_everything

PACKAGE = __name__.rpartition(".")[0]  # "vitbook"

PACKAGE_DIR = Path(__file__).parent


def cache_dir() -> Path:
    """``$VITBOOK_CACHE`` or ``~/.cache/vitbook/zoo`` (an empty value or a file is refused)."""
    return data.folder_from_env("VITBOOK_CACHE", "~/.cache/vitbook/zoo", ValueError)


# ---------------------------------------------------------------------------------------------
# What a zoo key hashes: the code an entry runs.

# The zoo's own cache functions: a training that asks the zoo for another model depends on that
# model's key (through ``Entry.depends``), not on how the cache works.
_KEY_STOP = frozenset(
    {"get", "info", "adopt", "is_cached", "names", "_entry", "_ensure", "_train_and_save", "_save"}
)
_SIMPLE = (int, float, str, bool, type(None))


# Plotting never changes a trained result: figures reached through History.plot are not followed.
_KEY_SKIP_MODULES = frozenset({f"{PACKAGE}.viz"})


def _ours(obj) -> bool:
    module = getattr(obj, "__module__", None) or ""
    if module in _KEY_SKIP_MODULES:
        return False
    return module == PACKAGE or module.startswith(PACKAGE + ".")


def _simple(value) -> bool:
    """A constant whose repr is its value: numbers, strings, and containers of them."""
    if isinstance(value, _SIMPLE):
        return True
    if isinstance(value, tuple | list | set | frozenset):
        return all(_simple(v) for v in value)
    if isinstance(value, dict):
        return all(_simple(k) and _simple(v) for k, v in value.items())
    return False


def _immutable(value) -> bool:
    if isinstance(value, tuple | frozenset):
        return all(_immutable(v) for v in value)
    return isinstance(value, _SIMPLE)


def _stable_repr(value) -> str:
    if isinstance(value, set | frozenset):
        return "{" + ", ".join(sorted(_stable_repr(v) for v in value)) + "}"
    return repr(value)


def _package_modules() -> set[str]:
    package = sys.modules[PACKAGE]
    return {m.name for m in pkgutil.iter_modules(package.__path__)}


def _names(code: types.CodeType) -> set[str]:
    """Every global or attribute name a code object and the code nested in it mention."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def _references(fn: types.FunctionType, modules: set[str]) -> tuple[list, list[str]]:
    """What ``fn`` can reach: the objects its names resolve to (in its globals, or as attributes
    of the vitbook modules it names or imports), its closure and its defaults; and the simple
    constants among them (UPPER_CASE module constants, closure and default values)."""
    names = _names(fn.__code__)
    found, constants = [], []
    ours_modules = []
    in_zoo = fn.__globals__.get("__name__") == __name__
    for name in sorted(names):
        value = fn.__globals__.get(name)
        if isinstance(value, types.ModuleType):
            if value.__name__.startswith(PACKAGE + ".") or value.__name__ == PACKAGE:
                ours_modules.append(value)
        elif name in fn.__globals__:
            if not (in_zoo and name in _KEY_STOP):
                found.append((name, value))
        elif name in modules:  # a local ``from .ssl import MAE`` names the module "ssl"
            ours_modules.append(importlib.import_module(f"{PACKAGE}.{name}"))
    for module in ours_modules:
        if module.__name__ in _KEY_SKIP_MODULES:
            continue
        for name in sorted(names):
            if module.__name__ == __name__ and name in _KEY_STOP:
                continue
            if name in vars(module) and not isinstance(vars(module)[name], types.ModuleType):
                found.append((f"{module.__name__}.{name}", vars(module)[name]))
    objects = []
    for name, value in found:
        if _simple(value):
            short = name.rpartition(".")[2]
            if short.isupper() and not short.startswith("_"):
                constants.append(f"{name} = {_stable_repr(value)}")
        else:
            objects.append(value)
    extra = [c.cell_contents for c in (fn.__closure__ or ()) if _cell_full(c)]
    extra += list(fn.__defaults__ or ()) + list((fn.__kwdefaults__ or {}).values())
    for value in extra:
        if _simple(value):  # a list or dict in a closure is state (it changes as code runs)
            if _immutable(value):
                constants.append(f"{fn.__qualname__} closure/default {_stable_repr(value)}")
        else:
            objects.append(value)
    return objects, constants


def _cell_full(cell) -> bool:
    try:
        _ = cell.cell_contents
    except ValueError:
        return False
    return True


_SOURCES: dict[int, tuple[object, str | None]] = {}  # id -> (the object, kept alive; its source)


def _source(obj) -> str | None:
    """The source of the code object that is loaded (cached per object: reading a class's source
    parses its whole module)."""
    hit = _SOURCES.get(id(obj))
    if hit is not None and hit[0] is obj:
        return hit[1]
    try:
        source = _without_comments(inspect.getsource(obj))
    except (OSError, TypeError):
        source = None
    _SOURCES[id(obj)] = (obj, source)
    return source


def _without_comments(source: str) -> str:
    """The code of ``source`` without its comments, docstrings and layout (its syntax tree),
    where it parses on its own; a lambda's line that does not is kept as written."""
    try:
        tree = ast.parse(textwrap.dedent(source))
    except SyntaxError:
        return source
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def code_sources(*roots) -> list[str]:
    """The source of every vitbook function and class that ``roots`` (functions) reach, followed
    transitively through the names in their code (globals, module attributes, local imports),
    their closures and their default arguments, plus the simple constants met on the way;
    sorted, so that the order of definitions and the lines around them do not matter. The roots
    themselves are included wherever they are defined; beyond them only vitbook code is
    followed (torch and other libraries are represented by their version)."""
    modules = _package_modules()
    seen: set[int] = set()
    out: set[str] = set()
    stack = [(obj, True) for obj in roots]
    while stack:
        obj, is_root = stack.pop()
        if isinstance(obj, functools.partial):
            stack += [(v, is_root) for v in (obj.func, *obj.args, *obj.keywords.values())]
            continue
        if isinstance(obj, staticmethod | classmethod):
            obj = obj.__func__
        if isinstance(obj, property):
            stack += [(f, False) for f in (obj.fget, obj.fset, obj.fdel) if f is not None]
            continue
        if inspect.ismethod(obj):
            obj = obj.__func__
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        if inspect.isfunction(obj):
            inner = inspect.unwrap(obj)  # torch.no_grad() and other decorators
            if inner is not obj:
                stack.append((inner, is_root))
                continue
            if not (is_root or _ours(obj)):
                continue
            if obj.__module__ == __name__ and obj.__name__ in _KEY_STOP:
                continue
            source = _source(obj)
            if source is None:  # generated code (a dataclass's __init__): its class is hashed
                continue
            out.add(f"{obj.__module__}: {source}")
            objects, constants = _references(obj, modules)
            out.update(f"{obj.__module__}: {c}" for c in constants)
            stack += [(o, False) for o in objects]
        elif inspect.isclass(obj):
            if not _ours(obj):
                continue
            out.add(f"{obj.__module__}: {_source(obj)}")
            stack += [(base, False) for base in obj.__mro__[1:]]
            stack += [(v, False) for v in vars(obj).values() if not _simple(v)]
        elif not isinstance(obj, types.ModuleType) and _ours(type(obj)):
            stack.append((type(obj), False))  # an instance of a vitbook class
    return sorted(out)


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
        for source in code_sources(*roots):
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
    model = entry.build() if entry.build is not None else None
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
    """Train (or compute) ``name`` if it is not cached, then return its saved state."""
    entry = _entry(name)
    path = entry.path()
    if retrain or not path.exists():  # a cached file is whole (written atomically): read it as is
        lock = _lock(path)
        try:
            if retrain and path.exists():
                path.unlink()
            if not path.exists():
                return _train_and_save(entry, path)
        finally:
            lock.release()
    try:
        return load_checkpoint(path)
    except RuntimeError as e:
        raise RuntimeError(f"{e}; or call zoo.get({name!r}, retrain=True)") from e


def get(name: str, device: str | torch.device = "cpu", retrain: bool = False) -> nn.Module:
    """The trained model ``name`` in eval mode on ``device`` (CPU unless asked), training and
    caching it on first use."""
    entry = _entry(name)
    if entry.build is None:
        raise ValueError(f"{name!r} is a cached result, not a model: use zoo.info({name!r})")
    state = _ensure(name, retrain)
    model = entry.build()
    load_checked(model, state["state_dict"], f"cached zoo model {entry.path().name}")
    return model.to(device).eval()


def adopt(name: str, model: nn.Module, recipe: dict, metrics: dict | None = None) -> bool:
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
    given = {"config": model.cfg.to_dict(), **recipe}
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


# ---------------------------------------------------------------------------------------------
# The models


def mnist_config(**overrides) -> ViTConfig:
    """The book's MNIST ViT: 28x28 digits in 7x7 patches (a 4x4 grid), width 64, 3 blocks of
    4 heads, MLP 128, classified from the class token; about 105k parameters. Explicit attention,
    since for 17 tokens it is faster on a CPU than the fused kernel (`python -m vitbook.bench`)."""
    fields = dict(
        image_size=28, patch_size=7, in_channels=1, num_classes=10,
        dim=64, depth=3, heads=4, mlp_dim=128, pool="cls", fused_attn=False,
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
    seed=SEED,
)


def train_mnist_classifier(model: nn.Module, recipe: dict, train_set=None) -> dict:
    """Train on MNIST's 60,000 training digits with ``recipe``; report test accuracy."""
    seed_everything(recipe.get("seed", SEED))
    train_set = train_set if train_set is not None else data.mnist("train")
    test_set = data.mnist("test")
    history = fit(model, train_set, test_set, **recipe)
    return {
        "test_accuracy": evaluate(model, test_set)["accuracy"],
        "epochs": history.final.get("epoch"),
    }


def _build_seeded(
    cfg_fn: Callable[[], ViTConfig], seed: int | None = None
) -> Callable[[], nn.Module]:
    def build():
        seed_everything(SEED if seed is None else seed)
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


for _pos in ("sincos", "none"):
    register(
        Entry(
            name=f"mnist-vit-{'nopos' if _pos == 'none' else _pos}",
            description=f"the chapter-4 ViT with {'no' if _pos == 'none' else 'a 2D sin-cos'} position embedding, same recipe",
            build=_build_seeded(lambda _pos=_pos: mnist_config(pos_embed=_pos)),
            train=lambda m: train_mnist_classifier(m, MNIST_RECIPE),
            recipe={"config": mnist_config(pos_embed=_pos).to_dict(), **MNIST_RECIPE},
            minutes=2,
        )
    )


# ---------------------------------------------------------------------------------------------
# Self-supervision (chapters 10 and 11): encoders with 4x4 patches, a 7x7 grid, so that masking
# 75% still leaves a dozen patches and I-JEPA's blocks have room.


def ssl_config(**overrides) -> ViTConfig:
    """The encoder the self-supervision chapters compare: the chapter-4 architecture with 4x4
    patches (49 tokens) and mean-pooled patch tokens as the representation."""
    return mnist_config(**{"patch_size": 4, "pool": "mean", **overrides})


SUPERVISED_P4_RECIPE = dict(
    epochs=2,
    batch_size=128,
    lr=3e-3,
    warmup_epochs=0.3,
    weight_decay=0.05,
    label_smoothing=0.1,
    augment=True,
    seed=SEED,
)
MAE_RECIPE = dict(
    epochs=4,
    batch_size=128,
    lr=1.5e-3,
    warmup_epochs=0.5,
    weight_decay=0.05,
    label_smoothing=0.0,
    augment=False,
    seed=SEED,
    grad_norm_every=0,
)
MAE_ARCH = dict(
    decoder_dim=64,
    decoder_depth=1,
    decoder_heads=4,
    mask_ratio=0.75,
    norm_pix_loss=True,
    norm_eps=1e-2,
)
IJEPA_RECIPE = dict(MAE_RECIPE, epochs=3)
IJEPA_ARCH = dict(predictor_dim=32, predictor_depth=2, num_targets=4, ema=(0.99, 1.0))
N_SNAPSHOT = 8  # test digits whose reconstructions are kept after every MAE epoch


def build_mae():
    from .ssl import MAE

    seed_everything(SEED)
    return MAE(ViT(ssl_config()), **MAE_ARCH)


def train_mae(mae) -> dict:
    from .ssl import mae_loss_fn

    fixed = data.mnist("test").tensors()[0][:N_SNAPSHOT]
    snapshots = []

    def snapshot(record):
        torch.manual_seed(1234)  # the same masks at every epoch, so the pictures compare
        snapshots.append(torch.stack(mae.reconstruct(fixed)))  # (3, n, 1, 28, 28)

    history = fit(
        mae, data.mnist("train"), None, loss_fn=mae_loss_fn, on_epoch_end=snapshot, **MAE_RECIPE
    )
    return {
        "step_loss": history.step_loss,
        "steps_per_epoch": history.steps_per_epoch,
        "snapshots": torch.stack(snapshots),
    }


def build_ijepa():
    from .ssl import IJEPA

    seed_everything(SEED)
    return IJEPA(ViT(ssl_config()), **IJEPA_ARCH)


def train_ijepa(model) -> dict:
    from .ssl import collapse_stats, ijepa_loss_fn

    probe = data.mnist("test").tensors()[0][:512]
    stats = {
        "step": [],
        "context_std": [],
        "target_std": [],
        "encoder_spread": [],
        "encoder_rank": [],
    }

    def on_step_end(step, total):
        model.update_target(step / total)
        if step % 20 == 0 or step == total:
            stats["step"].append(step)
            stats["context_std"].append(model.last_stats["context_std"])
            stats["target_std"].append(model.last_stats["target_std"])
            spread = collapse_stats(model.encoder, probe)
            stats["encoder_spread"].append(spread["spread"])
            stats["encoder_rank"].append(spread["rank"])

    history = fit(
        model,
        data.mnist("train"),
        None,
        loss_fn=ijepa_loss_fn,
        on_step_end=on_step_end,
        **IJEPA_RECIPE,
    )
    return {
        "step_loss": history.step_loss,
        "steps_per_epoch": history.steps_per_epoch,
        "std": stats,
    }


register(
    Entry(
        name="mnist-vit-p4",
        description="supervised reference for chapters 10-11: 4x4 patches, all labels",
        build=_build_seeded(lambda: ssl_config()),
        train=lambda m: train_mnist_classifier(m, SUPERVISED_P4_RECIPE),
        recipe={"config": ssl_config().to_dict(), **SUPERVISED_P4_RECIPE},
        minutes=2,
    )
)
register(
    Entry(
        name="mnist-mae",
        description="MAE pretraining on MNIST's 60,000 training images, no labels",
        build=build_mae,
        train=train_mae,
        recipe={"config": ssl_config().to_dict(), **MAE_RECIPE, **MAE_ARCH},
        modules=("model", "train", "data", "transforms", "ssl"),
        minutes=1.5,
    )
)
register(
    Entry(
        name="mnist-ijepa",
        description="I-JEPA pretraining on MNIST's 60,000 training images, no labels",
        build=build_ijepa,
        train=train_ijepa,
        recipe={
            "config": ssl_config().to_dict(),
            **IJEPA_RECIPE,
            **{k: list(v) if isinstance(v, tuple) else v for k, v in IJEPA_ARCH.items()},
        },
        modules=("model", "train", "data", "transforms", "ssl"),
        minutes=2,
    )
)


def evaluate_ssl_encoders(_=None) -> dict:
    """The chapters' table: the same protocol (`vitbook.transfer.evaluate_encoder`) for a
    random-init encoder, the supervised reference, MAE's and I-JEPA's encoders."""
    from .transfer import evaluate_encoder

    seed_everything(SEED)
    encoders = {
        "random init": ViT(ssl_config()),
        "supervised (all labels)": get("mnist-vit-p4"),
        "MAE": get("mnist-mae").encoder,
        "I-JEPA": get("mnist-ijepa").encoder,
    }
    # The supervised encoder is a reference for the probe; fine-tuning it again would only
    # cost time (it has seen every label already).
    return {
        "table": {
            name: evaluate_encoder(enc, seed=SEED, fine_tune=not name.startswith("supervised"))
            for name, enc in encoders.items()
        }
    }


register(
    Entry(
        name="ssl-eval",
        description="linear probe and 1%/10%-label fine-tuning of four encoders",
        build=None,
        train=evaluate_ssl_encoders,
        recipe={
            "protocol": "linear probe, then LP-FT (not for the supervised reference), on 1% and 10% of the labels",
            "fractions": [0.01, 0.1],
            "seed": SEED,
        },
        modules=("model", "train", "data", "transforms", "ssl", "transfer", "metrics"),
        depends=("mnist-vit-p4", "mnist-mae", "mnist-ijepa"),
        minutes=3,
    )
)


# ---------------------------------------------------------------------------------------------
# Transfer (chapters 7-9): a ViT pretrained on another task, and its fine-tuned descendant.

FASHION_RECIPE = dict(MNIST_RECIPE, epochs=5)
OPEN_SET_RECIPE = dict(epochs=2, seed=SEED)


def train_fashion(model) -> dict:
    seed_everything(SEED)
    test_set = data.fashion_mnist("test")
    fit(model, data.fashion_mnist("train"), test_set, **FASHION_RECIPE)
    return {"test_accuracy": evaluate(model, test_set)["accuracy"]}


def build_open_set():
    seed_everything(SEED)
    return ViT(mnist_config(num_classes=3))


def train_open_set(model) -> dict:
    from .transfer import finetune, open_set

    sets = open_set()
    torch.manual_seed(SEED)
    tuned, _ = finetune(get("fashion-vit"), sets["train"], num_classes=3, **OPEN_SET_RECIPE)
    model.load_state_dict(tuned.state_dict())
    return {"test_accuracy": evaluate(model, sets["test"])["accuracy"]}


register(
    Entry(
        name="fashion-vit",
        description="the chapter-4 ViT trained on Fashion-MNIST: the offline 'pretrained' model",
        build=_build_seeded(mnist_config),
        train=train_fashion,
        recipe={"config": mnist_config().to_dict(), **FASHION_RECIPE},
        minutes=1.5,
    )
)
register(
    Entry(
        name="digits-3-8-unknown",
        description="fashion-vit fine-tuned to 3, 8 and 'unknown' (chapter 8)",
        build=build_open_set,
        train=train_open_set,
        recipe={"config": mnist_config(num_classes=3).to_dict(), **OPEN_SET_RECIPE},
        modules=("model", "train", "data", "transforms", "transfer", "interop"),
        depends=("fashion-vit",),
        minutes=0.5,
    )
)


# ---------------------------------------------------------------------------------------------
# Distillation (chapter 12): a CNN teacher, and small ViT students trained several ways.

CNN_RECIPE = dict(MNIST_RECIPE, epochs=2, lr=2e-3, label_smoothing=0.0)
STUDENT_LABELS = 500  # labelled training digits per class the students learn from
STUDENT_STEPS = 600
# No label smoothing for any student: the distillation losses use plain cross-entropy on the
# labels, so the plain student does too, and only the target differs between them.
STUDENT_RECIPE = dict(
    MNIST_RECIPE,
    epochs=round(STUDENT_STEPS / (10 * STUDENT_LABELS // 128)),
    warmup_epochs=1.0,
    label_smoothing=0.0,
)


def student_config(**overrides) -> ViTConfig:
    """The student: three quarters of the width and two thirds of the depth of the chapter-4 ViT
    (about 40% of its parameters)."""
    return mnist_config(**{"dim": 48, "depth": 2, "heads": 3, "mlp_dim": 96, **overrides})


def student_train_set():
    """The 5,000 labelled digits the students see (the teachers were trained on all 60,000)."""
    return data.few_per_class(data.mnist("train"), STUDENT_LABELS, seed=SEED)


def build_cnn():
    from .distill import SmallCNN

    seed_everything(SEED)
    return SmallCNN()


def train_cnn(model) -> dict:
    test_set = data.mnist("test")
    fit(model, data.mnist("train"), test_set, **CNN_RECIPE)
    return {"test_accuracy": evaluate(model, test_set)["accuracy"]}


# name -> (teacher, kind of distillation, with a distillation token)
STUDENTS = {
    "student-plain": (None, "none", False),
    "student-soft": ("mnist-cnn", "soft", False),
    "student-hard": ("mnist-cnn", "hard", False),
    "student-soft-token": ("mnist-cnn", "soft", True),
    "student-hard-token": ("mnist-cnn", "hard", True),
    "student-hard-token-vit": ("mnist-vit", "hard", True),
}


def _student_builder(token: bool):
    def build():
        from .distill import DistilledViT

        seed_everything(SEED)
        return DistilledViT(student_config()) if token else ViT(student_config())

    return build


def _student_trainer(teacher_name, kind):
    def train_student(model) -> dict:
        from .distill import student_loss_fn

        teacher = get(teacher_name) if teacher_name else None
        loss_fn = student_loss_fn(teacher, kind) if teacher is not None else None
        test_set = data.mnist("test")
        fit(model, student_train_set(), test_set, loss_fn=loss_fn, **STUDENT_RECIPE)
        return {"test_accuracy": evaluate(model, test_set)["accuracy"]}

    return train_student


register(
    Entry(
        name="mnist-cnn",
        description="a small CNN teacher for chapter 12",
        build=build_cnn,
        train=train_cnn,
        recipe=CNN_RECIPE,
        modules=("model", "train", "data", "transforms", "distill"),
        minutes=1.5,
    )
)
for _name, (_teacher, _kind, _token) in STUDENTS.items():
    register(
        Entry(
            name=_name,
            description=f"a small ViT student, {_kind} distillation{' from ' + _teacher if _teacher else ''}{', distillation token' if _token else ''}",
            build=_student_builder(_token),
            train=_student_trainer(_teacher, _kind),
            recipe={
                "config": student_config().to_dict(),
                "teacher": _teacher,
                "kind": _kind,
                "token": _token,
                "labels_per_class": STUDENT_LABELS,
                **STUDENT_RECIPE,
            },
            modules=("model", "train", "data", "transforms", "distill"),
            depends=(_teacher,) if _teacher else (),
            minutes=0.7,
        )
    )


# ---------------------------------------------------------------------------------------------
# Synthetic data (chapter 13): the same ViT trained on synthetic, real, and mixed digits.

SYNTH_RECIPE = dict(MNIST_RECIPE, epochs=4)
SOURCES = {
    "synthetic": "60,000 synthetic digits",
    "real": "60,000 MNIST digits",
    "mixed": "30,000 MNIST + 30,000 synthetic",
}


def training_source(name: str):
    from . import synthetic

    if name == "synthetic":
        return synthetic.digits(60000, seed=SEED)
    real = data.mnist("train")
    if name == "real":
        return real
    half = real.subset(
        torch.randperm(len(real), generator=torch.Generator().manual_seed(SEED))[:30000]
    )
    return synthetic.mix(half, synthetic.digits(30000, seed=SEED))


def _source_trainer(source):
    def train_on_source(model) -> dict:
        return train_mnist_classifier(model, SYNTH_RECIPE, train_set=training_source(source))

    return train_on_source


for _src, _desc in SOURCES.items():
    register(
        Entry(
            name=f"vit-{_src}-digits",
            description=f"the chapter-4 ViT trained on {_desc}",
            build=_build_seeded(mnist_config),
            train=_source_trainer(_src),
            recipe={"config": mnist_config().to_dict(), "source": _src, **SYNTH_RECIPE},
            modules=("model", "train", "data", "transforms", "synthetic"),
            minutes=1,
        )
    )


FEW_REAL = (10, 100)  # real labels per class
FEW_STEPS = 600


def few_real_labels(_=None) -> dict:
    """Few real labels alone, plus 20,000 synthetic digits, and plus the synthetic digits with the
    real ones repeated to make half of every epoch; the same number of steps for each."""
    from . import synthetic

    real, test_set = data.mnist("train"), data.mnist("test")
    synth = synthetic.digits(20000, seed=SEED + 1)
    out = {}
    for n in FEW_REAL:
        few = data.few_per_class(real, n, seed=SEED)
        repeats = len(synth) // len(few)  # the real digits, repeated to match the synthetic ones
        balanced = synthetic.mix(
            data.ImageDataset(few.images.repeat(repeats, 1, 1, 1), few.labels.repeat(repeats)),
            synth,
        )
        variants = (
            ("real only", few),
            ("real + synthetic", synthetic.mix(few, synth)),
            ("real + synthetic, balanced", balanced),
        )
        for name, train_set in variants:
            seed_everything(SEED)
            model = ViT(mnist_config())
            batch = 64  # a batch no larger than the smallest training set (10 per class)
            epochs = FEW_STEPS / (len(train_set) // batch)
            fit(
                model,
                train_set,
                None,
                progress=False,
                **dict(MNIST_RECIPE, batch_size=batch, epochs=epochs, warmup_epochs=epochs / 10),
            )
            out[(n, name)] = evaluate(model, test_set)["accuracy"]
    return {"table": {f"{n}|{name}": acc for (n, name), acc in out.items()}}


register(
    Entry(
        name="synthetic-few-labels",
        description="few real labels, with and without synthetic digits",
        build=None,
        train=few_real_labels,
        recipe={
            "real_per_class": list(FEW_REAL),
            "steps": FEW_STEPS,
            "synthetic": 20000,
            **MNIST_RECIPE,
        },
        modules=("model", "train", "data", "transforms", "synthetic"),
        minutes=1.5,
    )
)
