"""The page in a real browser (playwright + Debian's chromium) at 1400 x 900, as a visitor sees it: the claim and the
Generate button on the first screen; slide the cutoff, generate, see copies marked, open a copy against its nearest
training image; hover the frontier. Screenshots go to the test's temporary folder.

Skips only when chromium is absent and AMBIENT_REQUIRE_BROWSER is not "1" (CI sets it, so there it must run).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from pathlib import Path

import pytest
import torch

from tests.helpers import Memorizer

CHROMIUM = os.environ.get("AMBIENT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
VIEWPORT = {"width": 1400, "height": 900}
HEADLINE = "Measured on 64 samples a side: the baseline copies 100 %, the Ambient model 0 %."
ARGS = [
    "--no-sandbox",
    "--headless=new",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]

if not Path(CHROMIUM).is_file():
    if os.environ.get("AMBIENT_REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"AMBIENT_REQUIRE_BROWSER=1 but chromium is not at {CHROMIUM}")
    pytest.skip(
        "chromium is not installed (set AMBIENT_REQUIRE_BROWSER=1 to make this an error)", allow_module_level=True
    )

pytestmark = pytest.mark.slow


def _tiny_frontier(root: Path, ambient: Path, baseline: Path) -> Path:
    """A small frontier.json (two runs of three snapshots, a reference) and the SHIPPED.json naming those runs."""
    points = []
    for kind, run, rows in (
        ("baseline", "runs/tiny_base", [(100, 0.05, 20.0), (200, 0.30, 8.0), (300, 0.70, 4.0)]),
        ("ambient", "runs/tiny_amb", [(100, 0.02, 18.0), (200, 0.08, 7.0), (300, 0.15, 5.0)]),
    ):
        for step, rate, fd in rows:
            points.append(
                {
                    "label": kind,
                    "kind": kind,
                    "study": "s.json",
                    "run": run,
                    "n_train": 20,
                    "step": step,
                    "n": 64,
                    "rate_ratio": rate,
                    "rate_ratio_ci95": [max(0.0, rate - 0.05), rate + 0.05],
                    "rate_cos_0.95": rate,
                    "frechet_distance": fd,
                }  # fmt: skip
            )
    points.append({**points[0], "label": "held-out real images", "kind": "reference", "step": None,
                   "rate_ratio": 0.0, "rate_ratio_ci95": [0.0, 0.0], "frechet_distance": 1.5})  # fmt: skip
    folder = root / "frontier"
    folder.mkdir(exist_ok=True)
    (folder / "frontier.json").write_text(json.dumps({"what": "test", "points": points}))
    models = {
        ambient.name: "runs/tiny_amb/snapshots/step_000300",
        baseline.name: "runs/tiny_base/snapshots/step_000300",
    }
    (ambient.parent / "SHIPPED.json").write_text(json.dumps({"models": models}))
    return folder


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    """Where the screenshots go: the test's temporary folder."""
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    from demo import handlers as h
    from demo.handlers import Handlers
    from demo.pairs import PairRegistry
    from demo.tiny_pair import make_tiny_pair
    from demo.ui import build_app, launch_kwargs

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.getbasetemp() / "tiny-pair"
    if not (root / "pairs.json").exists():
        make_tiny_pair(root, n=20)
    # the tiny pair plus a broken one, to check that choosing it explains the problem and nothing else breaks
    entry = json.loads((root / "pairs.json").read_text())["pairs"][0]
    for k in ("ambient", "baseline", "train_data", "index"):
        entry[k] = str(root / entry[k])
    entry["summary"] = HEADLINE
    entry["frontier"] = str(_tiny_frontier(root, Path(entry["ambient"]), Path(entry["baseline"])))
    broken = {**entry, "name": "broken", "title": "Broken pair", "ambient": "nowhere/ambient"}
    cfg = tmp_path_factory.mktemp("browser") / "pairs.json"
    cfg.write_text(json.dumps({"default": "tiny", "pairs": [entry, broken]}))
    H = Handlers(PairRegistry.from_path(cfg, allowed_dirs=[root]))
    p = H.pair("tiny")
    p.baseline = Memorizer(p.train.images)  # a baseline that certainly copies
    demo = build_app(H, h.device_banner("cpu"), "", max_concurrency=2)
    demo.queue(max_size=8, default_concurrency_limit=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs())
    yield f"http://127.0.0.1:{port}/"
    demo.close()
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def page(url):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=90_000)  # sampling on a busy 2-core machine can take far longer than the 5 s default
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport=VIEWPORT)
        pg.set_default_timeout(60_000)
        pg.goto(url, wait_until="load")
        pg.wait_for_selector("#generate-btn")
        yield pg
        browser.close()


def _in_first_viewport(page, selector: str) -> bool:
    box = page.locator(selector).first.bounding_box()
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= VIEWPORT["height"]


def test_the_first_screen_tells_the_claim(page, shots):
    """Without scrolling: the title, the claim, the pair and its headline result, the controls and Generate."""
    from playwright.sync_api import expect

    assert page.evaluate("window.scrollY") == 0
    expect(page.locator("#pair-headline")).to_contain_text(HEADLINE)
    for sel in ("#intro h1", "#pair", "#pair-headline", "#prompt", "#cutoff", "#generate-btn"):
        assert _in_first_viewport(page, sel), f"{sel} is not on the first screen"
    expect(page.locator("#intro")).to_contain_text("copy")
    # the pair's long text waits, collapsed, under "About this pair"
    expect(page.locator("#pair-status")).to_be_hidden()
    page.get_by_text("About this pair").click()
    expect(page.locator("#pair-status")).to_be_visible()
    expect(page.locator("#pair-status")).to_contain_text("20 training images")
    page.get_by_text("About this pair").click()
    expect(page.locator("#pair-status")).to_be_hidden()
    page.screenshot(path=str(shots / "first_screen.png"))


def test_slide_generate_and_see_copies_marked(page, shots):
    from playwright.sync_api import expect

    expect(page.locator("#banner")).to_contain_text("CPU")
    label = page.locator("#cutoff-label")
    expect(label).to_contain_text("Ambient alone (left end)")
    rng = page.locator("#cutoff input[type=range]")
    rng.focus()
    page.keyboard.press("End")
    expect(label).to_contain_text("baseline alone")
    num = page.locator("#cutoff input[type=number]")
    num.fill("0")
    num.press("Enter")
    expect(label).to_contain_text("sigma_c = 1")
    rng.focus()
    page.keyboard.press("Home")
    expect(label).to_contain_text("Ambient alone (left end)")

    page.click("#generate-btn")
    expect(page.locator("#nn-baseline .nn-row")).to_have_count(4)
    expect(page.locator("#nn-ambient .nn-row")).to_have_count(4)
    expect(page.locator("#gallery-ambient .thumbnail-item")).to_have_count(4)
    expect(page.locator("#gallery-baseline .thumbnail-item")).to_have_count(4)
    expect(page.locator("#summary")).to_contain_text("0 of 4")
    expect(page.locator("#summary")).to_contain_text("4 of 4")
    # copies marked on the baseline side, not on the Ambient side
    assert page.locator("#nn-baseline .nn-copy").count() == 4
    assert page.locator("#nn-ambient .nn-copy").count() == 0
    base_caps = page.locator("#gallery-baseline .caption-label").all_inner_texts()
    amb_caps = page.locator("#gallery-ambient .caption-label").all_inner_texts()
    assert len(base_caps) == 4 and all("COPY" in c for c in base_caps)
    assert len(amb_caps) == 4 and all("novel" in c for c in amb_caps)
    # similarity captions under every neighbour: an id and a cosine
    sims = page.locator("#nn-baseline .nn-sim").all_inner_texts()
    assert len(sims) == 16 and all(re.fullmatch(r"-?[01]\.\d{3}", s) for s in sims)
    assert max(float(s) for s in sims) > 0.95
    # the moment-of-copying plot is drawn
    page.wait_for_function("() => document.querySelector('.js-plotly-plot, .matplotlib img, img[src*=\"data:image\"]')")
    page.screenshot(path=str(shots / "browser_generate.png"), full_page=True)


def test_dragging_the_cutoff_moves_the_galleries_without_generate(page, shots):
    """After a Generate, moving the cutoff alone regenerates: at the right end the Ambient panel is the baseline
    alone (which copies here, so every caption says COPY); back at the left end it is the Ambient model again."""
    from playwright.sync_api import expect

    amb_caps = page.locator("#gallery-ambient .caption-label")
    expect(amb_caps).to_have_count(4)
    assert all("novel" in c for c in amb_caps.all_inner_texts())
    rng = page.locator("#cutoff input[type=range]")
    rng.focus()
    page.keyboard.press("End")
    expect(page.locator("#cutoff-label")).to_contain_text("baseline alone")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#gallery-ambient .caption-label')].filter(e => /COPY/.test(e.innerText))"
        ".length === 4"
    )
    page.screenshot(path=str(shots / "slider_right_end.png"), full_page=True)
    rng.focus()
    page.keyboard.press("Home")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#gallery-ambient .caption-label')].filter(e => /novel/.test(e.innerText))"
        ".length === 4"
    )
    expect(page.locator("#cutoff-label")).to_contain_text("Ambient alone (left end)")


def test_a_selected_sample_opens_against_its_nearest_training_image(page, shots):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Generate side by side").click()
    if page.locator("#gallery-baseline .thumbnail-item").count() == 0:
        page.click("#generate-btn")
    expect(page.locator("#gallery-baseline .thumbnail-item")).to_have_count(4)
    expect(page.locator("#compare")).to_be_hidden()
    page.locator("#gallery-baseline .thumbnail-item").nth(1).click()
    caption = page.locator("#compare-caption")
    expect(caption).to_contain_text("Baseline image 2")
    expect(caption).to_contain_text("COPY")  # the memorizer's image is a training image
    expect(caption).to_contain_text(re.compile(r"d1 = 0\.\d\d"))
    expect(caption).to_contain_text(re.compile(r"d2 = \d+\.\d\d"))
    expect(page.locator("#compare-slider img")).to_have_count(2)  # the sample and its nearest training image
    expect(page.locator("#compare-diff img")).to_have_count(1)
    page.locator("#gallery-ambient .thumbnail-item").nth(0).click()
    expect(caption).to_contain_text("Ambient image 1")
    expect(caption).to_contain_text("novel")
    page.locator("#compare").scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "browser_compare.png"), full_page=True)
    page.click("#generate-btn")  # a new request closes the view of the old one
    expect(page.locator("#compare")).to_be_hidden()


def test_check_a_training_image_and_the_tradeoff_tab(page, shots):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Check an image").click()
    page.locator("#train-gallery .thumbnail-item").nth(2).click()
    expect(page.locator("#check-gallery .thumbnail-item")).to_have_count(4)
    expect(page.get_by_text(re.compile(r"COPY: training image #\d+ \(1\.000"))).to_be_visible()
    page.screenshot(path=str(shots / "browser_check.png"), full_page=True)

    page.get_by_role("tab", name="Trade-off").click()
    expect(page.get_by_text("No precomputed sweep")).to_be_visible()
    expect(page.locator("#sweep-btn")).to_be_hidden()  # the live recompute is one click away
    page.get_by_text("Recompute the sweep live").click()
    page.click("#sweep-btn")
    expect(page.get_by_text(re.compile(r"Live sweep of .*seeds x \d+ cutoffs"))).to_be_visible()
    page.screenshot(path=str(shots / "browser_tradeoff.png"), full_page=True)


def test_the_frontier_shows_hover_text(page, shots):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Trade-off").click()
    plot = page.locator("#frontier-plot-0")
    expect(plot.locator(".js-plotly-plot")).to_be_visible()
    # the pair's two runs are drawn (3 snapshots each); the envelope is a line without markers
    points = plot.locator(".scatterlayer path.point")
    expect(points).to_have_count(3 + 3 + 2)  # two runs, and a star on each shipped snapshot
    text = plot.locator(".hoverlayer .hovertext")
    for i in range(points.count()):  # a baseline point lies on the envelope, which may answer first: try each
        box = points.nth(i).bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.wait_for_timeout(200)
        if text.count() and "step" in (text.first.text_content() or ""):
            break
    expect(text.first).to_contain_text("Frechet distance")
    expect(text.first).to_contain_text(re.compile(r"step \d+"))
    expect(text.first).to_contain_text(re.compile(r"copies \d+\.\d % \(95 %"))
    page.screenshot(path=str(shots / "browser_frontier.png"))
    # the band tables wait collapsed, below the sweep
    expect(page.locator("#bands-md")).to_be_hidden()


def test_a_broken_pair_explains_itself_and_the_good_one_still_works(page):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Generate side by side").click()
    page.locator("#pair input").click()
    page.get_by_role("option", name="Broken pair").click()
    expect(page.locator("#pair-headline")).to_contain_text("cannot be used")  # said where the visitor looks
    expect(page.locator("#pair-headline")).to_contain_text("How to fix")
    page.locator("#pair input").click()
    page.get_by_role("option", name=re.compile("Tiny random pair")).click()
    expect(page.locator("#pair-headline")).to_contain_text(HEADLINE)
    expect(page.locator("#pair-status")).to_contain_text("20 training images")
    page.locator("#seed input").fill("40")
    page.click("#generate-btn")
    expect(page.locator("#summary")).to_contain_text("seeds 40..43")


def test_an_example_fills_the_inputs_and_generates(page):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Generate side by side").click()
    page.get_by_text("a photo of a sneaker", exact=True).first.click()
    expect(page.locator("#prompt textarea")).to_have_value("a photo of a sneaker")
    expect(page.locator("#cutoff-label")).to_contain_text("sigma_c = 1")
    expect(page.locator("#summary")).to_contain_text('Prompt "a photo of a sneaker"')
    expect(page.locator("#nn-ambient .nn-row")).to_have_count(4)


def test_the_readme_screenshot_steps_work_here_too(page, shots):
    """scripts/screenshot.py drives the page as this test does: Generate, then open a copy; its picture is small."""
    import importlib.util

    from playwright.sync_api import expect

    spec = importlib.util.spec_from_file_location(
        "screenshot", Path(__file__).resolve().parents[1] / "scripts" / "screenshot.py"
    )
    shot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shot)
    page.get_by_role("tab", name="Generate side by side").click()
    shot.generate_and_compare(page, timeout_ms=90_000)
    expect(page.locator("#compare-caption")).to_contain_text("COPY")  # the memorizer's first image is a copy
    out = shot.save_small_png(page.screenshot(full_page=True), shots / "app.png")
    assert 0 < out.stat().st_size <= shot.MAX_BYTES
