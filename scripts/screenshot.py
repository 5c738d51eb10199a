"""The README's pictures, remade by one command: the app after Generate, and a clean static frontier.

- docs/images/app.png: the app in Debian's Chromium at 1400 x 900 with the default pair, after Generate, a
  baseline copy opened against its nearest training image: the page from its top down to that comparison
  (playwright; never ``playwright install``).
- docs/images/frontier.png: the default pair's two runs (copies with 95 % intervals against Frechet distance,
  stars on the shipped snapshots), the baselines' early-stopping envelope and the held-out images' quality.

The browser test (tests/test_browser.py) takes its screenshot after Generate through ``generate_and_compare``.

Usage:
  python scripts/screenshot.py                   # both pictures into docs/images/
  python scripts/screenshot.py --only frontier   # the frontier alone (no browser, no sampling)
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("AMBIENT_CHROMIUM") or "/usr/bin/chromium"
VIEWPORT = {"width": 1400, "height": 900}
ARGS = ["--no-sandbox", "--headless=new", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
MAX_BYTES = 300_000


def generate_and_compare(page: Any, timeout_ms: int = 600_000) -> None:
    """Press Generate, wait for both galleries, open the first baseline copy (else the first image) against its
    nearest training image."""
    from playwright.sync_api import expect

    page.click("#generate-btn")
    for side in ("ambient", "baseline"):
        expect(page.locator(f"#nn-{side} .nn-row").first).to_be_visible(timeout=timeout_ms)
    captions = page.locator("#gallery-baseline .caption-label").all_inner_texts()
    i = next((k for k, c in enumerate(captions) if "COPY" in c), 0)
    page.locator("#gallery-baseline .thumbnail-item").nth(i).click()
    expect(page.locator("#compare-caption")).to_contain_text("d1 =", timeout=timeout_ms)
    page.wait_for_timeout(500)  # the slider's images settle


def save_small_png(png: bytes, path: Path, max_bytes: int = MAX_BYTES) -> Path:
    """Write a PNG, its palette reduced (256, then fewer colours) until it is under ``max_bytes``."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.open(io.BytesIO(png)).convert("RGB")
    for colors in (256, 128, 64):
        buf = io.BytesIO()
        im.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            buf, format="PNG", optimize=True
        )
        if buf.tell() <= max_bytes:
            break
    path.write_bytes(buf.getvalue())
    return path


def app_png(config: Path, out: Path, n_images: int = 8) -> Path:
    """Start the app on the config's default pair, generate in Chromium at 1400 x 900, open a copy, save the page
    from its top down to the comparison."""
    from playwright.sync_api import sync_playwright

    from ambient.research.studies import wait_for_port  # the one home of the wait (imports torch: only here)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, str(ROOT / "app.py"), "--port", str(port), "--config", str(config), "--device", "cpu"]
    app = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # the app as run
    try:
        wait_for_port(port, app)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(600_000)
            page.goto(f"http://127.0.0.1:{port}/", wait_until="load")
            page.wait_for_selector("#generate-btn")
            num = page.locator("#n input[type=number]")
            num.fill(str(n_images))
            num.press("Enter")
            generate_and_compare(page)
            box = page.locator("#compare").bounding_box()  # down to the opened comparison
            bottom = VIEWPORT["height"] if box is None else max(VIEWPORT["height"], box["y"] + box["height"] + 12)
            png = page.screenshot(full_page=True, clip={"x": 0, "y": 0, "width": VIEWPORT["width"], "height": bottom})
            browser.close()
    finally:
        app.terminate()
        app.wait(30)
    return save_small_png(png, out)


def frontier_png(config: Path, out: Path) -> Path:
    """The default pair's curves, the baselines' envelope and the held-out images' quality, as a static PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from ambient.pairs_config import load_config, load_pair
    from ambient.research.frontier import AMBIENT_COLOR, BASELINE_COLOR, envelope, series, shipped_runs

    cfg = load_config(config)
    pair = load_pair(next(s for s in cfg.specs if s.name == cfg.default))
    data, spec = pair.frontier, pair.spec
    if not data:
        raise SystemExit(f"the default pair {spec.name} ships no frontier")
    runs = shipped_runs((Path(spec.base_dir) / spec.ambient).parent, spec.ambient, spec.baseline)
    if not runs:
        raise SystemExit(f"no SHIPPED.json names the runs of {spec.name}'s models")
    points = data["points"]
    n_train = next(p["n_train"] for p in points if p.get("run") == next(iter(runs.values()))[0])
    fig, ax = plt.subplots(figsize=(8, 4.8))
    env = [r for r in envelope(points, n_train) if r["rate_ratio"] is not None]
    ax.plot([r["frechet_distance"] for r in env], [100 * r["rate_ratio"] for r in env], "k--", lw=2.2,
            label="baselines' frontier: any baseline run, stopped early")  # fmt: skip
    for side, color, what in (("baseline", BASELINE_COLOR, "baseline"), ("ambient", AMBIENT_COLOR, "Ambient model")):
        if side not in runs:
            continue
        run, shipped = runs[side]
        group = next(
            g for (_l, r, n), g in series(points).items() if r == run and n == n_train and g[0]["step"] is not None
        )
        x = [p["frechet_distance"] for p in group]
        y = [100 * p["rate_ratio"] for p in group]
        err = [[100 * (p["rate_ratio"] - p["rate_ratio_ci95"][0]) for p in group],
               [100 * (p["rate_ratio_ci95"][1] - p["rate_ratio"]) for p in group]]  # fmt: skip
        ax.errorbar(x, y, yerr=err, fmt="-o", color=color, lw=2, ms=4, capsize=2,
                    label=f"{what} of this pair, snapshot by snapshot")  # fmt: skip
        for p in group:
            ax.annotate(f"{p['step'] / 1000:g}k", (p["frechet_distance"], 100 * p["rate_ratio"]), fontsize=7,
                        xytext=(4, 4), textcoords="offset points", color=color)  # fmt: skip
        for p in group:
            if shipped is not None and p["step"] == shipped:
                ax.plot(p["frechet_distance"], 100 * p["rate_ratio"], "*", ms=16, color=color, mec="k",
                        label=f"shipped {what} (step {shipped:,})")  # fmt: skip
    ref = [p["frechet_distance"] for p in points if p["kind"] == "reference" and p["n_train"] == n_train]
    if ref:
        ax.axvline(min(ref), color="gray", ls=":", lw=1)
        ax.text(min(ref) * 1.03, 2, "held-out real images", fontsize=8, color="gray", rotation=90, va="bottom")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator([1, 2, 3, 5, 10, 20, 30]))
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("Frechet distance to held-out images (lower = better quality)")
    ax.set_ylabel("copies: ratio test d1/d2 < 1/3 (%)")
    ax.set_ylim(bottom=0)
    ax.set_xlim(left=0.85 * min(ref) if ref else None, right=30)  # past 30 only very early snapshots
    ax.set_title(f"{n_train} training images: below the dashed frontier = fewer copies at the same quality",
                 fontsize=10)  # fmt: skip
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3, which="both")
    ns = sorted({p["n"] for p in points if p.get("run") in {r for r, _ in runs.values()} and p["step"] is not None})
    fig.text(0.01, 0.01, f"Snapshots scored with prompts over the classes ({'/'.join(map(str, ns))} samples each); "
             "python scripts/screenshot.py --only frontier", fontsize=6.5, color="0.4")  # fmt: skip
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return save_small_png(buf.getvalue(), out)


def main(argv: list[str] | None = None) -> int:
    """Make the pictures; print their paths and sizes."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "assets" / "pairs.json", help="the app's pairs config")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "images", help="folder for the PNGs")
    ap.add_argument("--only", choices=("app", "frontier"), default=None, help="make one picture only")
    ap.add_argument("--images", type=int, default=8, help="images per model in the app screenshot")
    a = ap.parse_args(argv)
    made = []
    if a.only in (None, "frontier"):
        made.append(frontier_png(a.config, a.out / "frontier.png"))
    if a.only in (None, "app"):
        made.append(app_png(a.config, a.out / "app.png", a.images))
    for path in made:
        print(f"wrote {path} ({path.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
