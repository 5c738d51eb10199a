"""The app launched in-process and driven by gradio_client through its named endpoints."""

from __future__ import annotations

import base64
import io
import os
import re
import socket
import time

import pytest
import torch
from gradio_client import Client
from PIL import Image

from demo import handlers as h
from demo.handlers import Handlers
from demo.pairs import PairRegistry
from demo.tiny_pair import make_tiny_pair
from demo.ui import API_DOC, build_app, launch_kwargs
from tests.helpers import Memorizer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.getbasetemp() / "tiny-pair"
    if not (root / "pairs.json").exists():
        make_tiny_pair(root, n=20)
    H = Handlers(PairRegistry.from_path(root / "pairs.json"))
    p = H.pair("tiny")
    p.baseline = Memorizer(p.train.images)
    demo = build_app(H, h.device_banner("cpu"), "", max_concurrency=2)
    demo.queue(max_size=8, default_concurrency_limit=2)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs())
    url = f"http://127.0.0.1:{port}/"
    yield demo, url, H
    demo.close()
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def client(server):
    return Client(server[1], verbose=False)


def test_named_endpoints_and_queue_limits(server, client):
    demo = server[0]
    names = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert names == {"/generate", "/neighbours", "/sweep"}  # UI events are private
    assert demo._queue.max_size == 8
    heavy = [fn for fn in demo.fns.values() if fn.concurrency_id == "models"]
    assert heavy and all(fn.concurrency_limit == 2 for fn in heavy)


def test_generate_endpoint(client):
    t = time.perf_counter()
    r = client.predict(
        pair="",
        prompt="",
        seed=0,
        n_images=4,
        steps=18,
        guidance=1.0,
        sigma_c=None,
        mode="handover",
        api_name="/generate",
    )
    seconds = time.perf_counter() - t
    print(f"\n2 x 4 images, 18 Heun steps, neighbours included: {seconds:.2f} s through gradio_client")
    assert r["copies"] == {"ambient": 0, "baseline": 4} and r["seeds"] == [0, 1, 2, 3]
    assert r["threshold"] == 0.95 and r["sigma_c"] == pytest.approx(0.002)
    first = r["baseline"][0]
    assert first["is_copy"] and first["similarity"] > 0.95 and len(first["neighbours"]) == h.DEFAULT_K
    im = Image.open(io.BytesIO(base64.b64decode(r["ambient"][0]["png_base64"])))
    assert im.size == (32, 32)
    assert seconds < 60


def test_generate_endpoint_reports_bad_input(client):
    with pytest.raises(Exception, match="seed must be from 0"):
        client.predict(pair="", seed=-1, api_name="/generate")
    with pytest.raises(Exception, match="sigma_c must be a finite number"):
        client.predict(pair="", sigma_c=1e9, api_name="/generate")
    with pytest.raises(Exception, match="Model pair 'nope'"):
        client.predict(pair="nope", api_name="/generate")


def test_neighbours_endpoint(client, server):
    p = server[2].pair("tiny")
    buf = io.BytesIO()
    Image.fromarray(h._u8(p.train.images[7:8])[0][..., 0]).save(buf, format="PNG")
    r = client.predict(pair="", image=base64.b64encode(buf.getvalue()).decode(), k=3, api_name="/neighbours")
    assert r["is_copy"] and r["neighbours"][0]["position"] == 7 and len(r["neighbours"]) == 3
    r = client.predict(pair="", train_position=2, api_name="/neighbours")
    assert r["neighbours"][0]["id"] == p.train.ids[2] and r["metric"].startswith("cosine similarity")
    with pytest.raises(Exception, match="not an image"):
        client.predict(pair="", image=base64.b64encode(b"hello").decode(), api_name="/neighbours")


def test_sweep_endpoint(client):
    r = client.predict(pair="", live=False, api_name="/sweep")
    assert r["rows"] == [] and "No precomputed sweep" in r["about"] and r["sigma_n"] == 1.0
    r = client.predict(pair="", live=True, n_seeds=2, points=2, steps=2, api_name="/sweep")
    sigma_cs = [x["sigma_c"] for x in r["rows"]]  # the two ends, sigma_n, and the explicit baseline-alone row
    assert len(sigma_cs) == 4 and sigma_cs[:3] == pytest.approx([0.002, 1.0, 80.0]) and sigma_cs[3] is None
    assert r["rows"][3]["models"] == "the baseline alone"
    assert r["rows"][0]["rate_similarity"]["0.95"] == 0.0  # Ambient alone: no copies
    assert r["rows"][-1]["rate_similarity"]["0.95"] == 1.0  # baseline alone (the memorizer): all copies


def test_the_documented_client_example_runs(server, tmp_path, monkeypatch):
    """The example on the API tab (and in the README) works against a local server as written."""
    code = re.search(r"```python\n(.*?)```", API_DOC, re.S).group(1)
    code = code.replace("http://127.0.0.1:7860/", server[1])
    Image.new("L", (32, 32), 30).save(tmp_path / "query.png")
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(out):
        exec(compile(code, "api_example", "exec"), {})
    printed = [line for line in out.getvalue().splitlines() if not line.startswith("Loaded as API")]
    assert len(printed) == 4
    assert printed[0] == "{'ambient': 0, 'baseline': 4}"  # the tiny pair's baseline is a memorizer
    assert printed[1].startswith("[{'id': ") and "'similarity': " in printed[1]
    assert printed[2] == "False"  # a flat grey query is a copy of no training image
    assert printed[3] == "[]"  # the tiny pair ships no sweep
    assert (tmp_path / "ambient0.png").exists()
    assert os.path.getsize(tmp_path / "ambient0.png") > 0


def test_ui_generate_streams_previews_then_the_result(server):
    """The Generate button's handler yields x0_hat previews, then galleries, neighbours and the trajectory plot."""
    demo = server[0]
    fn = next(f.fn for f in demo.fns.values() if f.name == "ui_generate")
    outs = list(fn("tiny", "", 3, False, 2, 6, 1.0, -2.7, "handover"))
    previews, final = outs[:-1], outs[-1]
    ambient_previews = [p[0] for p in previews if isinstance(p[0], list)]
    assert ambient_previews and all(len(p) == 2 and "x0_hat, step" in p[0][1] for p in ambient_previews)
    amb, base, seed, summary, nn_amb, nn_base, traj_dd, plot, raw, state = final
    assert len(amb) == 2 and len(base) == 2 and seed == 3 and "**2 of 2** are copies" in summary
    assert nn_base.count("nn-copy") == 2 and "nn-copy" not in nn_amb
    assert plot is not None and raw["copies"] == {"ambient": 0, "baseline": 2} and state.seed == 3
