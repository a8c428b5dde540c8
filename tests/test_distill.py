import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from vitbook import distill


def test_soft_distillation_loss_matches_its_definition_on_a_hand_computed_example():
    cls = torch.tensor([[2.0, 0.0]])
    dist = torch.tensor([[1.0, 1.0]])
    teacher = torch.tensor([[0.0, 3.0]])
    y = torch.tensor([0])
    tau, alpha = 2.0, 0.5
    ce = math.log(1 + math.exp(-2))  # CE of [2, 0] for class 0
    p_t = [1 / (1 + math.exp(1.5)), 1 / (1 + math.exp(-1.5))]  # softmax([0, 3] / 2)
    p_s = [0.5, 0.5]  # softmax([1, 1] / 2)
    kl = sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s))
    expected = (1 - alpha) * ce + alpha * tau**2 * kl
    got = distill.distillation_loss(cls, dist, teacher, y, "soft", alpha, tau)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_hard_distillation_uses_the_teachers_argmax_as_a_label():
    cls = torch.tensor([[2.0, 0.0]])
    dist = torch.tensor([[0.5, 1.5]])
    teacher = torch.tensor([[-1.0, 4.0]])  # says class 1
    y = torch.tensor([0])
    expected = 0.5 * F.cross_entropy(cls, y) + 0.5 * F.cross_entropy(dist, torch.tensor([1]))
    assert distill.distillation_loss(cls, dist, teacher, y, "hard").item() == pytest.approx(
        expected.item()
    )
    assert distill.distillation_loss(cls, dist, teacher, y, "none").item() == pytest.approx(
        F.cross_entropy(cls, y).item()
    )
    with pytest.raises(ValueError):
        distill.distillation_loss(cls, dist, teacher, y, "medium")


def test_distilled_vit_has_two_prefix_tokens_and_averages_its_heads():
    torch.manual_seed(0)
    model = distill.DistilledViT(tiny_config()).eval()
    x = torch.rand(3, 1, 28, 28)
    tokens, maps = model.forward_features(x, return_attn=True)
    assert tokens.shape == (3, 18, 32) and maps[0].shape == (3, 4, 18, 18)
    c, d = model.forward_heads(x)
    torch.testing.assert_close(model(x), (c + d) / 2)
    assert not torch.allclose(c, d)  # two different heads on two different tokens


def test_student_loss_lets_gradients_reach_the_student_only():
    torch.manual_seed(0)
    teacher = distill.SmallCNN()
    student = distill.DistilledViT(tiny_config())
    loss_fn = distill.student_loss_fn(teacher, "soft")
    loss, logits = loss_fn(student, torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert logits.shape == (4, 10)
    assert student.dist_token.grad is not None and student.head_dist.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
