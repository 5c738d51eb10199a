"""The page in a real browser (playwright + Debian's chromium): load, slide the cutoff, generate, see copies marked.

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
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
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
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(60_000)
        pg.goto(url, wait_until="load")
        pg.wait_for_selector("#generate-btn")
        yield pg
        browser.close()


def test_slide_generate_and_see_copies_marked(page):
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
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser_generate.png"), full_page=True)


def test_check_a_training_image_and_the_tradeoff_tab(page):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Check an image").click()
    page.locator("#train-gallery .thumbnail-item").nth(2).click()
    expect(page.locator("#check-gallery .thumbnail-item")).to_have_count(4)
    expect(page.get_by_text(re.compile(r"COPY: training image #\d+ \(1\.000"))).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "browser_check.png"), full_page=True)

    page.get_by_role("tab", name="Trade-off").click()
    expect(page.get_by_text("No precomputed sweep")).to_be_visible()
    page.click("#sweep-btn")
    expect(page.get_by_text(re.compile(r"Live sweep of .*seeds x \d+ cutoffs"))).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "browser_tradeoff.png"), full_page=True)


def test_a_broken_pair_explains_itself_and_the_good_one_still_works(page):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Generate side by side").click()
    page.locator("#pair input").click()
    page.get_by_role("option", name="Broken pair").click()
    expect(page.locator("#pair-status")).to_contain_text("cannot be used")
    expect(page.locator("#pair-status")).to_contain_text("How to fix")
    page.locator("#pair input").click()
    page.get_by_role("option", name=re.compile("Tiny random pair")).click()
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
