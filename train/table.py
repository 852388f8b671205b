#!/usr/bin/env python3
"""The quality table of BENCHMARKS.md: b1.58 against its full-precision twin, size by size.

    python train/table.py train/configs/table-s.toml train/configs/table-m.toml ...

Runs `train.py --variant both` for each config whose reports (train/out/<name>-{ternary,fp}.json)
are missing, then prints the table in Markdown with the BitNet b1.58 paper's published figures.
"""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent
# The b1.58 paper (Ma et al. 2024, Table 1): LLaMA-architecture fp16 vs b1.58, 100 B RedPajama tokens,
# perplexity on WikiText2 / C4 (the paper reports their average).
PAPER = [("700M", 12.33, 12.87), ("1.3B", 11.25, 11.29), ("3B", 10.04, 9.91)]


def report(name: str, variant: str) -> dict | None:
    path = ROOT / "out" / f"{name}-{variant}.json"
    return json.loads(path.read_text()) if path.exists() else None


def main() -> None:
    configs = [pathlib.Path(arg) for arg in sys.argv[1:]]
    for config in configs:
        if report(config.stem, "ternary") is None or report(config.stem, "fp") is None:
            subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", str(config), "--variant", "both"],
                           check=True)
    print("| size | parameters (projections) | tokens | fp perplexity | b1.58 perplexity | b1.58 ÷ fp | train s (fp / b1.58) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for config in configs:
        ternary, fp = report(config.stem, "ternary"), report(config.stem, "fp")
        params = ternary["parameters"]
        ppl_t, ppl_fp = ternary["valid_perplexity_exported"], fp["valid_perplexity_latent"]
        print(f"| {config.stem} | {params['total'] / 1e6:.2f} M ({params['projections'] / 1e6:.2f} M) "
              f"| {ternary['tokens_seen'] / 1e6:.2f} M | {ppl_fp:.2f} | {ppl_t:.2f} | {ppl_t / ppl_fp:.3f} "
              f"| {fp['train_seconds']:.0f} / {ternary['train_seconds']:.0f} |")
    print()
    print("| paper (100 B tokens) | fp16 | b1.58 | b1.58 ÷ fp16 |")
    print("| --- | --- | --- | --- |")
    for size, fp16, b158 in PAPER:
        print(f"| {size} | {fp16:.2f} | {b158:.2f} | {b158 / fp16:.3f} |")


if __name__ == "__main__":
    main()
