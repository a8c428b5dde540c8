import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from vitbook.model import (
    PAPER_PARAMS_M,
    Attention,
    PatchEmbed,
    ViT,
    count_params,
    patchify,
    preset,
    sincos_pos_embed,
    unpatchify,
    with_config,
)


def test_conv_and_linear_patch_embedding_agree():
    cfg = tiny_config(in_channels=3, image_size=32, patch_size=8)
    conv = PatchEmbed(cfg)
    linear = PatchEmbed(cfg.with_config(patch_impl="linear"))
    linear.load_state_dict(conv.state_dict())  # the same weight, used two ways
    x = torch.randn(4, 3, 32, 32)
    out = conv(x)
    assert out.shape == (4, 16, cfg.dim)
    torch.testing.assert_close(linear(x), out, atol=1e-5, rtol=1e-5)


def test_patchify_orders_patches_row_major_and_unpatchify_inverts_it():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float).view(2, 3, 8, 8)
    p = patchify(x, 4)
    assert p.shape == (2, 4, 3 * 16)
    # patch 1 is the top-right 4x4 block of channel 0, then of channel 1, ...
    assert torch.equal(p[0, 1, :16], x[0, 0, :4, 4:].flatten())
    assert torch.equal(unpatchify(p, 4, 3), x)


def test_fused_and_explicit_attention_agree():
    model = ViT(tiny_config()).eval()
    x = torch.rand(3, 1, 28, 28)
    fused = model(x)
    explicit, maps = model(x, return_attn=True)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    assert len(maps) == 2


def test_attention_maps_have_one_row_stochastic_map_per_layer_and_head():
    cfg = tiny_config(depth=3)
    _, maps = ViT(cfg).eval()(torch.rand(2, 1, 28, 28), return_attn=True)
    assert [tuple(m.shape) for m in maps] == [(2, 4, 17, 17)] * 3
    for m in maps:
        torch.testing.assert_close(m.sum(-1), torch.ones(2, 4, 17))


def test_attention_by_hand_equals_scaled_dot_product_attention():
    attn = Attention(tiny_config()).eval()
    x = torch.randn(2, 17, 32)
    out_explicit, weights = attn(x, return_attn=True)
    out_fused, none = attn(x)
    assert none is None
    torch.testing.assert_close(out_explicit, out_fused, atol=1e-5, rtol=1e-5)
    # and the weights are softmax(q k^T / sqrt(d)) computed independently
    q, k, _ = attn.qkv(x).view(2, 17, 3, 4, 8).permute(2, 0, 3, 1, 4)
    torch.testing.assert_close(
        weights, F.softmax(q @ k.transpose(-1, -2) / 8**0.5, dim=-1), atol=1e-6, rtol=1e-5
    )


@pytest.mark.parametrize("name", ["ViT-B/16", "ViT-L/16", "ViT-H/14"])
def test_parameter_counts_match_the_papers_table_1(name):
    with torch.device("meta"):  # shapes only: ViT-H needs no 2.5 GB to be counted
        n = count_params(ViT(preset(name)))
    # ViT-B/16 86.57M and ViT-H/14 632.05M round to the paper's 86M and 632M; ViT-L/16 is
    # 304.33M against the paper's 307M (the paper's figure matches L/32, 306.5M): within 1%.
    assert abs(n / 1e6 - PAPER_PARAMS_M[name]) / PAPER_PARAMS_M[name] < 0.01
    if name != "ViT-L/16":
        assert int(n / 1e6) == PAPER_PARAMS_M[name]  # 86.57M -> 86M, 632.05M -> 632M


def test_presets_have_the_papers_shapes():
    b = preset("ViT-B/16")
    assert (b.dim, b.depth, b.heads, b.mlp_dim, b.image_size, b.in_channels, b.num_classes) == (
        768,
        12,
        12,
        3072,
        224,
        3,
        1000,
    )
    assert preset("ViT-H/14").patch_size == 14
    assert preset("ViT-Ti/4", image_size=28, in_channels=1).num_patches == 49
    with pytest.raises(ValueError, match="unknown preset"):
        preset("ViT-XL/16")


def test_image_size_not_divisible_by_patch_size_is_refused_with_the_divisors():
    with pytest.raises(ValueError, match=r"not divisible by patch_size 8.*\[1, 2, 4, 7, 14, 28\]"):
        tiny_config(patch_size=8)


def test_width_not_divisible_by_heads_is_refused():
    with pytest.raises(ValueError, match="dim 30 is not divisible by heads 4"):
        tiny_config(dim=30)


def test_wrong_inputs_get_errors_that_say_what_was_expected():
    model = ViT(tiny_config())
    with pytest.raises(ValueError, match=r"expected 28x28 images .* got 32x32"):
        model(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"expected 1 channel\(s\).* got 3"):
        model(torch.rand(1, 3, 28, 28))
    with pytest.raises(ValueError, match="unsqueeze"):
        model(torch.rand(1, 28, 28))


def test_sincos_position_embedding_is_fixed_and_distinguishes_positions():
    model = ViT(tiny_config(pos_embed="sincos"))
    assert "pos_embed" not in dict(model.named_parameters())
    table = sincos_pos_embed(32, 4)
    assert table.shape == (16, 32)
    sim = F.normalize(table, dim=1) @ F.normalize(table, dim=1).T
    assert (sim - torch.eye(16)).max() < 0.999  # no two positions share an embedding
    assert sim[0, 1] > sim[0, 15]  # neighbours are more alike than opposite corners


def test_no_position_embedding_makes_the_model_blind_to_patch_order():
    model = ViT(tiny_config(pos_embed="none", pool="mean")).eval()
    x = torch.rand(1, 1, 28, 28)
    # swap two patches: without positions the patch tokens are a set, so nothing changes
    y = x.clone()
    y[..., :7, :7], y[..., 21:, 21:] = x[..., 21:, 21:], x[..., :7, :7]
    torch.testing.assert_close(model(x), model(y), atol=1e-5, rtol=1e-5)


def test_features_are_the_pooled_token_before_the_head():
    model = ViT(tiny_config()).eval()
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(model.head(model.features(x)), model(x))


def test_with_config_changes_a_field_and_checks_the_result():
    cfg = tiny_config()
    assert cfg.with_config(image_size=42).grid_size == 6 and cfg.image_size == 28
    assert with_config(ViT(cfg), num_classes=3) == with_config(cfg, num_classes=3)
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        cfg.with_config(image_size=30)
