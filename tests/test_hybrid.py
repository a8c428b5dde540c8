"""The hybrid ViT: a convolutional stem that makes the same token grid as the plain ViT."""

import pytest
import torch
import torch.nn.functional as F

from vitbook.hybrid import ConvStem, HybridViT
from vitbook.model import ViT
from vitbook.recipes import mnist_config


def small_cfg(**overrides):
    return mnist_config(**{"patch_size": 4, "dim": 32, "depth": 2, "mlp_dim": 64, **overrides})


def test_stem_makes_the_plain_vits_token_grid():
    cfg = small_cfg()
    x = torch.rand(3, 1, 28, 28)
    tokens = ConvStem(cfg)(x)
    assert tokens.shape == ViT(cfg).patch_embed(x).shape == (3, 49, 32)


def test_hybrid_gives_logits_and_one_attention_map_per_block():
    cfg = small_cfg()
    logits, maps = HybridViT(cfg).eval()(torch.rand(2, 1, 28, 28), return_attn=True)
    assert logits.shape == (2, 10)
    assert len(maps) == 2 and maps[0].shape == (2, cfg.heads, 50, 50)
    assert torch.allclose(maps[0].sum(-1), torch.ones(2, cfg.heads, 50), atol=1e-5)


@pytest.mark.parametrize(
    "stem, message",
    [
        (((32, 2),), "shrink the image 2x, but patch_size is 4"),
        (((32, 2), (64, 2), (96, 2)), "shrink the image 8x"),
        (((32, 3), (64, 2)), "must be 1 or 2"),
        ((), "at least one convolution"),
    ],
)
def test_a_stem_that_does_not_fit_the_patch_size_says_what_to_do(stem, message):
    with pytest.raises(ValueError, match=message):
        HybridViT(small_cfg(), stem)


def test_hybrid_rejects_a_wrong_image_size_like_the_vit():
    with pytest.raises(ValueError, match="expected 28x28 images"):
        HybridViT(small_cfg())(torch.rand(1, 1, 32, 32))


def test_a_hybrid_token_sees_past_its_own_patch_and_a_vit_token_does_not():
    """What the stem changes: the ViT's first token is a function of the top-left 4x4 pixels
    only; the hybrid's overlapping 3x3 convolutions let it see a wider neighbourhood."""
    cfg = small_cfg()
    for model, sees_outside in ((ViT(cfg), False), (HybridViT(cfg).eval(), True)):
        x = torch.rand(1, 1, 28, 28, requires_grad=True)
        model.patch_embed(x)[0, 0].sum().backward()
        g = x.grad[0, 0].abs()
        inside = g[:4, :4].sum()
        outside = g.sum() - inside
        assert inside > 0
        assert (outside > 0) == sees_outside


def test_hybrid_learns_a_small_batch():
    torch.manual_seed(0)
    model = HybridViT(small_cfg())
    x, y = torch.rand(32, 1, 28, 28), torch.arange(32) % 10
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        loss = F.cross_entropy(model(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first  # random pixels, memorised: the stem and blocks all train


def test_same_seed_same_hybrid():
    torch.manual_seed(1)
    a = HybridViT(small_cfg())
    torch.manual_seed(1)
    b = HybridViT(small_cfg())
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb)
    assert any(k.startswith("patch_embed.convs") for k in a.state_dict())
