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
    preset,
    with_config,
)
from vitbook.patches import patchify, sincos_pos_embed, unpatchify


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


# ---------------------------------------------------------------------------------------------
# Variants through the constructor: the state dicts and the function they compute are those of
# the classes before `ViT` took its patch embedding and prefix tokens as arguments, so cached
# models and converted timm weights still load (strict) and give the same logits.

_BLOCK = {
    "norm1.weight": (32,), "norm1.bias": (32,), "attn.qkv.weight": (96, 32), "attn.qkv.bias": (96,),
    "attn.proj.weight": (32, 32), "attn.proj.bias": (32,), "norm2.weight": (32,),
    "norm2.bias": (32,), "mlp.fc1.weight": (64, 32), "mlp.fc1.bias": (64,),
    "mlp.fc2.weight": (32, 64), "mlp.fc2.bias": (32,),
}  # fmt: skip
_COMMON = {
    **{f"blocks.{i}.{k}": v for i in range(2) for k, v in _BLOCK.items()},
    "norm.weight": (32,), "norm.bias": (32,), "head.weight": (10, 32), "head.bias": (10,),
}  # fmt: skip
_PATCH = {"patch_embed.proj.weight": (32, 1, 7, 7), "patch_embed.proj.bias": (32,)}
_STEM = {
    "patch_embed.convs.0.weight": (8, 1, 3, 3), "patch_embed.convs.1.weight": (8,),
    "patch_embed.convs.1.bias": (8,), "patch_embed.convs.1.running_mean": (8,),
    "patch_embed.convs.1.running_var": (8,), "patch_embed.convs.1.num_batches_tracked": (),
    "patch_embed.convs.3.weight": (16, 8, 3, 3), "patch_embed.convs.4.weight": (16,),
    "patch_embed.convs.4.bias": (16,), "patch_embed.convs.4.running_mean": (16,),
    "patch_embed.convs.4.running_var": (16,), "patch_embed.convs.4.num_batches_tracked": (),
    "patch_embed.proj.weight": (32, 16, 1, 1), "patch_embed.proj.bias": (32,),
}  # fmt: skip
# Per variant: the state dict's keys and shapes, recorded from the classes before the change,
# and the first three logits of two images under `_seeded_state`, computed by those classes.
PINNED = {
    "vit": (
        {"cls_token": (1, 1, 32), "pos_embed": (1, 17, 32), **_PATCH, **_COMMON},
        [0.08548, 0.33617, 0.27825, 0.07222, 0.32814, 0.27769],
    ),
    "hybrid": (
        {"cls_token": (1, 1, 32), "pos_embed": (1, 50, 32), **_STEM, **_COMMON},
        [0.07475, 0.30199, 0.18552, 0.07467, 0.3022, 0.18574],
    ),
    "distilled": (
        {"cls_token": (1, 1, 32), "dist_token": (1, 1, 32), "pos_embed": (1, 18, 32), **_PATCH,
         **_COMMON, "head_dist.weight": (10, 32), "head_dist.bias": (10,)},
        [0.43364, -0.24856, -0.04826, 0.43936, -0.24488, -0.03859],
    ),
}  # fmt: skip


def _variant(name):
    from vitbook.distill import DistilledViT
    from vitbook.hybrid import HybridViT

    if name == "hybrid":
        return HybridViT(tiny_config(patch_size=4), ((8, 2), (16, 2)))
    return DistilledViT(tiny_config()) if name == "distilled" else ViT(tiny_config())


def _seeded_state(model):
    """Every tensor drawn from one seeded generator, key by key in sorted order."""
    g, sd = torch.Generator().manual_seed(0), {}
    for k, v in sorted(model.state_dict().items()):
        if not v.is_floating_point():
            sd[k] = v.clone()
            continue
        t = torch.randn(v.shape, generator=g) * 0.2
        sd[k] = t.abs() + 0.5 if k.endswith("running_var") else t
    return sd


@pytest.mark.parametrize("name", list(PINNED))
def test_variants_keep_their_state_dict_keys_and_logits(name):
    shapes, logits = PINNED[name]
    model = _variant(name)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    model.load_state_dict(_seeded_state(model), strict=True)
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model.eval()(x)[:, :3].flatten()
    torch.testing.assert_close(got, torch.tensor(logits), atol=1e-4, rtol=0)


def test_the_variants_are_constructor_arguments_not_surgery(monkeypatch):
    from vitbook import model as model_module
    from vitbook.distill import DistilledViT
    from vitbook.hybrid import ConvStem, HybridViT

    calls = []
    monkeypatch.setattr(ViT, "reset_parameters", lambda self: calls.append(type(self).__name__))
    monkeypatch.setattr(model_module, "PatchEmbed", None)  # a hybrid builds no PatchEmbed
    hybrid = HybridViT(tiny_config(patch_size=4))
    assert isinstance(hybrid.patch_embed, ConvStem) and calls == ["HybridViT"]  # one init
    monkeypatch.undo()
    distilled = DistilledViT(tiny_config())
    assert distilled.num_prefix_tokens == 2 and distilled.pos_embed.shape == (1, 18, 32)
    for name in ("embed", "prepend_cls", "encode", "pool"):
        assert getattr(DistilledViT, name) is getattr(ViT, name)


def test_two_prefix_tokens_take_their_positions_and_stay_out_of_the_mean():
    for pos in ("learned", "sincos", "none"):
        model = ViT(tiny_config(pos_embed=pos, pool="mean"), num_prefix_tokens=2).eval()
        tokens, _ = model.forward_features(torch.rand(3, 1, 28, 28))
        assert tokens.shape == (3, 18, 32)
        torch.testing.assert_close(model.pool(tokens), tokens[:, 2:].mean(1))
    with pytest.raises(ValueError, match="num_prefix_tokens must be 1"):
        ViT(tiny_config(), num_prefix_tokens=3)
    with pytest.raises(TypeError, match="patch_embed must be an nn.Module"):
        ViT(tiny_config(), patch_embed="conv")


def test_replace_head_gives_a_zero_head_of_the_new_size_and_updates_the_config():
    model = ViT(tiny_config())
    assert model.replace_head(3) is model
    assert model.cfg.num_classes == 3 and model(torch.rand(2, 1, 28, 28)).abs().max() == 0
    probe = torch.nn.Linear(32, 5)
    assert model.replace_head(probe).head is probe and model.cfg.num_classes == 5
    with pytest.raises(ValueError, match="takes 16 features, but the model's tokens have dim 32"):
        model.replace_head(torch.nn.Linear(16, 5))
    with pytest.raises(ValueError, match="num_classes must be at least 1"):
        model.replace_head(0)
    with pytest.raises(TypeError, match="num_classes must be a whole number"):
        model.replace_head(2.5)
    assert model.cfg.num_classes == 5  # a refused head leaves the model as it was


def test_a_distilled_vit_replaces_both_heads():
    from vitbook.distill import DistilledViT

    model = DistilledViT(tiny_config()).replace_head(4)
    c, d = model.forward_heads(torch.rand(2, 1, 28, 28))
    assert c.shape == d.shape == (2, 4) and c.abs().max() == d.abs().max() == 0
    assert model.head_dist is not model.head and model.cfg.num_classes == 4


def test_with_config_changes_a_field_and_checks_the_result():
    cfg = tiny_config()
    assert cfg.with_config(image_size=42).grid_size == 6 and cfg.image_size == 28
    assert with_config(ViT(cfg), num_classes=3) == with_config(cfg, num_classes=3)
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        cfg.with_config(image_size=30)
