"""Shared fixtures, and a test session that reads nothing of the machine but what the clone's
own set-up made: the data folder that `make setup` fills and the zoo cache are named
explicitly ($VITBOOK_DATA, $VITBOOK_CACHE; their defaults under the real home folder when unset),
then HOME points at an empty folder for the whole session, so a test that reads ~/.cache (or
any other file of the home folder) fails here as it would on a fresh machine. Published zoo
models are never fetched in tests ($VITBOOK_ZOO_RELEASE=off), except by the test that serves
its own on the loopback address."""

import os
import tempfile
from pathlib import Path

import pytest
import torch

for _var, _default in (
    ("VITBOOK_DATA", "~/.cache/vitbook/data"),
    ("VITBOOK_CACHE", "~/.cache/vitbook/zoo"),
):
    os.environ.setdefault(_var, str(Path(_default).expanduser()))
os.environ["VITBOOK_ZOO_RELEASE"] = "off"
os.environ["HOME"] = tempfile.mkdtemp(prefix="vitbook-empty-home-")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_config(**overrides):
    from vitbook.model import ViTConfig

    fields = dict(
        image_size=28,
        patch_size=7,
        in_channels=1,
        num_classes=10,
        dim=32,
        depth=2,
        heads=4,
        mlp_dim=64,
    )
    fields.update(overrides)
    return ViTConfig(**fields)


@pytest.fixture
def tiny_cfg():
    return tiny_config()


def tiny_zoo_model(name, train, recipe=None, **kw):
    """A zoo declaration of a tiny ViT whose "training" is ``train(network)`` (returns metrics)."""
    from vitbook import zoo
    from vitbook.model import ViT
    from vitbook.runs import Recipe

    def train_it(network, model):
        return train(network)

    return zoo.Model(
        name,
        "a test model",
        ViT,
        tiny_config(),
        recipe or Recipe(lr=1.0),
        train_it,
        minutes=0,
        **kw,
    )
