"""The benchmark's reporting (not its timings: those are never asserted in tests)."""

import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from vitbook import bench as cli
from vitbook import perf
from vitbook.recipes import benchmarks, mnist_config


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
    assert "after epoch 2, **12 s**" in perf.format_accuracy(fake_accuracy(), "r")
    text = perf.format_accuracy(fake_accuracy(reached=False), "r")
    assert "did **not** reach 98.5%" in text and "97.00%" in text


def test_format_throughput_lists_every_contender_with_its_ratios():
    res = {
        "label": "tiny", "batch": 8, "rounds": 3, "steps": 2, "compile_seconds": 4.0,
        "rows": [
            {"contender": "timm (eager)", "img_per_s": 100.0, "ratio_min": 1.0, "ratio_median": 1.0, "ratio_max": 1.0},
            {"contender": "vitbook", "img_per_s": 110.0, "ratio_min": 0.9, "ratio_median": 1.1, "ratio_max": 1.2},
        ],
    }  # fmt: skip
    text = perf.format_throughput(res)
    assert "| vitbook | 110 | 0.90 | 1.10 | 1.20 |" in text
    assert "took 4 s" in text


def test_bench_writes_each_part_to_its_file_one_level_under_the_pages_title(tmp_path, monkeypatch):
    # The book builds with warnings as errors; a jump from "#" to "###" is a MyST warning.
    monkeypatch.setattr(benchmarks, "chapter4_time_to_accuracy", lambda: fake_accuracy())
    cli.main(["--only", "time-to-98.5", "--out", str(tmp_path)])
    text = (tmp_path / "time-to-98.5.md").read_text()
    assert heading_levels(text) == [2]
    assert text.index("Measured on") < text.index("**chapter-4 recipe**")


def test_the_appendix_includes_every_part_the_bench_writes():
    book = Path(__file__).parent.parent / "book"
    page = (book / "appendix_benchmarks.md").read_text()
    for part in cli.PARTS:
        assert f"```{{include}} bench/{part}.md" in page, part
        assert heading_levels((book / "bench" / f"{part}.md").read_text())[0] == 2, part


def test_bench_cli_rejects_an_unknown_part(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--only", "nonsense"])
    assert "invalid choice" in capsys.readouterr().err


def test_best_hybrid_part_builds_the_hybrid_it_reports(tmp_path, monkeypatch):
    from vitbook.hybrid import HybridViT

    built = []

    def fake_run(target, recipe, build, load_data, augmentation):
        built.append(build())
        assert recipe.ema_decay == 0.9995
        return dict(fake_accuracy(reached=False), target=target, recipe=recipe.to_dict())

    monkeypatch.setattr(benchmarks, "time_to_accuracy", fake_run)
    cli.main(["--only", "best-hybrid", "--out", str(tmp_path)])
    (model,) = built
    assert isinstance(model, HybridViT) and model.patch_embed.stem == benchmarks.BEST_HYBRID_STEM
    assert model.cfg == benchmarks.BEST_HYBRID_CONFIG
    text = (tmp_path / "best-hybrid.md").read_text()
    assert heading_levels(text) == [2] and "## Best accuracy, hybrid ViT" in text
    assert "did **not** reach 99.6%" in text and '"stem (channels, stride)"' in text
    assert benchmarks.BEST_HYBRID_RECIPE.epochs <= 15  # the target's epoch limit


def test_best_hybrid_seed_replaces_only_the_seed(monkeypatch):
    seen = []
    monkeypatch.setattr(benchmarks, "time_to_accuracy", lambda *a, **k: seen.append(a[1]) or {})
    benchmarks.best_hybrid_accuracy(seed=1)
    benchmarks.best_hybrid_accuracy()
    assert seen[0] == replace(benchmarks.BEST_HYBRID_RECIPE, seed=1)
    assert seen[1] == benchmarks.BEST_HYBRID_RECIPE and benchmarks.BEST_HYBRID_RECIPE.seed == 0


def test_format_accuracy_names_the_weight_average_and_the_trained_weights():
    res = dict(fake_accuracy(), ema_decay=0.9995, per_epoch_trained_weights=[(1, 0.96), (2, 0.98)])
    text = perf.format_accuracy(res, "r")
    assert "moving average of the weights (decay 0.9995" in text
    assert "| epoch | test accuracy | seconds since start | trained weights |" in text
    assert "| 1 | 97.00% | 10 | 96.00% |" in text and "| 2 | 98.76% | 20 | 98.00% |" in text


def test_time_to_accuracy_judges_the_weight_average_when_asked():
    from vitbook.hybrid import HybridViT
    from vitbook.train import Recipe

    g = torch.Generator().manual_seed(0)
    tiny = (torch.rand(64, 1, 28, 28, generator=g), torch.arange(64) % 10)
    cfg = mnist_config(patch_size=4, dim=16, depth=1, heads=2, mlp_dim=32)
    recipe = Recipe(epochs=2, batch_size=32, ema_decay=0.5)
    res = perf.time_to_accuracy(2.0, recipe, lambda: HybridViT(cfg), lambda: (tiny, tiny))
    assert not res["reached"] and [e for e, _, _ in res["per_epoch"]] == [1, 2]
    assert res["ema_decay"] == 0.5 and len(res["per_epoch_trained_weights"]) == 2
    assert res["final_accuracy"] == res["per_epoch"][-1][1]
    plain = perf.time_to_accuracy(
        2.0, replace(recipe, ema_decay=None), lambda: HybridViT(cfg), lambda: (tiny, tiny)
    )
    assert "ema_decay" not in plain and len(plain["per_epoch"]) == 2
