import random

import pytest
import torch
from conftest import tiny_config

from vitbook import ssl
from vitbook.model import ViT
from vitbook.patches import patchify


def encoder(**kw):
    return ViT(tiny_config(patch_size=4, **kw))  # a 7x7 grid of patches


def test_random_masking_keeps_exactly_a_quarter_and_restores_order():
    x = torch.arange(2 * 49, dtype=torch.float).view(2, 49, 1).expand(2, 49, 3)
    kept, mask, ids_restore = ssl.random_masking(x, 0.75)
    assert kept.shape == (2, 12, 3)
    assert mask.sum(1).tolist() == [37, 37]
    for b in range(2):  # the kept tokens are exactly the unmasked positions
        assert sorted(kept[b, :, 0].long().tolist()) == [
            i + 49 * b for i in (mask[b] == 0).nonzero().flatten().tolist()
        ]
    # restoring: unshuffle a shuffled sequence back to patch order
    ids_shuffle = ids_restore.argsort(1)
    shuffled = torch.gather(x, 1, ids_shuffle[..., None].expand(-1, -1, 3))
    assert torch.equal(torch.gather(shuffled, 1, ids_restore[..., None].expand(-1, -1, 3)), x)


def test_mae_loss_counts_only_the_masked_patches():
    torch.manual_seed(0)
    mae = ssl.MAE(encoder(), decoder_dim=32, norm_pix_loss=False)
    imgs = torch.rand(2, 1, 28, 28)
    _, pred, mask = mae(imgs)
    assert pred.shape == (2, 49, 16) and mask.shape == (2, 49)
    target = patchify(imgs, 4)
    perfect_on_masked = torch.where(mask[..., None].bool(), target, torch.zeros_like(target) + 9)
    assert mae.loss(imgs, perfect_on_masked, mask).item() == 0  # visible patches do not count
    wrong_on_masked = torch.where(mask[..., None].bool(), target + 1, target)
    assert mae.loss(imgs, wrong_on_masked, mask).item() == pytest.approx(1.0)


def test_mae_targets_are_normalised_per_patch():
    mae = ssl.MAE(encoder(), decoder_dim=32, norm_pix_loss=True)
    t = mae.targets(torch.rand(2, 1, 28, 28))
    torch.testing.assert_close(t.mean(-1), torch.zeros(2, 49), atol=1e-5, rtol=0)
    torch.testing.assert_close(t.var(-1, unbiased=False), torch.ones(2, 49), atol=1e-3, rtol=0)


def test_mae_reconstruction_shapes_and_pasted_visible_patches():
    torch.manual_seed(0)
    mae = ssl.MAE(encoder(), decoder_dim=32)
    imgs = torch.rand(3, 1, 28, 28)
    torch.manual_seed(1)
    masked, recon, pasted = mae.reconstruct(imgs)
    assert masked.shape == recon.shape == pasted.shape == imgs.shape
    torch.manual_seed(1)
    _, _, mask = mae(imgs)
    visible = (mask == 0)[..., None].expand(-1, -1, 16)
    assert torch.equal(patchify(pasted, 4)[visible], patchify(imgs, 4)[visible])


def test_multiblock_masks_never_let_context_see_a_target():
    ctx, targets = ssl.multiblock_masks(8, 7, num_targets=4, rng=random.Random(0))
    assert ctx.shape[0] == 8 and len(targets) == 4
    assert all(t.shape == targets[0].shape for t in targets)  # one target shape per batch
    for b in range(8):
        hidden = set().union(*(t[b].tolist() for t in targets))
        assert hidden.isdisjoint(ctx[b].tolist())
        assert len(set(ctx[b].tolist())) == ctx.shape[1] >= 1
        assert all(0 <= i < 49 for i in ctx[b].tolist() + list(hidden))


def test_ema_update_follows_its_formula():
    torch.manual_seed(0)
    model = ssl.IJEPA(encoder(), ema=(0.9, 1.0))
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(1.0)
    before = [p.clone() for p in model.target_encoder.parameters()]
    m = model.update_target(progress=0.5)
    assert m == pytest.approx(0.95)
    for t0, t1, c in zip(before, model.target_encoder.parameters(), model.encoder.parameters()):
        torch.testing.assert_close(t1, 0.95 * t0 + 0.05 * c)
    assert not any(p.requires_grad for p in model.target_encoder.parameters())


def test_ijepa_loss_trains_the_context_encoder_and_predictor_only():
    torch.manual_seed(0)
    model = ssl.IJEPA(encoder())
    loss = model(torch.rand(4, 1, 28, 28))
    loss.backward()
    assert loss.item() > 0
    assert model.encoder.blocks[0].attn.qkv.weight.grad is not None
    assert model.predictor.proj.weight.grad is not None
    assert all(p.grad is None for p in model.target_encoder.parameters())
    assert model.encoder.head.weight.grad is None  # the classifier head plays no part
    assert set(model.last_stats) == {"context_std", "target_std"}


def test_collapse_stats_is_zero_for_an_image_blind_encoder_and_positive_for_a_random_one():
    from vitbook import ssl

    enc = ViT(tiny_config(pool="mean"))
    x = torch.rand(64, 1, 28, 28)
    blind = ssl.collapse_stats(ssl.image_blind(enc), x)
    seeing = ssl.collapse_stats(enc, x)
    assert blind["spread"] < 1e-6 and blind["rank"] == 0.0
    assert seeing["spread"] > 0.01 and seeing["rank"] > 2


def test_token_spread_rewards_an_image_blind_encoder_which_is_why_it_is_not_the_check():
    from vitbook import ssl

    enc = ViT(tiny_config(pool="mean"))
    x = torch.rand(64, 1, 28, 28)
    assert ssl.token_spread(ssl.image_blind(enc), x) > 0.1  # positions alone look like spread


def test_hidden_error_of_a_silent_decoder_equals_the_predict_zero_baseline():
    from vitbook import ssl

    mae = ssl.MAE(ViT(tiny_config(patch_size=4, pool="mean")), decoder_dim=16, decoder_depth=1,
                  decoder_heads=2, norm_pix_loss=True, norm_eps=1e-2)  # fmt: skip
    with torch.no_grad():
        mae.decoder_pred.weight.zero_()
        mae.decoder_pred.bias.zero_()
    err = mae.hidden_error(torch.rand(32, 1, 28, 28), 0.75)
    assert abs(err["model"] - err["predict 0"]) < 1e-9 and err["predict 0"] > 0.5
