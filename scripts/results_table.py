"""Print the README's results tables (Markdown) from the shipped evaluation reports.

Usage: python scripts/results_table.py assets/fmnist-100
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def pct(x: float | None) -> str:
    """A share as a percentage string."""
    return "n/a" if x is None else f"{100 * x:.1f} %"


def row(name: str, r: dict) -> str:
    """One table row of a scored sample set."""
    fd = r.get("frechet_distance")
    pf = r.get("prompt_fidelity")
    return (
        f"| {name} | {pct(r['rate_ratio'])} | {pct(r['rate_similarity']['0.95'])} | {pct(r['rate_similarity']['0.9'])} "
        f"| {r['mean_similarity']:.3f} | {'n/a' if fd is None else f'{fd:.2f}'} | {pct(pf)} |"
    )


def main() -> int:
    """Print the tables."""
    pair = Path(sys.argv[1] if len(sys.argv) > 1 else "assets/fmnist-100")
    main_r = json.loads((pair / "eval" / "report.json").read_text())
    s = main_r["settings"]
    print(
        "| samples | ratio test d1/d2 < 1/3 | cosine > 0.95 | cosine > 0.9 | mean nearest cosine "
        "| Frechet distance (fmnist-cnn) | prompt fidelity |"
    )
    print("|---|---|---|---|---|---|---|")
    print(row("held-out real test images (reference)", main_r["reference"]))
    print(row("baseline (EDM loss)", main_r["baseline"]))
    retired = "" if (pair / Path(s["ambient"]).name).is_dir() else " (model retired from the app)"
    print(row(f"Ambient, one network, sigma_n = {s['sigma_n']}{retired}", main_r["ambient"]))
    for folder in sorted(pair.glob("eval_high*")):  # high-noise-only variants (eval_high_1500: an early snapshot)
        h = json.loads((folder / "report.json").read_text())
        hs = h["settings"]
        cut = hs.get("ambient_sigma_c", hs["sigma_n"])
        model = pair / folder.name.replace("eval", "ambient", 1)  # eval_high_1500 -> ambient_high_1500
        cfg = next((c for c in (model / "ambient_config.json", model / "config.json") if c.is_file()), None)
        if cfg is None:  # a retired model: its report stays as the record, its folder left assets/
            what = f"{folder.name}, model retired from the app"
        else:
            what = f"{json.loads(cfg.read_text())['meta']['steps']:,} steps"
        print(row(f"Ambient, high-noise-only ({what}), hand-over at {cut}", h["ambient"]))
    print()
    print(
        f"{s['n']} samples per row (prompts spread over the 10 classes, every 11th unconditional), EDM Heun "
        f"{s['steps']} steps, guidance {s['guidance']}; cosine of centred pixels ({s['embedder']})."
    )
    print()
    print("| sigma_c | ratio test | cosine > 0.95 | mean nearest cosine | Frechet distance |")
    print("|---|---|---|---|---|")
    for r in main_r["sweep"]:
        sc = r["sigma_c"]
        label = f"{sc:.3g}" + (" (Ambient alone)" if sc <= 0.002 else " (baseline alone)" if sc > 80 else "")
        print(
            f"| {label} | {pct(r['rate_ratio'])} | {pct(r['rate_similarity']['0.95'])} | {r['mean_similarity']:.3f} "
            f"| {r.get('frechet_distance', float('nan')):.2f} |"
        )
    probe = pair / "eval" / "truncate_probe.json"
    if probe.is_file():
        print()
        print("| model | truncated at sigma_c | ratio test | cosine > 0.95 | cosine > 0.9 | Frechet distance |")
        print("|---|---|---|---|---|---|")
        for r in json.loads(probe.read_text())["rows"]:
            print(
                f"| {r['model']} | {r['truncate_at']:g} | {pct(r['rate_ratio'])} | {pct(r['rate_cos_0.95'])} "
                f"| {pct(r['rate_cos_0.9'])} | {r['frechet_distance']:.2f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
