import pytest
import torch
from conftest import tiny_config

from vitbook import (
    recipes,  # noqa: F401  (registers the book's zoo entries)
    zoo,
)
from vitbook.model import ViT


@pytest.fixture
def tiny_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("VITBOOK_CACHE", str(tmp_path))
    calls = []

    def build():
        torch.manual_seed(0)
        return ViT(tiny_config())

    def train(model):
        calls.append(1)
        with torch.no_grad():
            model.head.bias.fill_(0.5)  # a "training" whose effect we can see
        return {"test_accuracy": 0.5}

    entry = zoo.register(
        zoo.Entry("tiny-test", "a test model", build, train, recipe={"lr": 1.0}, minutes=0)
    )
    yield entry, calls
    zoo.REGISTRY.pop("tiny-test")


def test_first_use_trains_and_caches_later_uses_load(tiny_entry):
    entry, calls = tiny_entry
    assert not zoo.is_cached("tiny-test")
    a = zoo.get("tiny-test")
    b = zoo.get("tiny-test")
    assert len(calls) == 1 and zoo.is_cached("tiny-test")
    assert not a.training and next(a.parameters()).device.type == "cpu"
    assert torch.equal(a.head.bias, torch.full((10,), 0.5)) and torch.equal(
        b.head.bias, a.head.bias
    )
    assert zoo.info("tiny-test")["test_accuracy"] == 0.5


def test_a_changed_recipe_is_a_new_key_and_retrains(tiny_entry):
    entry, calls = tiny_entry
    zoo.get("tiny-test")
    old_key = entry.key()
    entry.recipe = {"lr": 2.0}
    assert entry.key() != old_key
    zoo.get("tiny-test")
    assert len(calls) == 2


def test_retrain_forces_training(tiny_entry):
    _, calls = tiny_entry
    zoo.get("tiny-test")
    zoo.get("tiny-test", retrain=True)
    assert len(calls) == 2


def test_a_corrupt_cached_model_says_how_to_recover(tiny_entry):
    entry, _ = tiny_entry
    zoo.get("tiny-test")
    entry.path().write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="retrain=True"):
        zoo.get("tiny-test")


def test_unknown_names_list_the_zoo():
    with pytest.raises(KeyError, match="mnist-vit"):
        zoo.get("no-such-model")
    assert "mnist-vit" in zoo.names()


def test_result_entries_cache_metrics_and_train_their_dependencies_first(tiny_entry, tmp_path):
    entry, calls = tiny_entry
    seen = []

    def compute(_):
        seen.append(zoo.is_cached("tiny-test"))  # the dependency exists by now
        return {"table": {"a": 1.0}}

    zoo.register(
        zoo.Entry(
            "tiny-result",
            "a cached result",
            None,
            compute,
            recipe={},
            depends=("tiny-test",),
            minutes=0,
        )
    )
    try:
        assert zoo.info("tiny-result")["table"] == {"a": 1.0}
        assert zoo.info("tiny-result")["table"] == {"a": 1.0}
        assert seen == [True] and len(calls) == 1
        with pytest.raises(ValueError, match="cached result"):
            zoo.get("tiny-result")
    finally:
        zoo.REGISTRY.pop("tiny-result")


def test_every_zoo_entry_has_a_stable_key_and_a_description():
    for name in zoo.names():
        e = zoo.REGISTRY[name]
        assert e.key() == e.key() and len(e.key()) == 16
        assert e.description and all(d in zoo.REGISTRY for d in e.depends)


def test_a_model_trained_with_the_entrys_recipe_is_adopted_instead_of_retrained(tiny_entry):
    entry, calls = tiny_entry
    entry.recipe = {"config": tiny_config().to_dict(), "lr": 1.0}
    mine = entry.build()
    with torch.no_grad():
        mine.head.bias.fill_(0.25)
    assert zoo.adopt("tiny-test", mine, {"lr": 1.0}, {"test_accuracy": 0.9})
    got = zoo.get("tiny-test")
    assert not calls, "the zoo trained although a model was adopted"
    assert torch.equal(got.head.bias, torch.full((10,), 0.25))
    assert zoo.info("tiny-test")["adopted"] is True
    # a second offer leaves the cached model alone
    other = entry.build()
    assert not zoo.adopt("tiny-test", other, {"lr": 1.0})
    assert torch.equal(zoo.get("tiny-test").head.bias, torch.full((10,), 0.25))


def test_a_model_trained_otherwise_is_refused_with_what_differs(tiny_entry):
    entry, _ = tiny_entry
    entry.recipe = {"config": tiny_config().to_dict(), "lr": 1.0}
    with pytest.raises(ValueError, match="lr differ"):
        zoo.adopt("tiny-test", entry.build(), {"lr": 3.0})
    with pytest.raises(ValueError, match="config differ"):
        zoo.adopt("tiny-test", ViT(tiny_config(depth=1)), {"lr": 1.0})
    assert not zoo.is_cached("tiny-test")
