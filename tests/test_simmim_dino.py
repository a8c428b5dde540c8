"""SimMIM and DINO, and the encoder API they stand on: mask tokens inside the encoder, inputs of
another size through interpolated positions, and code that asks the model how many prefix
tokens it has."""

import pytest
import torch
from conftest import tiny_config

from vitbook import attention, dino, simmim
from vitbook.distill import DistilledViT
from vitbook.model import ViT
from vitbook.patches import patchify, resize_pos_grid


def test_embed_puts_the_mask_token_at_hidden_patches_and_keeps_the_rest():
    model = ViT(tiny_config())
    x = torch.rand(2, 1, 28, 28)
    token = torch.randn(1, 1, model.cfg.dim)
    mask = torch.zeros(2, model.cfg.num_patches)
    mask[0, 3] = mask[1, 0] = 1
    plain, masked = model.embed(x), model.embed(x, mask=mask, mask_token=token)
    pos = model.pos_embed[:, 1:]
    assert torch.allclose(masked[0, 3], token[0, 0] + pos[0, 3], atol=1e-6)
    assert torch.allclose(masked[1, 0], token[0, 0] + pos[0, 0], atol=1e-6)
    keep = mask == 0
    assert torch.equal(masked[keep], plain[keep])
    with pytest.raises(ValueError, match="mask_token"):
        model.embed(x, mask=mask)


def test_embed_is_patch_embedding_plus_positions():
    model = ViT(tiny_config())
    x = torch.rand(3, 1, 28, 28)
    want = model.patch_embed(x) + model.pos_embed[:, 1:]
    assert torch.equal(model.embed(x), want)


def test_small_crops_go_through_the_same_model_with_interpolated_positions():
    model = ViT(tiny_config(patch_size=4))
    crops = torch.rand(5, 1, 12, 12)
    with pytest.raises(ValueError, match="28x28"):
        model.features(crops)
    f = model.features(crops, any_size=True)
    assert f.shape == (5, model.cfg.dim)
    pos = model.positions(3)
    assert pos.shape == (1, 1 + 9, model.cfg.dim)
    assert torch.equal(pos[:, :1], model.pos_embed[:, :1])  # the class token's position kept
    assert torch.equal(resize_pos_grid(model.pos_embed, 7), model.pos_embed)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model.features(torch.rand(2, 1, 10, 10), any_size=True)


def test_code_after_the_prefix_asks_the_model_how_many_prefix_tokens_it_has():
    student = DistilledViT(tiny_config())
    tokens, maps = student.forward_features(torch.rand(2, 1, 28, 28), return_attn=True)
    assert student.patch_tokens(tokens).shape[1] == student.cfg.num_patches
    cls = attention.cls_attention(torch.stack(maps), student.cfg.grid_size)
    assert cls.shape[-2:] == (student.cfg.grid_size, student.cfg.grid_size)
    mean_pooled = ViT(tiny_config(pool="mean"), num_prefix_tokens=2)
    t, _ = mean_pooled.forward_features(torch.rand(1, 1, 28, 28))
    assert torch.allclose(mean_pooled.pool(t), t[:, 2:].mean(1))


def test_simmim_scores_only_the_hidden_patches_with_an_l1_loss():
    torch.manual_seed(0)
    model = simmim.SimMIM(ViT(tiny_config(patch_size=4)), mask_ratio=0.5)
    x = torch.rand(4, 1, 28, 28)
    loss, pred, mask = model(x)
    assert mask.sum(1).eq(round(0.5 * 49)).all()
    target = patchify(x, 4)
    manual = ((pred - target).abs().mean(-1) * mask).sum() / mask.sum()
    assert torch.allclose(loss, manual)
    # the encoder saw every position: its output depends on the mask token
    before = model.predict(x, mask)
    with torch.no_grad():
        model.mask_token.add_(1.0)
    assert not torch.allclose(model.predict(x, mask), before)


def test_simmim_learns_to_fill_in():
    torch.manual_seed(0)
    model = simmim.SimMIM(ViT(tiny_config(patch_size=4)))
    x = torch.zeros(16, 1, 28, 28)
    x[:, :, 8:20, 12:16] = 1.0  # one bar, the same in every image
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss, _, _ = model(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first
    err = model.hidden_error(x)
    assert err["model"] < err["flat guess"]


def test_random_crops_cover_a_part_of_the_image_at_the_size_asked():
    x = torch.zeros(3, 1, 28, 28)
    x[:, :, :14] = 1.0  # the top half white
    crops = dino.random_crops(x, 4, 12, (0.1, 0.3))
    assert crops.shape == (12, 1, 12, 12) and 0 <= crops.min() and crops.max() <= 1
    assert len({round(c.mean().item(), 3) for c in crops}) > 1  # crops differ


def test_dino_switches_and_teacher_average():
    torch.manual_seed(0)
    enc = ViT(tiny_config(patch_size=4))
    full = dino.DINO(enc, out_dim=32, local_crops=2, local_size=12)
    blind = dino.DINO(ViT(tiny_config(patch_size=4)), out_dim=32, centering=False, sharpening=False)
    assert blind.teacher_temp == blind.student_temp and full.teacher_temp < full.student_temp
    x = torch.rand(8, 1, 28, 28)
    loss = full(x)
    loss.backward()
    assert loss.item() > 0 and full.center.abs().sum() > 0  # the centre moved
    blind(x)
    assert blind.center.abs().sum() == 0  # no centering: the centre is never used or moved
    with torch.no_grad():
        for p in full.encoder.parameters():
            p.add_(1.0)
    before = next(full.teacher_encoder.parameters()).clone()
    assert full.update_teacher(0.0) == pytest.approx(0.99)
    after = next(full.teacher_encoder.parameters())
    assert torch.allclose(after, 0.99 * before + 0.01 * next(full.encoder.parameters()))
    out = dino.output_entropy(full, x)
    assert 0 <= out["entropy"] <= out["max_entropy"] and 0 < out["top_share"] <= 1
