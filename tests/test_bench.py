"""The benchmark's reporting (not its timings: those are never asserted in tests)."""

import re

import pytest

from vitbook import bench


def heading_levels(text):
    return [len(m.group(1)) for m in re.finditer(r"^(#{1,6}) ", text, re.M)]


def fake_accuracy(reached=True):
    return {
        "target": 0.985,
        "reached": reached,
        "seconds_to_target": 12.0 if reached else None,
        "epoch_at_target": 2 if reached else None,
        "final_accuracy": 0.9876 if reached else 0.97,
        "total_seconds": 20.0,
        "per_epoch": [(1, 0.97, 10.0), (2, 0.9876, 20.0)],
        "recipe": {"epochs": 2},
    }


def test_format_accuracy_says_whether_the_target_was_reached():
    assert "after epoch 2, **12 s**" in bench.format_accuracy(fake_accuracy(), "r")
    text = bench.format_accuracy(fake_accuracy(reached=False), "r")
    assert "did **not** reach 98.5%" in text and "97.00%" in text


def test_format_throughput_lists_every_contender_with_its_ratios():
    res = {
        "label": "tiny", "batch": 8, "rounds": 3, "steps": 2, "compile_seconds": 4.0,
        "rows": [
            {"contender": "timm (eager)", "img_per_s": 100.0, "ratio_min": 1.0, "ratio_median": 1.0, "ratio_max": 1.0},
            {"contender": "vitbook", "img_per_s": 110.0, "ratio_min": 0.9, "ratio_median": 1.1, "ratio_max": 1.2},
        ],
    }  # fmt: skip
    text = bench.format_throughput(res)
    assert "| vitbook | 110 | 0.90 | 1.10 | 1.20 |" in text
    assert "took 4 s" in text


def test_write_section_replaces_its_own_block_and_keeps_headings_consecutive(tmp_path, monkeypatch):
    page = tmp_path / "appendix.md"
    page.write_text("# Benchmarks\n\nIntro.\n")
    monkeypatch.setattr(bench, "RESULTS", page)
    bench.write_section("best", "## Best accuracy\n\nfirst")
    bench.write_section("throughput", "## Throughput\n\nx")
    bench.write_section("best", "## Best accuracy\n\nsecond")
    text = page.read_text()
    assert "first" not in text and text.count("## Best accuracy") == 1 and "second" in text
    assert text.index("second") < text.index("Throughput")  # replaced in place, not re-appended
    levels = heading_levels(text)
    assert levels[0] == 1 and all(b - a <= 1 for a, b in zip(levels, levels[1:]))


def test_bench_writes_its_sections_one_level_under_the_pages_title(tmp_path, monkeypatch):
    # The book builds with warnings as errors; a jump from "#" to "###" is a MyST warning.
    page = tmp_path / "appendix.md"
    page.write_text("# Benchmarks\n\nIntro.\n")
    monkeypatch.setattr(bench, "RESULTS", page)
    monkeypatch.setattr(bench, "time_to_accuracy", lambda target: fake_accuracy())
    bench.main(["--only", "time-to-98.5", "--write"])
    text = page.read_text()
    assert heading_levels(text) == [1, 2]
    section = text[text.index("## Time to 98.5%") :]
    assert section.index("Measured on") < section.index("**chapter-4 recipe**")


def test_bench_cli_rejects_an_unknown_part(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--only", "nonsense"])
    assert "invalid choice" in capsys.readouterr().err


def test_best_hybrid_part_builds_the_hybrid_it_reports(tmp_path, monkeypatch):
    from vitbook.hybrid import HybridViT

    built = []

    def fake_run(target, recipe, cfg, build, ema_decay):
        built.append(build(cfg))
        assert ema_decay == bench.BEST_HYBRID_EMA
        return dict(fake_accuracy(reached=False), target=target, recipe=recipe)

    page = tmp_path / "appendix.md"
    page.write_text("# Benchmarks\n")
    monkeypatch.setattr(bench, "RESULTS", page)
    monkeypatch.setattr(bench, "time_to_accuracy", fake_run)
    bench.main(["--only", "best-hybrid", "--write"])
    (model,) = built
    assert isinstance(model, HybridViT) and model.patch_embed.stem == bench.BEST_HYBRID_STEM
    assert model.cfg.to_dict() == bench.BEST_HYBRID_CONFIG
    text = page.read_text()
    assert heading_levels(text) == [1, 2] and "## Best accuracy, hybrid ViT" in text
    assert "did **not** reach 99.6%" in text and '"stem (channels, stride)"' in text
    assert bench.BEST_HYBRID_RECIPE["epochs"] <= 15  # the target's epoch limit


def test_best_hybrid_seed_replaces_only_the_seed(monkeypatch):
    seen = []
    monkeypatch.setattr(bench, "time_to_accuracy", lambda *a, **k: seen.append(a[1]) or {})
    bench.best_hybrid_accuracy(seed=1)
    bench.best_hybrid_accuracy()
    assert seen[0] == {**bench.BEST_HYBRID_RECIPE, "seed": 1}
    assert seen[1] == bench.BEST_HYBRID_RECIPE and bench.BEST_HYBRID_RECIPE["seed"] == 0


def test_weight_average_blends_weights_and_batchnorm_statistics():
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    avg = bench.WeightAverage(net, decay=0.1)  # below the warm-up's first 2/11: d = 0.1
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
    torch = pytest.importorskip("torch")
    bn = torch.nn.BatchNorm1d(4)
    avg = bench.WeightAverage(bn, decay=0.9995)
    with torch.no_grad():
        bn.running_var.fill_(0.02)
    for _ in range(100):
        avg.update()
    # what is left of the start is the product of (1 + t) / (10 + t): about 1e-11 after 100
    assert torch.allclose(avg.module.running_var, torch.full((4,), 0.02), rtol=1e-6)


@pytest.mark.parametrize("decay", [0.0, 1.0, 1.5])
def test_weight_average_rejects_a_decay_outside_0_1(decay):
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match="between 0 and 1"):
        bench.WeightAverage(torch.nn.Linear(2, 2), decay)


def test_format_accuracy_names_the_weight_average_and_the_trained_weights():
    res = dict(fake_accuracy(), ema_decay=0.9995, per_epoch_trained_weights=[(1, 0.96), (2, 0.98)])
    text = bench.format_accuracy(res, "r")
    assert "moving average of the weights (decay 0.9995" in text
    assert "the trained weights themselves scored: 1: 96.00%, 2: 98.00%." in text


def test_time_to_accuracy_judges_the_weight_average_when_asked(monkeypatch):
    torch = pytest.importorskip("torch")
    from vitbook import zoo
    from vitbook.hybrid import HybridViT

    g = torch.Generator().manual_seed(0)
    tiny = (torch.rand(64, 1, 28, 28, generator=g), torch.arange(64) % 10)
    monkeypatch.setattr(bench.data, "mnist", lambda split: tiny)
    cfg = zoo.mnist_config(patch_size=4, dim=16, depth=1, heads=2, mlp_dim=32)
    recipe = dict(zoo.MNIST_RECIPE, epochs=2, batch_size=32, augment=False)
    res = bench.time_to_accuracy(2.0, recipe, cfg, build=HybridViT, ema_decay=0.5)
    assert not res["reached"] and [e for e, _, _ in res["per_epoch"]] == [1, 2]
    assert res["ema_decay"] == 0.5 and len(res["per_epoch_trained_weights"]) == 2
    assert res["final_accuracy"] == res["per_epoch"][-1][1]
    plain = bench.time_to_accuracy(2.0, recipe, cfg, build=HybridViT)
    assert "ema_decay" not in plain and len(plain["per_epoch"]) == 2
