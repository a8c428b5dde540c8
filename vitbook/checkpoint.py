"""Checkpoints: written atomically, read with a clear error, and matched to their run.

A checkpoint is a dict saved with `torch.save`. `save_checkpoint` writes it through
`vitbook.files.atomic_write`, so a crash or a full disk never leaves half of one. The
fingerprints say which model and which training data a checkpoint belongs to, so that a run
never resumes another run's weights (`fingerprint_differences` lists what differs).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn as nn

from .files import STALE_TMP_SECONDS, atomic_write  # noqa: F401  (STALE_TMP_SECONDS: for tests)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full or read-only disk); the message names the path.
    The previous checkpoint, if any, is intact, and no temporary file is left behind."""


class ResumeMismatchError(ValueError):
    """A checkpoint belongs to another model or other training data than the run resuming it."""


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` with torch.save to a temporary file beside ``path``, then rename it into
    place: a reader sees the old checkpoint or the new one, never half of one. A failed write
    (a full disk) raises `CheckpointWriteError` naming the path and removes its temporary file;
    temporary files that a killed writer left beside ``path`` are removed on the next save."""
    path = Path(path)
    try:
        atomic_write(path, lambda f: torch.save(state, f))
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        raise CheckpointWriteError(
            getattr(e, "errno", None),
            f"could not write the checkpoint {path} ({type(e).__name__}: {str(e).strip()[:200]}); "
            f"is the disk full or read-only? The previous checkpoint at that path, if any, is "
            f"intact. Free some space or choose another path.",
        ) from e


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


def fingerprint_differences(saved: dict, now: dict) -> list[str]:
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


def resumable_state(checkpoint, recipe: dict, fingerprint: dict) -> dict:
    """The state saved in ``checkpoint``, if it belongs to the run that asks (the same recipe,
    model and training data); else a clear error that says what differs."""
    state = load_checkpoint(checkpoint)
    if state.get("recipe") != recipe:
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
    differ = fingerprint_differences(state["fingerprint"], fingerprint)
    if differ:
        raise ResumeMismatchError(
            f"the checkpoint {checkpoint} belongs to another run: " + "; ".join(differ)
            + ". Delete it or choose another checkpoint path to train this one from the "
            "start (resume=False overwrites it)."
        )  # fmt: skip
    return state
