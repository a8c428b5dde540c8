"""``python -m vitbook.bench [--quick] [--only PART] [--out DIR]``: run the book's benchmarks.

The measuring is `vitbook.perf`'s, the recipes are `vitbook.recipes.benchmarks`'; this module
only runs them and writes the markdown.

Each part prints a markdown section (a heading, how and where it was measured, the table);
with ``--out DIR`` it is also written to ``DIR/<part>.md``. ``make bench`` passes
``--out book/bench``, the files the appendix page includes.
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

from vitbook import perf
from vitbook.recipes import benchmarks, mnist_config

PARTS = ["throughput", "time-to-98.5", "levers", "finetune-lr", "best", "best-hybrid"]


def section(part: str, quick: bool) -> str:
    command = f"python -m vitbook.bench{' --quick' if quick else ''} --only {part}"
    header = (
        f"Measured on {datetime.date.today().isoformat()} with `{command}` on: {perf.machine()}."
    )
    print(header, flush=True)
    if part == "throughput":
        title = "Training throughput against timm"
        res = perf.throughput(
            mnist_config(), 128, rounds=3 if quick else 7, compile=not quick,
            label="MNIST ViT (28 px, 7x7 patches, width 64, 3 blocks)",
        )  # fmt: skip
        body = perf.format_throughput(res)
        if not quick:
            big = perf.throughput(
                benchmarks.VIT_TI, 16, rounds=5, steps=3, compile=False,
                label="ViT-Ti/16 (224 px, ImageNet size)",
            )  # fmt: skip
            body += "\n\n" + perf.format_throughput(big)
    elif part == "time-to-98.5":
        title = "Time to 98.5% MNIST test accuracy"
        body = perf.format_accuracy(benchmarks.chapter4_time_to_accuracy(), "chapter-4 recipe")
    elif part == "levers":
        title = "Training levers, before and after"
        body = perf.format_levers(benchmarks.training_levers())
    elif part == "finetune-lr":
        title = "Fine-tuning learning rates of the self-supervision chapters"
        body = format_finetune_lr(benchmarks.select_finetune_lr())
    elif part == "best":
        title = "Best accuracy, plain ViT"
        body = perf.format_accuracy(benchmarks.best_accuracy(), "best-accuracy recipe, plain ViT")
    else:
        title = "Best accuracy, hybrid ViT"
        body = perf.format_accuracy(
            benchmarks.best_hybrid_accuracy(),
            "best-accuracy recipe, hybrid ViT (convolutional stem)",
        )
    # one level under the page's title (the book builds with warnings as errors, and MyST
    # warns when a level is skipped); the heading first, then how it was measured
    return f"## {title}\n\n{header}\n\n{body}\n"


def format_finetune_lr(res: dict) -> str:
    """The selection table: validation accuracy of every encoder at every rate."""
    fr = res["fractions"]
    lines = [
        "| encoder | learning rate | " + " | ".join(f"{f:.0%} labels" for f in fr) + " | chosen |",
        "|---|---|" + "---|" * len(fr) + "---|",
    ]
    for (name, lr), accs in res["table"].items():
        mark = "yes" if res["chosen"][name] == lr else ""
        lines.append(
            f"| {name} | {lr:g} | "
            + " | ".join(f"{100 * accs[f]:.2f}%" for f in fr)
            + f" | {mark} |"
        )
    lines.append("")
    lines.append(
        "Validation accuracy after the protocol's fine-tune (probe head, then 300 steps), on 10,000 "
        "training images held out from the label budgets; the test set is not used. The chosen rates "
        "are `recipes.SSL_FINETUNE_LR`."
    )
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m vitbook.bench", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="fewer rounds, no compile, no ImageNet-size row, no best-accuracy run",
    )
    p.add_argument("--only", choices=PARTS, action="append", help="run only these parts")
    p.add_argument("--out", type=Path, help="also write each part's markdown to OUT/<part>.md")
    args = p.parse_args(argv)
    parts = args.only or (PARTS[:2] if args.quick else PARTS)
    for part in parts:
        text = section(part, args.quick)
        print(text, flush=True)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{part}.md").write_text(text)
            print(f"wrote {args.out / f'{part}.md'}")


if __name__ == "__main__":
    main()
