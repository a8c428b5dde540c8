import pytest
import torch

from vitbook import synthetic, transforms


def test_generator_is_deterministic_for_a_seed_and_balanced():
    a = synthetic.digits(200, seed=1)
    b = synthetic.digits(200, seed=1)
    c = synthetic.digits(200, seed=2)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (200, 1, 28, 28) and a.images.dtype == torch.uint8
    assert torch.bincount(a.labels, minlength=10).tolist() == [20] * 10
    x, y = a[0]
    assert x.shape == (1, 28, 28) and 0 <= x.min() and x.max() <= 1 and 0 <= y < 10


def test_glyphs_come_from_matplotlib_fonts_and_sit_in_mnists_frame():
    assert len(synthetic.fonts()) >= 10
    bank, labels, names = synthetic.glyph_bank()
    assert set(labels.tolist()) == set(range(10))
    # MNIST's recipe: the ink fits a 20x20 box, and its centre of mass is the frame's centre
    ink = bank[:, 0] > 0.05
    heights = ink.any(dim=2).sum(1)
    widths = ink.any(dim=1).sum(1)
    assert heights.max() <= 21 and widths.max() <= 21 and torch.maximum(heights, widths).min() >= 19
    mass = bank[:, 0]
    r = torch.arange(28.0)
    cy = (mass.sum(2) * r).sum(1) / mass.sum((1, 2))
    cx = (mass.sum(1) * r).sum(1) / mass.sum((1, 2))
    assert ((cy - 13.5).abs() < 1.5).all() and ((cx - 13.5).abs() < 1.5).all()


def test_synthetic_digits_look_like_digits_to_a_simple_template_match():
    # Nearest class-mean on synthetic data classifies held-out synthetic digits well above
    # chance: the labels match the pictures.
    train, test = synthetic.digits(2000, seed=0), synthetic.digits(500, seed=1)
    xt, yt = train.tensors()
    means = torch.stack([xt[yt == d].mean(0).flatten() for d in range(10)])
    xs, ys = test.tensors()
    pred = torch.cdist(xs.flatten(1), means).argmin(1)
    assert (pred == ys).float().mean() > 0.6


@pytest.mark.parametrize("kind", list(transforms.CORRUPTIONS))
def test_corruptions_are_deterministic_change_the_image_and_keep_range(kind):
    x = synthetic.digits(16, seed=0).tensors()[0]
    for severity in transforms.CORRUPTIONS[kind][1]:
        a = transforms.corrupt(x, kind, severity, seed=3)
        b = transforms.corrupt(x, kind, severity, seed=3)
        assert torch.equal(a, b) and a.shape == x.shape
        assert 0 <= a.min() and a.max() <= 1
        assert (a - x).abs().mean() > 0.005


def test_unknown_corruption_is_refused():
    with pytest.raises(ValueError, match="unknown corruption"):
        transforms.corrupt(torch.zeros(1, 1, 28, 28), "fog", 1)


def test_gaussian_blur_keeps_mass_and_zero_sigma_changes_nothing():
    x = torch.zeros(2, 1, 28, 28)
    x[:, :, 14, 14] = 1
    y = transforms.gaussian_blur(x, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(y[0], x[0], atol=1e-6, rtol=0)
    assert y[1].sum().item() == pytest.approx(1.0, abs=1e-5) and y[1].max() < 0.5
