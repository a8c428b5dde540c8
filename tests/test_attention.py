import math

import pytest
import torch
from conftest import tiny_config

from vitbook import attention
from vitbook.model import ViT


@pytest.fixture(scope="module")
def maps():
    torch.manual_seed(0)
    model = ViT(tiny_config(depth=3))
    return attention.attention_maps(model, torch.rand(5, 1, 28, 28))  # (L, B, nh, T, T)


def test_attention_maps_stack_every_layer(maps):
    assert maps.shape == (3, 5, 4, 17, 17)


def test_rollout_rows_are_distributions_over_input_tokens(maps):
    r = attention.rollout(maps)
    assert r.shape == (5, 17, 17)
    torch.testing.assert_close(r.sum(-1), torch.ones(5, 17))
    assert (r >= 0).all()


def test_rollout_of_identity_attention_is_the_identity():
    eye = torch.eye(17).expand(2, 1, 4, 17, 17)
    torch.testing.assert_close(attention.rollout(eye), torch.eye(17).expand(1, 17, 17))


def test_rollout_of_one_layer_mixes_in_the_residual():
    uniform = torch.full((1, 1, 2, 5, 5), 0.2)
    r = attention.rollout(uniform, residual=0.5)
    torch.testing.assert_close(r[0], 0.5 * torch.eye(5) + 0.5 * 0.2)


def test_mean_distance_of_a_uniform_map_equals_its_analytic_value():
    # 2x2 grid of 7-pixel patches: from any patch, distances to the four are 0, 7, 7, 7*sqrt(2)
    T = 5
    uniform = torch.full((1, 1, 1, T, T), 1 / T)
    d = attention.mean_attention_distance(uniform, grid=2, patch_size=7)
    assert d.shape == (1, 1)
    assert d.item() == pytest.approx(7 * (2 + math.sqrt(2)) / 4)
    assert attention.uniform_attention_distance(2, 7) == pytest.approx(d.item())


def test_mean_distance_of_self_attention_is_zero_and_of_far_attention_is_large():
    T, g = 17, 4
    self_only = torch.eye(T).expand(1, 1, 1, T, T)
    assert attention.mean_attention_distance(self_only, g, 7).item() == 0
    far = torch.zeros(T, T)  # every patch attends to the patch at the opposite corner
    for i in range(1, T):
        r, c = divmod(i - 1, g)
        far[i, 1 + (g - 1 - r) * g + (g - 1 - c)] = 1
    far[0, 0] = 1
    d = attention.mean_attention_distance(far.expand(1, 1, 1, T, T), g, 7).item()
    assert d > attention.uniform_attention_distance(g, 7)


def test_cls_attention_is_the_class_rows_patch_part(maps):
    cls = attention.cls_attention(maps, 4)
    assert cls.shape == (3, 5, 4, 4, 4)
    torch.testing.assert_close(cls[1, 2, 3].flatten(), maps[1, 2, 3, 0, 1:])


def test_position_similarity_has_ones_on_the_diagonal_and_detects_layout():
    from vitbook.patches import sincos_pos_embed

    table = torch.cat([torch.zeros(1, 32), sincos_pos_embed(32, 4)])[None]
    sim = attention.position_similarity(table, 4)
    assert sim.shape == (16, 4, 4)
    torch.testing.assert_close(
        torch.stack([sim[i].flatten()[i] for i in range(16)]), torch.ones(16)
    )
    assert attention.neighbour_similarity_gap(sim) > 0.05
    random = torch.randn(1, 17, 32)
    assert abs(attention.neighbour_similarity_gap(attention.position_similarity(random, 4))) < 0.2


def test_upsample_keeps_patches_square():
    up = attention.upsample(torch.arange(4.0).view(2, 2), 4)
    assert torch.equal(up, torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3.0]]))
