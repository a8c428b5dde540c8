"""Published zoo models, served from the loopback address: the zoo looks in its cache, then the
release (same key, digest verified), then trains; a damaged or mismatched download is never
used; turned off, the release is never asked."""

import functools
import http.server
import json
import threading

import pytest
import torch
from conftest import tiny_zoo_model

from vitbook import release, zoo
from vitbook.runs import Recipe


@pytest.fixture
def server(tmp_path):
    """A static web server on 127.0.0.1 over ``tmp_path / "served"``; yields (folder, address,
    the paths it was asked for)."""
    folder = tmp_path / "served"
    folder.mkdir()
    asked = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            asked.append(self.path)

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}/zoo/", asked
    httpd.shutdown()


@pytest.fixture
def entry(tmp_path, monkeypatch):
    monkeypatch.setattr(release, "_MANIFESTS", {})
    monkeypatch.setattr(zoo, "_SAID", set())
    calls = []

    def train(model):
        calls.append(1)
        with torch.no_grad():
            model.head.bias.fill_(float(len(calls)))
        return {"test_accuracy": 0.5}

    e = zoo.register(tiny_zoo_model("tiny-release", train))
    yield e, calls
    zoo.REGISTRY.pop("tiny-release")


def publish(tmp_path, monkeypatch, served, name="tiny-release") -> None:
    """Train the model into a first cache and pack it as a release into ``served / "zoo"``."""
    monkeypatch.setenv("VITBOOK_CACHE", str(tmp_path / "maker"))
    zoo.get(name)
    zoo.pack_release(served / "zoo")


def test_a_published_model_is_downloaded_verified_and_not_trained(
    entry, server, tmp_path, monkeypatch, capsys
):
    e, calls = entry
    served, url, asked = server
    publish(tmp_path, monkeypatch, served)
    assert len(calls) == 1
    monkeypatch.setenv("VITBOOK_CACHE", str(tmp_path / "reader"))
    monkeypatch.setenv("VITBOOK_ZOO_RELEASE", url)
    monkeypatch.setattr(zoo, "_SAID", set())
    model = zoo.get("tiny-release")
    assert len(calls) == 1, "the reader's zoo downloaded it instead of training"
    assert torch.equal(model.head.bias, torch.ones(10))
    assert "downloaded from\n  http://127.0.0.1" in capsys.readouterr().out
    assert any(p.endswith(e.path().name) for p in asked)
    manifest = json.loads((served / "zoo" / "manifest.json").read_text())
    assert manifest["models"][0]["key"] == e.key() and len(manifest["models"][0]["sha256"]) == 64


def test_a_release_with_another_key_is_not_used(entry, server, tmp_path, monkeypatch):
    e, calls = entry
    served, url, _ = server
    publish(tmp_path, monkeypatch, served)
    e.recipe = Recipe(lr=2.0)  # the reader's recipe differs: another key
    monkeypatch.setenv("VITBOOK_CACHE", str(tmp_path / "reader"))
    monkeypatch.setenv("VITBOOK_ZOO_RELEASE", url)
    zoo.get("tiny-release")
    assert len(calls) == 2, "trained, since no published file has this key"


def test_a_damaged_download_is_refused_and_the_zoo_trains(entry, server, tmp_path, monkeypatch):
    e, calls = entry
    served, url, _ = server
    publish(tmp_path, monkeypatch, served)
    f = served / "zoo" / e.path().name
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 1
    f.write_bytes(bytes(raw))
    monkeypatch.setenv("VITBOOK_CACHE", str(tmp_path / "reader"))
    monkeypatch.setenv("VITBOOK_ZOO_RELEASE", url)
    ok, why = release.fetch("tiny-release", e.key(), tmp_path / "x.pt")
    assert not ok and "does not match the manifest" in why and not (tmp_path / "x.pt").exists()
    zoo.get("tiny-release")
    assert len(calls) == 2


def test_no_answer_or_turned_off_means_training(entry, tmp_path, monkeypatch):
    e, calls = entry
    monkeypatch.setenv("VITBOOK_CACHE", str(tmp_path / "reader"))
    monkeypatch.setenv("VITBOOK_ZOO_RELEASE", "http://127.0.0.1:9/")  # the discard port: refused
    ok, why = release.fetch("tiny-release", e.key(), tmp_path / "x.pt")
    assert not ok and "no release answered" in why
    monkeypatch.setenv("VITBOOK_ZOO_RELEASE", "off")
    assert release.release_url() is None
    zoo.get("tiny-release")
    assert len(calls) == 1


def test_the_default_release_is_the_repositorys():
    import os

    saved = os.environ.pop("VITBOOK_ZOO_RELEASE")
    try:
        assert release.release_url().startswith(release.REPOSITORY + "/releases/download/")
    finally:
        os.environ["VITBOOK_ZOO_RELEASE"] = saved
