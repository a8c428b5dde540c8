"""Everything that reaches a model lives on the model's device: a check that runs on a CPU-only
machine. Models go to the ``meta`` device (shapes, no values), which no tensor reaches by
accident; a forward hook on every module compares each input's device with the module's
weights, and the run stops, with `Reached`, once the first whole forward pass was checked. A
function that left a teacher, a head or a batch on the CPU fails with `Mismatch`, as it would
fail on a GPU.
"""

import contextlib
import copy

import pytest
import torch
import torch.nn as nn
from conftest import tiny_config

from vitbook import data, distill, loops, recipes, train, transfer, zoo  # noqa: F401 (recipes registers)
from vitbook.model import ViT

META = torch.device("meta")


class Mismatch(AssertionError):
    pass


class Reached(Exception):
    """The first forward pass ran to its end with every input where its module's weights are."""


@contextlib.contextmanager
def device_probe():
    depth = [0]

    def before(module, args):
        own = next(module.parameters(recurse=False), None)
        if own is None:
            own = next(module.parameters(), None)
        for a in args:
            if torch.is_tensor(a) and own is not None and a.device != own.device:
                raise Mismatch(
                    f"{type(module).__name__} has its weights on {own.device} but got an input "
                    f"on {a.device}"
                )
        depth[0] += 1

    def after(module, args, output):
        depth[0] -= 1
        if depth[0] == 0:
            raise Reached(type(module).__name__)

    handles = [
        nn.modules.module.register_module_forward_pre_hook(before),
        nn.modules.module.register_module_forward_hook(after),
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def tiny(num_classes=10):
    torch.manual_seed(0)
    return ViT(tiny_config(num_classes=num_classes))


def digits(n=64):
    return data.mnist("test").subset(range(n))


def test_the_probe_catches_a_batch_left_on_another_device():
    # the negative control: what the old `evaluate` did (inputs to the picked device, not the model's)
    model = tiny().to(META)
    with device_probe(), pytest.raises(Mismatch, match="weights on meta but got an input on cpu"):
        model(torch.rand(2, 1, 28, 28))


def test_evaluate_runs_where_the_model_is():
    with device_probe(), pytest.raises(Reached):
        train.evaluate(tiny().to(META), digits())


def test_fit_trains_where_the_model_is():
    with device_probe(), pytest.raises(Reached):
        train.fit(tiny().to(META), digits(), None, dict(epochs=1, batch_size=32), progress=False)


def test_the_distillation_loss_brings_a_cpu_teacher_to_the_batch():
    teacher = distill.SmallCNN()  # where zoo.get leaves a model: on the CPU
    loss_fn = distill.student_loss_fn(teacher, "soft")
    x, y = torch.rand(4, 1, 28, 28, device=META), torch.zeros(4, dtype=torch.long, device=META)
    with device_probe(), pytest.raises(Reached, match="SmallCNN"):
        loss_fn(tiny().to(META), x, y)


def test_finetuning_puts_a_new_head_and_a_cpu_probe_where_the_encoder_is():
    with device_probe(), pytest.raises(Reached):
        three = transfer.relabel(digits(), (3, 8))
        transfer.finetune(tiny().to(META), three, num_classes=3, steps=1, batch_size=32)
    head = nn.Linear(32, 10)  # a probe fitted on the CPU
    with device_probe(), pytest.raises(Reached):
        transfer.finetune_from_probe(tiny().to(META), digits(), steps=1, head=head, batch_size=32)


def test_features_and_attention_are_computed_where_the_model_is():
    from vitbook import attention, metrics

    with device_probe(), pytest.raises(Reached):
        metrics.extract_features(tiny().to(META), digits())
    with device_probe(), pytest.raises(Reached):
        attention.attention_maps(tiny().to(META), torch.rand(2, 1, 28, 28))


@pytest.fixture
def everything_on_meta(monkeypatch):
    """`pick_device` answers meta everywhere it was imported, and the zoo hands out untrained
    models on the device asked for (no training here)."""
    import sys

    original = loops.pick_device
    for name, module in list(sys.modules.items()):
        if name.startswith("vitbook") and getattr(module, "pick_device", None) is original:
            monkeypatch.setattr(module, "pick_device", lambda device=None: META)

    def get(name, device="cpu", retrain=False):
        return zoo.untrained(name).to(device)

    monkeypatch.setattr(zoo, "get", get)


@pytest.mark.parametrize("name", zoo.names())
def test_every_zoo_training_runs_on_the_device_the_zoo_picks(name, everything_on_meta):
    entry = zoo.REGISTRY[name]
    if isinstance(entry, zoo.Result):
        with device_probe(), pytest.raises(Reached):
            entry.compute(entry)
        return
    model = copy.deepcopy(entry.build()).to(zoo.pick_device())
    assert loops.model_device(model) == META
    with device_probe(), pytest.raises(Reached):
        entry.train(model, entry)
