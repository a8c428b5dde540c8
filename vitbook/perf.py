"""Measured performance, the library side of ``python -m vitbook.bench``.

Three measurements, each against a peer measured in the same run on the same machine:

* ``throughput``: training images per second (forward + backward + AdamW step) of vitbook's ViT
  and timm's ``VisionTransformer`` of the same configuration, same weights and same batch, in one
  process, alternating between them round after round; reported as the vitbook/timm ratio
  (min / median / max over rounds). vitbook runs eager with each attention path, and compiled
  (``torch.compile``, its compile time reported separately).
* ``time-to-98.5``: wall time from nothing (data loading, model building, training, evaluation
  after every epoch) until MNIST test accuracy first reaches 98.5%, with the chapter-4 recipe.
* ``best``: the best-accuracy recipe for the plain ViT, epochs and wall time to its final test
  accuracy; ``best-hybrid`` the same for the paper's hybrid (a convolutional stem in front of the
  same Transformer, `vitbook.hybrid`).

This module measures and formats; ``python -m vitbook.bench`` (`vitbook.bench`) runs the book's
benchmark recipes (`vitbook.recipes.benchmarks`) with it and prints markdown, or with ``--out DIR``
writes one file a part, which the book's appendix includes (``make bench``). Timed numbers never
go into tests; they live here.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import train
from .claims import cpu_name
from .model import ViT, ViTConfig


def machine() -> str:
    cpu = cpu_name(platform.processor() or platform.machine())
    return f"{cpu}, {os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}, Python {platform.python_version()}"


# ---------------------------------------------------------------------------------------------
# Throughput against timm


def timm_twin(cfg: ViTConfig):
    """timm's VisionTransformer with the same architecture (and, after loading, the same weights)."""
    from timm.models.vision_transformer import VisionTransformer

    if cfg.pool != "cls" or cfg.pos_embed != "learned":
        raise ValueError("the timm comparison uses class-token pooling and learned positions")
    return VisionTransformer(
        img_size=cfg.image_size, patch_size=cfg.patch_size, in_chans=cfg.in_channels, num_classes=cfg.num_classes,
        embed_dim=cfg.dim, depth=cfg.depth, num_heads=cfg.heads, mlp_ratio=cfg.mlp_dim / cfg.dim, qkv_bias=cfg.qkv_bias,
    )  # fmt: skip


def _train_step_fn(model, x, y):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def throughput(
    cfg: ViTConfig,
    batch: int,
    rounds: int = 7,
    steps: int = 10,
    compile: bool = True,
    label: str = "",
) -> dict:
    """Images per second for each contender, alternating contenders within every round."""
    torch.manual_seed(0)
    x = torch.rand(batch, cfg.in_channels, cfg.image_size, cfg.image_size)
    y = torch.randint(0, cfg.num_classes, (batch,))
    reference = ViT(replace(cfg, fused_attn=True))
    contenders = {}
    t = timm_twin(cfg)
    t.load_state_dict(reference.state_dict())
    contenders["timm (eager)"] = t
    for fused in (True, False):
        m = ViT(replace(cfg, fused_attn=fused))
        m.load_state_dict(reference.state_dict())
        contenders[f"vitbook eager, {'fused' if fused else 'explicit'} attention"] = m
    steps_fns = {name: _train_step_fn(m, x, y) for name, m in contenders.items()}
    compile_seconds = None
    if compile:
        fast = ViT(replace(cfg, fused_attn=False))
        fast.load_state_dict(reference.state_dict())
        compiled = torch.compile(fast)
        steps_fns["vitbook compiled, explicit attention"] = _train_step_fn(compiled, x, y)
        start = time.perf_counter()
        for _ in range(3):  # compile forward and backward, then settle
            steps_fns["vitbook compiled, explicit attention"]()
        compile_seconds = time.perf_counter() - start
    for fn in steps_fns.values():  # warm up every contender
        for _ in range(3):
            fn()
    rates = {name: [] for name in steps_fns}
    for r in range(rounds):
        order = list(steps_fns) if r % 2 == 0 else list(reversed(steps_fns))
        for name in order:
            start = time.perf_counter()
            for _ in range(steps):
                steps_fns[name]()
            rates[name].append(batch * steps / (time.perf_counter() - start))
    base = rates["timm (eager)"]
    rows = []
    for name, rs in rates.items():
        ratios = [a / b for a, b in zip(rs, base)]
        rows.append(
            {
                "contender": name,
                "img_per_s": statistics.median(rs),
                "ratio_min": min(ratios),
                "ratio_median": statistics.median(ratios),
                "ratio_max": max(ratios),
            }
        )
    return {
        "label": label,
        "batch": batch,
        "rounds": rounds,
        "steps": steps,
        "compile_seconds": compile_seconds,
        "rows": rows,
    }


# ---------------------------------------------------------------------------------------------
# Accuracy against time


def time_to_accuracy(
    target: float,
    recipe: train.Recipe,
    build: Callable[[], nn.Module],
    load_data: Callable[[], tuple],
    augmentation=None,
    device=None,
) -> dict:
    """Seconds from nothing until the validation accuracy after an epoch first reaches
    ``target``: ``load_data()`` gives (train set, test set) and is timed, like ``build()``, the
    training with ``recipe`` and the evaluation after every epoch. With ``recipe.ema_decay``, the
    model judged is the moving average of the weights, and the trained weights' accuracy is
    reported beside it."""
    start = time.perf_counter()
    train_set, test_set = load_data()
    train.seed_everything(recipe.seed)
    model = build().to(train.pick_device(device))
    reached, per_epoch, trained = {}, [], []

    def on_epoch_end(record):
        acc, seconds = record["val_acc"], time.perf_counter() - start
        per_epoch.append((record["epoch"], round(acc, 4), round(seconds, 1)))
        if "val_acc_trained" in record:
            trained.append((record["epoch"], round(record["val_acc_trained"], 4)))
        print(  # a line an epoch: the best-accuracy run is long, and this says how it goes
            f"  epoch {record['epoch']}/{recipe.epochs}: test accuracy {100 * acc:.2f}%"
            + (f" (weight average; trained weights {100 * trained[-1][1]:.2f}%)" if trained else "")
            + f", {seconds:.0f} s",
            flush=True,
        )
        if "seconds" not in reached and acc >= target:
            reached.update(seconds=seconds, epoch=record["epoch"], accuracy=acc)

    train.fit(
        model, train_set, test_set, recipe, augmentation=augmentation,
        on_epoch_end=on_epoch_end, progress=False,
    )  # fmt: skip
    out = {
        "target": target,
        "reached": bool(reached),
        "seconds_to_target": reached.get("seconds"),
        "epoch_at_target": reached.get("epoch"),
        "final_accuracy": per_epoch[-1][1],
        "total_seconds": time.perf_counter() - start,
        "per_epoch": per_epoch,
        "recipe": recipe.to_dict(),
    }
    if recipe.ema_decay:
        out["ema_decay"] = recipe.ema_decay
        out["per_epoch_trained_weights"] = trained
    return out


# ---------------------------------------------------------------------------------------------
# Training levers: what makes a training run cheaper, before and after, in one run


def step_levers(cfg: ViTConfig, batch: int = 128, rounds: int = 5, steps: int = 10) -> dict:
    """Seconds per training step of the same model, weights and batch: fp32 eager (the
    baseline), bf16 autocast on the CPU, and `torch.compile` (its compile time apart);
    alternating within each round. Returns each lever's median step time and its ratio to
    the baseline."""
    torch.manual_seed(0)
    x = torch.rand(batch, cfg.in_channels, cfg.image_size, cfg.image_size)
    y = torch.randint(0, cfg.num_classes, (batch,))
    reference = ViT(cfg)

    def twin():
        m = ViT(cfg)
        m.load_state_dict(reference.state_dict())
        return m

    def autocast_step(model):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    fns = {"fp32, eager (baseline)": _train_step_fn(twin(), x, y),
           "bf16 autocast, eager": autocast_step(twin())}  # fmt: skip
    compiled = _train_step_fn(torch.compile(twin()), x, y)
    start = time.perf_counter()
    for _ in range(3):
        compiled()
    compile_seconds = time.perf_counter() - start
    fns["fp32, torch.compile"] = compiled
    for fn in fns.values():
        for _ in range(3):
            fn()
    times = {name: [] for name in fns}
    for r in range(rounds):
        for name in list(fns) if r % 2 == 0 else list(reversed(fns)):
            t0 = time.perf_counter()
            for _ in range(steps):
                fns[name]()
            times[name].append((time.perf_counter() - t0) / steps)
    base = statistics.median(times["fp32, eager (baseline)"])
    return {
        "rows": [
            {"lever": n, "ms": 1000 * statistics.median(t), "ratio": statistics.median(t) / base}
            for n, t in times.items()
        ],
        "compile_seconds": compile_seconds,
        "batch": batch,
    }


def format_levers(res: dict) -> str:
    """The step levers and the schedules, as markdown tables."""
    steps = res["steps"]
    lines = [
        f"**Step time**, the chapter-4 ViT, batch {steps['batch']} (median over alternating rounds):",
        "",
        "| lever | ms per step | vs fp32 eager |",
        "|---|---:|---:|",
    ]
    for r in steps["rows"]:
        lines.append(f"| {r['lever']} | {r['ms']:.1f} | {r['ratio']:.2f}x |")
    lines += [
        "",
        f"`torch.compile` took {steps['compile_seconds']:.0f} s before its first step: at this "
        "model's size it pays back only on runs of many minutes.",
        "",
        "**Schedules**, the chapter-4 model trained from nothing with each recipe (same seed, same run):",
        "",
        "| recipe | epochs | seconds | final test accuracy | 98.5% first after |",
        "|---|---:|---:|---:|---|",
    ]
    for name, r in res["schedules"].items():
        at = (
            f"epoch {r['epoch_at_target']}, {r['seconds_to_target']:.0f} s"
            if r["reached"]
            else "not reached"
        )
        lines.append(
            f"| {name} | {len(r['per_epoch'])} | {r['total_seconds']:.0f} | {100 * r['final_accuracy']:.2f}% | {at} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Reporting


def format_throughput(res: dict) -> str:
    lines = [
        f"**{res['label']}**, batch {res['batch']}, {res['rounds']} rounds of {res['steps']} steps, contenders alternating within each round",
        "",
        "| contender | images/s (median) | vs timm: min | median | max |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['contender']} | {r['img_per_s']:.0f} | {r['ratio_min']:.2f} | {r['ratio_median']:.2f} | {r['ratio_max']:.2f} |"
        )
    if res["compile_seconds"] is not None:
        lines.append("")
        lines.append(
            f"`torch.compile` took {res['compile_seconds']:.0f} s before the first compiled step (not in the rates above)."
        )
    return "\n".join(lines)


def epoch_table(per_epoch, trained=None) -> str:
    """Per-epoch results as a markdown table: epoch, test accuracy, seconds since the start (and
    the trained weights' accuracy where a weight average was judged)."""
    head = "| epoch | test accuracy | seconds since start |" + (
        " trained weights |" if trained else ""
    )
    rule = "|---:|---:|---:|" + ("---:|" if trained else "")
    rows = [head, rule]
    extra = dict(trained or [])
    for e, a, t in per_epoch:
        cells = f"| {e} | {100 * a:.2f}% | {t:.0f} |"
        rows.append(cells + (f" {100 * extra[e]:.2f}% |" if trained else ""))
    return "\n".join(rows)


def format_accuracy(res: dict, title: str) -> str:
    if res["reached"]:
        head = f"reached {100 * res['target']:.1f}% after epoch {res['epoch_at_target']}, **{res['seconds_to_target']:.0f} s** from start"
    else:
        head = f"did **not** reach {100 * res['target']:.1f}%"
    judged = ""
    if "ema_decay" in res:
        judged = (
            f" The model judged is the moving average of the weights (decay {res['ema_decay']}, "
            f"warmed up as min(decay, (1 + t) / (10 + t)) over the t steps so far, updated "
            f"after every step); the last column is the trained weights themselves."
        )
    return (
        f"**{title}**: {head}; final test accuracy {100 * res['final_accuracy']:.2f}% after "
        f"{len(res['per_epoch'])} epochs, {res['total_seconds']:.0f} s in all (data loading, model building, "
        f"training and evaluation after every epoch included).{judged}\n\n"
        + epoch_table(res["per_epoch"], res.get("per_epoch_trained_weights"))
        + "\n\n"
        f"Recipe: `{json.dumps(res['recipe'])}`"
        + (f"; model: `{json.dumps(res['config'])}`" if "config" in res else "")
    )
