"""Published zoo models: fetch a trained model from the repository's release instead of
training it, where the network answers.

A release is a folder of files on a web server (a GitHub release's assets): ``manifest.json``
and the cached zoo files it lists. The manifest records, for every file, the zoo model's name,
its exact key and the SHA-256 of the file's bytes::

    {"format": "vitbook-zoo-release/1", "models": [
        {"name": "mnist-vit", "key": "cf62c4fee8056359", "file": "mnist-vit-cf62....pt",
         "sha256": "...", "bytes": 431012}, ...]}

`fetch` downloads a file only when the manifest lists the name with the same key as the zoo's
(the same recipe, code, seed and torch version), and keeps it only when its digest matches;
anything else (no network, no such release, another key, a damaged download) returns None and
the zoo trains as before. ``make zoo-release`` writes a release from the local cache
(`vitbook.zoo.pack_release`).

Where: ``$VITBOOK_ZOO_RELEASE`` (a base address, such as ``http://127.0.0.1:8000/``), else the
repository's release `DEFAULT_TAG` below. ``VITBOOK_ZOO_RELEASE=off`` turns it off: CI and
``make claims`` do, so that they prove the book from nothing. The repository address is a copy
of `_config.yml`'s ``repository.url`` (the installed package cannot read that file);
``make sync`` rewrites it and a test keeps the two equal.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .files import atomic_write

REPOSITORY = "https://github.com/vitbook/vitbook"
DEFAULT_TAG = "zoo-v1"
FORMAT = "vitbook-zoo-release/1"
TIMEOUT = 10.0  # seconds for one request: a network that does not answer costs this once
OFF = ("off", "0", "no", "false", "none")

_MANIFESTS: dict[str, dict | None] = {}  # one manifest request per address and process


def release_url() -> str | None:
    """The base address of the published models, or None when turned off."""
    value = os.environ.get("VITBOOK_ZOO_RELEASE")
    if value is not None:
        value = value.strip()
        if value.lower() in OFF or not value:
            return None
        return value if value.endswith("/") else value + "/"
    return f"{REPOSITORY}/releases/download/{DEFAULT_TAG}/"


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=TIMEOUT) as r:  # noqa: S310 (http(s) only, below)
        return r.read()


def manifest(base: str) -> dict | None:
    """The release's manifest (fetched once per process), or None when it cannot be had."""
    if base not in _MANIFESTS:
        try:
            if urllib.parse.urlparse(base).scheme not in ("http", "https"):
                raise ValueError(f"not an http(s) address: {base}")
            got = json.loads(_get(urllib.parse.urljoin(base, "manifest.json")))
            _MANIFESTS[base] = got if got.get("format") == FORMAT else None
        except (OSError, ValueError, urllib.error.URLError):
            _MANIFESTS[base] = None
    return _MANIFESTS[base]


def fetch(name: str, key: str, dest: Path) -> tuple[bool, str]:
    """Download the published file of zoo model ``name`` with key ``key`` to ``dest``, verified
    against the manifest's SHA-256. Returns (True, where it came from) or (False, why not)."""
    base = release_url()
    if base is None:
        return False, "published models are turned off ($VITBOOK_ZOO_RELEASE=off)"
    found = manifest(base)
    if found is None:
        return False, f"no release answered at {base}"
    listed = [m for m in found.get("models", []) if m.get("name") == name]
    match = next((m for m in listed if m.get("key") == key), None)
    if match is None:
        keys = ", ".join(m.get("key", "?") for m in listed) or "none"
        return False, f"the release at {base} has no {name!r} with key {key} (it has: {keys})"
    url = urllib.parse.urljoin(base, urllib.parse.quote(match["file"]))
    try:
        body = _get(url)
    except (OSError, urllib.error.URLError) as e:
        return False, f"could not download {url} ({e})"
    digest = hashlib.sha256(body).hexdigest()
    if digest != match.get("sha256"):
        return False, (
            f"the download {url} does not match the manifest (SHA-256 {digest[:16]}..., "
            f"expected {str(match.get('sha256'))[:16]}...): not used"
        )
    atomic_write(dest, lambda f: f.write(body))
    return True, url


def write_manifest(folder: Path, models: list[dict]) -> Path:
    """Write ``manifest.json`` for the files in ``folder`` (entries: name, key, file)."""
    entries = []
    for m in models:
        path = folder / m["file"]
        entries.append(
            {
                **m,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "bytes": path.stat().st_size,
            }
        )
    out = folder / "manifest.json"
    text = json.dumps({"format": FORMAT, "models": entries}, indent=1)
    atomic_write(out, lambda f: f.write(text.encode()))
    return out
