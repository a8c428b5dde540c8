"""Checkpoints: written atomically, verified on every read, and matched to their run.

A checkpoint is a dict saved with `torch.save`. `save_checkpoint` writes it through
`vitbook.files.atomic_write`, so a crash or a full disk never leaves half of one, and wraps it
in an envelope that carries the SHA-256 of its bytes: ``{"format": "vitbook-checked/1",
"sha256": ..., "payload": <the torch.save bytes of the dict, as a uint8 tensor>}`` (still a
plain `torch.load` file). `load_checkpoint` checks the digest on every read, so a bit that flipped on disk after
the write raises `CorruptFileError` (naming the file, the digest expected and the one found,
and what to do) instead of handing back silently wrong weights. torch's own zip format stores
CRC-32s but does not check them on load, which is why a flipped bit in a weight used to load.

``keep_previous=True`` keeps the checkpoint being replaced beside the new one
(`previous_path`: ``run.pt`` -> ``run.prev.pt``), so a checkpoint damaged on disk does not lose
the run: `vitbook.train.fit` saves its checkpoints so. The fingerprints say which model and which
training data a checkpoint belongs to, so that a run never resumes another run's weights
(`fingerprint_differences` lists what differs).
"""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import torch
import torch.nn as nn

from .files import STALE_TMP_SECONDS, atomic_write  # noqa: F401  (STALE_TMP_SECONDS: for tests)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full or read-only disk); the message names the path.
    The previous checkpoint, if any, is intact, and no temporary file is left behind."""


class ResumeMismatchError(ValueError):
    """A checkpoint belongs to another model or other training data than the run resuming it."""


ENVELOPE = "vitbook-checked/1"


class CorruptFileError(RuntimeError):
    """A file vitbook wrote no longer matches the digest it was written with (a bit flipped on
    disk, a partial copy, an edit), or cannot be read at all. The message names the file, what
    was expected and found, and what to do."""


def previous_path(path: str | Path) -> Path:
    """Where the checkpoint that ``path`` replaced is kept: ``run.pt`` -> ``run.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(path: str | Path, state: dict, keep_previous: bool = False) -> None:
    """Write ``state`` with torch.save, wrapped with the SHA-256 of its bytes, to a temporary
    file beside ``path``, then rename it into place: a reader sees the old checkpoint or the new
    one, never half of one. With ``keep_previous``, the checkpoint at ``path`` (if it verifies)
    is first copied to `previous_path`, so the last good one survives a new one that is later
    damaged. A failed write (a full disk) raises `CheckpointWriteError` naming the path and
    removes its temporary file; temporary files that a killed writer left beside ``path`` are
    removed on the next save."""
    path = Path(path)
    try:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        payload = buffer.getvalue()
        digest = hashlib.sha256(payload).hexdigest()
        # the payload as a uint8 tensor: stored byte for byte (a pickled bytes object is not)
        stored = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        envelope = {"format": ENVELOPE, "sha256": digest, "payload": stored}
        if keep_previous and path.exists() and _verifies(path):
            atomic_write(previous_path(path), lambda f: _copy_into(path, f))
        atomic_write(path, lambda f: torch.save(envelope, f))
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        raise CheckpointWriteError(
            getattr(e, "errno", None),
            f"could not write the checkpoint {path} ({type(e).__name__}: {str(e).strip()[:200]}); "
            f"is the disk full or read-only? The previous checkpoint at that path, if any, is "
            f"intact. Free some space or choose another path.",
        ) from e


def _copy_into(src: Path, f) -> None:
    with open(src, "rb") as s:
        shutil.copyfileobj(s, f)


def _verifies(path: Path) -> bool:
    try:
        load_checkpoint(path)
        return True
    except CorruptFileError:
        return False


def load_checkpoint(path: str | Path, what_to_do: str | None = None) -> dict:
    """The dict saved at ``path`` by `save_checkpoint`, after checking the SHA-256 of its bytes.
    A file that cannot be read, was not written by `save_checkpoint`, or no longer matches its
    digest raises `CorruptFileError`; ``what_to_do`` replaces the default advice (delete it)."""
    path = Path(path)
    advice = what_to_do or "Delete it to start over"
    try:
        envelope = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CorruptFileError(
            f"cannot read the checkpoint {path} ({type(e).__name__}: {str(e).strip()[:300]}). "
            f"{advice}."
        ) from e
    if not (isinstance(envelope, dict) and envelope.get("format") == ENVELOPE):
        kind = type(envelope).__name__
        raise CorruptFileError(
            f"the checkpoint {path} carries no digest (expected a vitbook checkpoint, "
            f"{ENVELOPE!r}, found a {kind}"
            + (f" with keys {sorted(envelope)[:6]}" if isinstance(envelope, dict) else "")
            + "): it was not written by vitbook.checkpoint.save_checkpoint (or by an older "
            f"vitbook), so it cannot be verified. {advice}."
        )
    stored = envelope.get("payload")
    ok = torch.is_tensor(stored) and stored.dtype == torch.uint8
    payload = stored.numpy().tobytes() if ok else b""
    found = hashlib.sha256(payload).hexdigest() if ok else "no payload"
    if found != envelope.get("sha256"):
        raise CorruptFileError(
            f"the checkpoint {path} is damaged: its bytes have SHA-256 {found[:16]}..., but it "
            f"was written with {str(envelope.get('sha256'))[:16]}... (a bit flipped on disk, an "
            f"incomplete copy, or an edit). {advice}."
        )
    state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)
    if not isinstance(state, dict):
        raise CorruptFileError(
            f"cannot read the checkpoint {path}: expected a dict, found a "
            f"{type(state).__name__}. {advice}."
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
    state = load_checkpoint(checkpoint, _resume_advice(Path(checkpoint)))
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


def _resume_advice(path: Path) -> str:
    """What to do when the checkpoint a run would resume from fails its check."""
    prev = previous_path(path)
    if prev.exists() and _verifies(prev):
        step = load_checkpoint(prev).get("step", "?")
        return (
            f"The previous checkpoint, {prev} (step {step}), verifies: resume from it by moving "
            f"it into place (`mv {prev} {path}`), or delete both to start over"
        )
    return "No verified previous checkpoint is kept beside it: delete it to start over"
