import pytest
import timm
import torch
import torchvision
from conftest import tiny_config

from vitbook import interop
from vitbook.model import CheckpointMismatchError, ViT, load_checked


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Every parameter drawn afresh, the classifier included: torchvision zero-initialises its
    head, and comparing zeros with zeros proves nothing."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and ("norm" in name or "ln" in name) and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))  # LayerNorm gains near 1
            else:
                p.normal_(0, 0.1)
    return model.eval()


def max_logit_diff(theirs, ours, x):
    with torch.no_grad():
        a, b = theirs(x), ours.eval()(x)
    assert a.abs().max() > 0.1, "logits near zero: the comparison would prove nothing"
    return (a - b).abs().max().item()


def test_torchvision_vit_b_16_gives_identical_logits():
    tv = randomise(torchvision.models.vit_b_16(weights=None))
    ours = interop.from_torchvision(tv)
    assert ours.cfg.dim == 768 and ours.cfg.depth == 12 and ours.cfg.heads == 12
    assert max_logit_diff(tv, ours, torch.randn(2, 3, 224, 224)) < 1e-4


@pytest.mark.parametrize(
    "image,patch,layers,heads,hidden,mlp",
    [(32, 8, 2, 2, 64, 128), (48, 16, 3, 4, 96, 192), (28, 7, 2, 3, 48, 96)],
)
def test_torchvision_models_of_several_sizes_convert(image, patch, layers, heads, hidden, mlp):
    tv = randomise(
        torchvision.models.VisionTransformer(
            image, patch, layers, heads, hidden, mlp, num_classes=7
        )
    )
    ours = interop.from_torchvision(tv.state_dict(), heads=heads)
    assert (ours.cfg.image_size, ours.cfg.patch_size, ours.cfg.num_classes) == (image, patch, 7)
    assert max_logit_diff(tv, ours, torch.randn(2, 3, image, image)) < 1e-4


@pytest.mark.parametrize(
    "name", ["vit_tiny_patch16_224", "vit_small_patch32_224", "vit_base_patch16_224"]
)
def test_timm_vits_give_identical_logits(name):
    tm = randomise(timm.create_model(name, pretrained=False))
    ours = interop.from_timm(tm)
    assert max_logit_diff(tm, ours, torch.randn(2, 3, 224, 224)) < 1e-4


def test_timm_state_dict_of_an_mnist_sized_model_converts():
    from timm.models.vision_transformer import VisionTransformer

    def make():
        return VisionTransformer(
            img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=48, depth=2, num_heads=3, mlp_ratio=2
        )  # fmt: skip

    tm = randomise(make())
    ours = interop.from_timm(tm.state_dict(), heads=3)
    assert ours.cfg.in_channels == 1 and ours.cfg.mlp_dim == 96
    assert max_logit_diff(tm, ours, torch.randn(4, 1, 28, 28)) < 1e-4
    # and back: vitbook's names are timm's
    back = make()
    back.load_state_dict(interop.to_timm_state_dict(ours))


def test_unsupported_timm_variants_are_refused_by_name():
    tm = timm.create_model("vit_tiny_patch16_224", pretrained=False, global_pool="avg")
    with pytest.raises(CheckpointMismatchError, match="fc_norm|pools with"):
        interop.from_timm(tm)


def test_mismatched_checkpoint_lists_missing_unexpected_and_shape_mismatches():
    small = ViT(tiny_config(depth=2, num_classes=10))
    other = ViT(tiny_config(depth=3, num_classes=5)).state_dict()
    other["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError) as err:
        load_checked(small, other)
    msg = str(err.value)
    assert "unexpected keys" in msg and "blocks.2.attn.qkv.weight" in msg and "extra.weight" in msg
    assert (
        "shape mismatches" in msg
        and "head.weight: (5, 32) in the checkpoint, (10, 32) in the model" in msg
    )
    del other["norm.weight"]
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(1\): norm.weight"):
        load_checked(small, other)


def test_torchvision_checkpoint_with_unknown_keys_is_refused():
    sd = torchvision.models.VisionTransformer(32, 8, 1, 2, 64, 128).state_dict()
    sd["heads.pre_logits.weight"] = torch.zeros(64, 64)
    with pytest.raises(CheckpointMismatchError, match="pre_logits"):
        interop.from_torchvision(sd, heads=2)


def test_heads_must_be_given_for_a_nonstandard_width_state_dict():
    sd = torchvision.models.VisionTransformer(32, 8, 1, 2, 64, 128).state_dict()
    with pytest.raises(ValueError, match="pass heads="):
        interop.from_torchvision(sd)


def smooth_table(grid: int, dim: int) -> torch.Tensor:
    """A smooth position embedding: each channel a low-frequency function of (row, col) in [0, 1]."""
    pos = (torch.arange(grid, dtype=torch.float) + 0.5) / grid
    r, c = torch.meshgrid(pos, pos, indexing="ij")
    freqs = torch.linspace(0.2, 1.0, dim)
    table = torch.sin(freqs * (r.flatten()[:, None] * 3 + 1)) + torch.cos(
        freqs * c.flatten()[:, None] * 2
    )
    return torch.cat([torch.zeros(1, dim), table])[None]  # (1, 1 + g*g, D)


def test_resized_position_embedding_follows_the_underlying_smooth_function():
    small, big = smooth_table(4, 32), smooth_table(8, 32)
    resized = interop.resize_pos_embed(small, 8)
    assert resized.shape == big.shape
    assert torch.equal(resized[:, 0], small[:, 0])  # the class token's embedding is kept
    err = (resized - big).abs()
    scale = big.abs().max()
    # bicubic interpolation is close inside the grid and a little off at the border, where it
    # must extrapolate; a table of the wrong function would be off by about the scale itself
    assert err.mean() < 0.02 * scale and err.max() < 0.1 * scale
    assert torch.equal(interop.resize_pos_embed(small, 4), small)


def test_resized_model_gives_logits_close_to_a_model_built_for_the_new_grid():
    # A model whose position embedding is a smooth function of position, resized from a 4x4 to a
    # 6x6 grid, against the same model built with that function sampled on the 6x6 grid.
    cfg = tiny_config()
    model = ViT(cfg).eval()
    with torch.no_grad():
        model.pos_embed.copy_(smooth_table(4, 32))
    resized = interop.resize_model(model, 42).eval()
    truth = ViT(cfg.with_config(image_size=42)).eval()
    sd = dict(model.state_dict(), pos_embed=smooth_table(6, 32))
    truth.load_state_dict(sd)
    x = torch.rand(3, 1, 42, 42)
    diff = (resized(x) - truth(x)).abs().max()
    assert diff < 0.05 * truth(x).abs().max()
    # and without resizing, the model refuses the new size
    with pytest.raises(ValueError, match="expected 28x28"):
        model(x)


def test_vitbook_to_torchvision_and_back_is_exact():
    model = randomise(ViT(tiny_config(num_classes=3, in_channels=3)))
    tv = torchvision.models.VisionTransformer(28, 7, 2, 4, 32, 64, num_classes=3).eval()
    tv.load_state_dict(interop.to_torchvision_state_dict(model))
    x = torch.randn(4, 3, 28, 28)
    assert max_logit_diff(tv, model, x) < 1e-4
    back = interop.from_torchvision(tv, heads=4)
    assert all(
        torch.equal(a, b) for a, b in zip(back.state_dict().values(), model.state_dict().values())
    )


def test_hub_is_reported_unreachable_quickly_when_offline():
    import time

    start = time.perf_counter()
    reachable = interop.hub_reachable("nonexistent.invalid", timeout=2)
    assert reachable is False and time.perf_counter() - start < 5
