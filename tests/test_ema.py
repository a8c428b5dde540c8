"""The one weight-average implementation (vitbook.ema): fit's recipe option and I-JEPA's target."""

import pytest
import torch

from vitbook.ema import WeightAverage, blend_


def test_weight_average_blends_weights_and_batchnorm_statistics():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    avg = WeightAverage(net, decay=0.1)  # below the warm-up's first 2/11: d = 0.1
    before = {k: v.clone() for k, v in avg.module.state_dict().items()}
    with torch.no_grad():
        net[0].weight.add_(1.0)
    net.train()(torch.randn(8, 3))  # moves BatchNorm's running statistics and its counter
    avg.update()
    now = net.state_dict()
    for name, value in avg.module.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, 0.1 * before[name] + 0.9 * now[name]), name
        else:
            assert torch.equal(value, now[name]), name
    assert not torch.equal(avg.module[0].weight, net[0].weight)  # a copy, not the same tensor
    assert not any(p.requires_grad for p in avg.module.parameters())


def test_weight_average_forgets_the_untrained_start():
    """The bug the warm-up fixes: BatchNorm's running variance starts at 1 and ends far lower;
    a plain 0.9995 average kept 0.9995**t of the 1 and its model predicted one class."""
    bn = torch.nn.BatchNorm1d(4)
    avg = WeightAverage(bn, decay=0.9995)
    with torch.no_grad():
        bn.running_var.fill_(0.02)
    for _ in range(100):
        avg.update()
    # what is left of the start is the product of (1 + t) / (10 + t): about 1e-11 after 100
    assert torch.allclose(avg.module.running_var, torch.full((4,), 0.02), rtol=1e-6)


@pytest.mark.parametrize("decay", [0.0, 1.0, 1.5])
def test_weight_average_rejects_a_decay_outside_0_1(decay):
    with pytest.raises(ValueError, match="between 0 and 1"):
        WeightAverage(torch.nn.Linear(2, 2), decay)


def test_blend_refuses_two_different_models():
    with pytest.raises(ValueError, match="cannot average two different models"):
        blend_(torch.nn.Linear(2, 2), torch.nn.Linear(2, 3, bias=False), 0.5)


def test_ijepa_target_update_is_the_weight_average_blend():
    from conftest import tiny_config

    from vitbook.model import ViT
    from vitbook.ssl import IJEPA

    torch.manual_seed(0)
    model = IJEPA(ViT(tiny_config()), predictor_dim=8, predictor_depth=1, ema=(0.5, 0.5))
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(1.0)
    before = {k: v.clone() for k, v in model.target_encoder.state_dict().items()}
    assert model.update_target(0.3) == 0.5
    now = model.encoder.state_dict()
    for k, v in model.target_encoder.state_dict().items():
        assert torch.allclose(v, 0.5 * before[k] + 0.5 * now[k]), k
