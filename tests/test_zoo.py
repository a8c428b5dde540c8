import dataclasses

import pytest
import torch
from conftest import tiny_config, tiny_zoo_model

from vitbook import (
    recipes,  # noqa: F401  (registers the book's zoo entries)
    zoo,
)
from vitbook.model import ViT
from vitbook.runs import Recipe
from vitbook.transforms import DigitAugment


@pytest.fixture
def tiny_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("VITBOOK_CACHE", str(tmp_path))
    calls = []

    def train(model):
        calls.append(1)
        with torch.no_grad():
            model.head.bias.fill_(0.5)  # a "training" whose effect we can see
        return {"test_accuracy": 0.5}

    entry = zoo.register(tiny_zoo_model("tiny-test", train))
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
    entry.recipe = Recipe(lr=2.0)
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
    with pytest.raises(RuntimeError, match="retrain=True"):  # a CorruptFileError
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
        zoo.Result("tiny-result", "a cached result", compute, seed=0, depends=("tiny-test",))
    )
    try:
        assert zoo.result("tiny-result")["table"] == {"a": 1.0}
        assert zoo.result("tiny-result")["table"] == {"a": 1.0}
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


def test_untrained_is_the_network_training_started_from_and_leaves_the_random_state(tiny_entry):
    entry, _ = tiny_entry
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b = zoo.untrained("tiny-test"), zoo.untrained("tiny-test")
    zoo.get("tiny-test")  # trains, caches, loads
    zoo.get("tiny-test")  # loads
    assert torch.equal(torch.random.get_rng_state(), before), "the zoo moved the global RNG"
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    torch.manual_seed(0)  # what Model.build does under the recipe's seed (0)
    fresh = ViT(tiny_config())
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in a.state_dict().items())
    assert not a.training


def test_a_result_is_not_a_model_and_a_model_is_not_a_result(tiny_entry):
    zoo.register(zoo.Result("tiny-res", "a result", lambda e: {"x": 1}, seed=0))
    try:
        with pytest.raises(ValueError, match="cached result, not a model"):
            zoo.get("tiny-res")
        with pytest.raises(ValueError, match="cached result, not a model"):
            zoo.untrained("tiny-res")
        with pytest.raises(ValueError, match="a model, not a result"):
            zoo.result("tiny-test")
    finally:
        zoo.REGISTRY.pop("tiny-res")


def test_the_declaration_is_the_key_every_field_counts(tiny_entry):
    entry, _ = tiny_entry
    base = entry.key()
    for change in (
        dict(config=tiny_config(depth=1)),
        dict(recipe=Recipe(lr=1.0, seed=1)),
        dict(augmentation=DigitAugment(degrees=5)),
        dict(options={"teacher": "x"}),
    ):
        assert dataclasses.replace(entry, **change).key() != base, change


def test_entry_is_the_declaration_a_variant_is_replaced_from():
    import vitbook.recipes  # noqa: F401  (registers the book's models)

    base = zoo.entry("mnist-vit")
    assert base is zoo.entry("mnist-vit") and base.description
    variant = dataclasses.replace(base, name="mnist-vit-variant-test")
    assert variant.name != base.name and variant.recipe == base.recipe
    with pytest.raises(KeyError, match="no zoo model named"):
        zoo.entry("no-such-model")
