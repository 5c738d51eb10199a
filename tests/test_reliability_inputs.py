"""Every kind of bad input, through a running app: the named API (gradio_client) and the UI's own events (the
queue protocol a browser speaks). Each case is answered with a clear message (its text is checked), valid-but-odd
input succeeds, and after every case the app still serves a good request.

The server is launched in-process on the tiny random pair, next to broken pairs (missing, corrupt or mis-shaped
weights, a missing index, a path outside the allowed folders, a hub id while offline). It runs with
``show_error=False``, stricter than the app: only messages the handlers raise as ``gr.Error`` reach the client,
so an unexpected exception would surface as a generic "has raised an exception" and fail its case.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import re
import shutil
import socket
import struct
import uuid
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from gradio_client import Client
from PIL import Image

from ambient.denoiser import UNET_CONFIG_NAME, WEIGHTS_NAME
from demo.handlers import Handlers
from demo.pairs import PairRegistry
from demo.tiny_pair import make_tiny_pair
from demo.ui import build_app, launch_kwargs

SEEDS = itertools.count(100_000)  # every good request samples afresh (no cache hit)


# ----------------------------------------------------------------------------- files


def png(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(width: int, height: int, bit_depth: int, color_type: int, row: bytes) -> bytes:
    """A valid PNG written by hand (PIL cannot write 16-bit RGB, and a bomb should not be built in memory)."""
    z = zlib.compressobj(9)
    data = b"".join(z.compress(b"\0" + row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def bomb(side: int) -> bytes:
    """A 1-bit black PNG of side x side pixels: 20,000 x 20,000 is 400 million pixels in about 50 KB."""
    return raw_png(side, side, 1, 0, b"\0" * ((side + 7) // 8))


NOISE = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
UPLOADS = {
    "not-an-image": b"%PDF-1.4 this is a text file pretending",
    "truncated-png": png(Image.fromarray(NOISE))[:-200],
    "header-only-png": png(Image.fromarray(NOISE))[:60],
    "bomb-20000": bomb(20_000),
    "bomb-5000": bomb(5_000),
    "lab-tiff": png(Image.new("RGB", (16, 16), (10, 200, 30)).convert("LAB"), "TIFF"),
    "rgba": png(Image.new("RGBA", (40, 24), (255, 255, 255, 128))),
    "grey-16bit": png(Image.fromarray(np.full((32, 32), 40_000, dtype=np.uint16))),
    "rgb-16bit": raw_png(8, 8, 16, 2, struct.pack(">3H", 65535, 30000, 0) * 8),
    "one-pixel": png(Image.new("L", (1, 1), 200)),
}
UPLOAD_ERRORS = {
    "not-an-image": "This file is not an image that can be read",
    "truncated-png": "The image file is truncated or corrupt",
    "header-only-png": "truncated or corrupt|not an image",
    "bomb-20000": "too many pixels to be decoded safely; the limit is 4096x4096",
    "bomb-5000": "The image is 5000x5000 = 25,000,000 pixels; the limit is 4096x4096",
    "lab-tiff": "colour mode LAB cannot be converted to greyscale",
}
UPLOAD_OK = ("rgba", "grey-16bit", "rgb-16bit", "one-pixel")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# ----------------------------------------------------------------------------- the server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _broken_pairs(tiny_cfg: Path, root: Path) -> Path:
    """A config with the good tiny pair and one broken pair per way a model-pair config can be wrong."""
    src = tiny_cfg.parent / "tiny"
    shutil.copytree(src, root / "tiny")
    good = json.loads(tiny_cfg.read_text())["pairs"][0]
    shutil.copytree(src / "ambient", root / "no-weights")
    (root / "no-weights" / WEIGHTS_NAME).unlink()
    shutil.copytree(src / "ambient", root / "corrupt")
    (root / "corrupt" / WEIGHTS_NAME).write_bytes(b"\x00not safetensors" * 64)
    shutil.copytree(src / "ambient", root / "cut")
    weights = (src / "ambient" / WEIGHTS_NAME).read_bytes()
    (root / "cut" / WEIGHTS_NAME).write_bytes(weights[: len(weights) // 2])
    shutil.copytree(src / "ambient", root / "wrongshape")
    cfg = json.loads((root / "wrongshape" / UNET_CONFIG_NAME).read_text())
    cfg["block_out_channels"] = [16, 16]
    (root / "wrongshape" / UNET_CONFIG_NAME).write_text(json.dumps(cfg))
    outside = root.parent / f"{root.name}-outside"
    shutil.copytree(src / "ambient", outside / "ambient")

    def variant(name: str, **kw: str) -> dict:
        return {**good, "name": name, "title": name, **kw}

    pairs = [
        good,
        variant("no-weights", ambient="no-weights"),
        variant("corrupt", ambient="corrupt"),
        variant("cut", baseline="cut"),
        variant("wrongshape", baseline="wrongshape"),
        variant("missing", ambient="nowhere/ambient"),
        variant("noindex", index="tiny/no-index-here"),
        variant("escape", ambient=f"../{outside.name}/ambient"),
        variant("abs-escape", train_data="/etc/passwd"),
        variant("hub", ambient="hub:someone/ambient-model"),
    ]
    (root / "pairs.json").write_text(json.dumps({"default": "tiny", "pairs": pairs}))
    return root / "pairs.json"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    tiny = tmp_path_factory.getbasetemp() / "tiny-pair"
    if not (tiny / "pairs.json").exists():
        make_tiny_pair(tiny, n=20)
    config = _broken_pairs(tiny / "pairs.json", tmp_path_factory.mktemp("pairs"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        H = Handlers(PairRegistry.from_path(config))
        H.pair("tiny")
        demo = build_app(H, "", "", max_concurrency=2)
        demo.queue(max_size=16, default_concurrency_limit=2)
        port = _free_port()
        demo.launch(
            server_name="127.0.0.1",
            server_port=port,
            prevent_thread_lock=True,
            quiet=True,
            show_error=False,
            **launch_kwargs(),
        )
        yield demo, f"http://127.0.0.1:{port}/"
        demo.close()
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def client(server):
    return Client(server[1], verbose=False)


def serves_a_good_request(client: Client) -> None:
    seed = next(SEEDS)
    r = client.predict(pair="", prompt="", seed=seed, n_images=1, steps=2, api_name="/generate")
    assert r["seeds"] == [seed] and len(r["ambient"]) == len(r["baseline"]) == 1


def sse_result(lines: list[str]) -> tuple[str, object]:
    """(event, data) of the last event of a /gradio_api/call stream."""
    event, data = "", None
    for line in lines:
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data = json.loads(line[5:])
    return event, data


def raw_api_call(url: str, api_name: str, body: str) -> tuple[str, object]:
    """POST a hand-written JSON body (NaN and Infinity included) to a named endpoint and read its answer."""
    with httpx.Client(timeout=60) as c:
        r = c.post(f"{url}gradio_api/call/{api_name}", content=body, headers={"content-type": "application/json"})
        r.raise_for_status()
        out = c.get(f"{url}gradio_api/call/{api_name}/{r.json()['event_id']}")
        return sse_result(out.text.splitlines())


def ui_call(server, fn_name: str, data: list) -> dict:
    """Run a UI event (private: no API name) as the browser does: queue/join, then the session's event stream."""
    demo, url = server
    fn_index = next(i for i, f in demo.fns.items() if f.name == fn_name)
    session = uuid.uuid4().hex[:12]
    body = json.dumps({"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None})
    with httpx.Client(timeout=120) as c:
        r = c.post(f"{url}gradio_api/queue/join", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        with c.stream("GET", f"{url}gradio_api/queue/data", params={"session_hash": session}) as resp:
            for line in resp.iter_lines():
                if line.startswith("data:"):
                    msg = json.loads(line[5:])
                    if msg.get("msg") == "process_completed":
                        return msg
    raise AssertionError("the event stream ended without process_completed")


def upload(url: str, name: str, data: bytes) -> dict:
    """Upload a file as the File component does; returns the FileData the UI event receives."""
    r = httpx.post(f"{url}gradio_api/upload", files={"files": (name, data, "application/octet-stream")}, timeout=60)
    assert r.status_code == 200, r.text
    return {"path": r.json()[0], "orig_name": name, "meta": {"_type": "gradio.FileData"}}


# ----------------------------------------------------------------------------- the API table

NUMERIC = "seed must be a whole number from 0 to 4294967295"
SIGMA_RANGE = r"sigma_c must be a finite number from 0.002 \(Ambient alone\) to 80 \(baseline alone\)"
GEN = "/generate"
NEI = "/neighbours"

API_CASES = [
    # prompts: odd but valid ones succeed (checked by the lambda), with a note when the prompt was changed
    ("prompt-empty", GEN, {"prompt": ""}, lambda r: r["prompt"] == "" and r["notes"] == []),
    (
        "prompt-10000",
        GEN,
        {"prompt": "a sneaker " * 1000},
        lambda r: len(r["prompt"]) <= 300 and "cut" in r["notes"][0],
    ),
    ("prompt-emoji-rtl", GEN, {"prompt": "👟 حذاء رياضي נעל 🧥"}, lambda r: r["prompt"] == "👟 حذاء رياضي נעל 🧥"),
    (
        "prompt-control",
        GEN,
        {"prompt": "a\x00 bag\x07\x1b[31m\u202e\r\n"},
        lambda r: r["prompt"] == "a bag [31m" and "Control" in " ".join(r["notes"]),
    ),
    ("prompt-number", GEN, {"prompt": 123}, "The prompt must be text, got int"),
    # seeds
    ("seed-negative", GEN, {"seed": -1}, "seed must be from 0 to 4294967295, got -1"),
    ("seed-2^32", GEN, {"seed": 2**32}, "seed must be from 0 to 4294967295, got 4294967296"),
    ("seed-2^64", GEN, {"seed": 2**64}, "seed must be from 0 to 4294967295"),
    ("seed-text", GEN, {"seed": "seven"}, NUMERIC + ", got str 'seven'"),
    ("seed-float", GEN, {"seed": 1.5}, NUMERIC + ", got 1.5"),
    ("seed-whole-float", GEN, {"seed": 7.0}, lambda r: r["seeds"][0] == 7),
    ("seed-null", GEN, {"seed": None}, NUMERIC + ", got None"),
    # steps
    ("steps-0", GEN, {"steps": 0}, "steps must be from 1 to 200, got 0"),
    ("steps-negative", GEN, {"steps": -5}, "steps must be from 1 to 200, got -5"),
    ("steps-10000", GEN, {"steps": 10_000}, "steps must be from 1 to 200, got 10000"),
    # cutoff (NaN and infinities: below, as raw JSON, since gradio_client refuses to send them)
    ("cutoff-below", GEN, {"sigma_c": 0.0001}, SIGMA_RANGE + ", got 0.0001"),
    ("cutoff-above", GEN, {"sigma_c": 100.0}, SIGMA_RANGE + ", got 100.0"),
    ("cutoff-negative", GEN, {"sigma_c": -1.0}, SIGMA_RANGE),
    ("cutoff-text", GEN, {"sigma_c": "1"}, "sigma_c must be a number"),
    ("cutoff-ends", GEN, {"sigma_c": 80.0}, lambda r: r["sigma_c"] == 80.0),
    # image count and guidance
    ("images-9", GEN, {"n_images": 9}, "number of images must be from 1 to 8, got 9"),
    ("images-1000", GEN, {"n_images": 1000}, "number of images must be from 1 to 8, got 1000"),
    ("images-0", GEN, {"n_images": 0}, "number of images must be from 1 to 8, got 0"),
    ("guidance-negative", GEN, {"guidance": -1.0}, "guidance scale must be from 0 to 20, got -1"),
    ("guidance-huge", GEN, {"guidance": 1e30}, "guidance scale must be from 0 to 20, got 1e\\+30"),
    ("mode-unknown", GEN, {"mode": "sideways"}, "mode must be 'handover' or 'truncate'"),
    # the pair
    ("pair-unknown", GEN, {"pair": "nope"}, "Model pair 'nope': no pair of this name.*Choose one of"),
    ("pair-not-text", GEN, {"pair": 5}, "pair must be a name \\(string\\), got int"),
    ("pair-traversal", GEN, {"pair": "../../etc/passwd"}, "no pair of this name"),
    # model-pair config: what is wrong and how to fix it
    ("config-missing-safetensors", GEN, {"pair": "no-weights"}, "has no unet/diffusion_pytorch.*How to fix"),
    ("config-corrupt-safetensors", GEN, {"pair": "corrupt"}, "not a readable safetensors file.*How to fix"),
    ("config-truncated-safetensors", GEN, {"pair": "cut"}, "baseline model.*not a readable safetensors file"),
    ("config-wrong-shape", GEN, {"pair": "wrongshape"}, "baseline model could not be loaded.*does not match"),
    ("config-missing-folder", GEN, {"pair": "missing"}, "ambient model folder .*nowhere/ambient does not exist"),
    ("config-missing-index", GEN, {"pair": "noindex"}, "index folder .*no-index-here does not exist.*Rebuild"),
    ("config-outside", GEN, {"pair": "escape"}, "outside the allowed folders.*--allow-dir"),
    ("config-absolute-outside", GEN, {"pair": "abs-escape"}, r"\.\.\./passwd.*outside the allowed folders"),
    ("config-hub-offline", GEN, {"pair": "hub"}, "hub id someone/ambient-model, but HF_HUB_OFFLINE=1"),
    ("config-broken-neighbours", NEI, {"pair": "corrupt", "train_position": 0}, "Model pair 'corrupt'"),
    # uploads (the API takes base64)
    *[(f"upload-{k}", NEI, {"image": b64(v)}, UPLOAD_ERRORS[k]) for k, v in UPLOADS.items() if k in UPLOAD_ERRORS],
    *[(f"upload-{k}", NEI, {"image": b64(UPLOADS[k])}, lambda r: len(r["neighbours"]) == 4) for k in UPLOAD_OK],
    ("upload-data-url", NEI, {"image": "data:image/png;base64," + b64(UPLOADS["one-pixel"])}, lambda r: "is_copy" in r),
    ("upload-empty", NEI, {"image": ""}, "image must be a non-empty base64 string"),
    ("upload-not-base64", NEI, {"image": "%%% not base64 %%%"}, "image is not valid base64"),
    ("upload-over-20mb", NEI, {"image": "A" * (28 * 2**20)}, "The image is larger than 20 MB"),
    ("upload-k-0", NEI, {"image": b64(UPLOADS["one-pixel"]), "k": 0}, "number of neighbours must be from 1 to 10"),
    ("train-position-out", NEI, {"train_position": 20}, "training image position must be from 0 to 19, got 20"),
    ("sweep-live-not-bool", "/sweep", {"live": "yes"}, "live must be true or false"),
    ("sweep-seeds-huge", "/sweep", {"live": True, "n_seeds": 10**6}, "number of seeds must be from 1 to 256"),
]


@pytest.mark.parametrize(("endpoint", "kwargs", "expect"), [pytest.param(*c[1:], id=c[0]) for c in API_CASES])
def test_api_input_is_answered_clearly_and_the_app_keeps_serving(client, endpoint, kwargs, expect):
    base = {"pair": ""}
    if endpoint == GEN:
        base |= {"seed": next(SEEDS), "n_images": 1, "steps": 2}
    if callable(expect):
        r = client.predict(**{**base, **kwargs}, api_name=endpoint)
        assert expect(r), r
    else:
        with pytest.raises(Exception) as e:
            client.predict(**{**base, **kwargs}, api_name=endpoint)
        assert type(e.value).__name__ == "AppError", repr(e.value)
        assert re.search(expect, str(e.value)), str(e.value)
    serves_a_good_request(client)


@pytest.mark.parametrize(
    "value", [pytest.param("NaN", id="nan"), pytest.param("Infinity", id="inf"), pytest.param("-Infinity", id="-inf")]
)
def test_non_finite_cutoff_through_the_api(server, client, value):
    """JSON has no NaN: gradio_client refuses to send one, a hand-written request gets a clear answer."""
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        client.predict(pair="", sigma_c=float(value.replace("Infinity", "inf")), api_name="/generate")
    event, data = raw_api_call(server[1], "generate", f'{{"data": ["", "", 0, 1, 2, 1.0, {value}, "handover"]}}')
    assert event == "error" and data["error"].startswith("sigma_c must be a finite number from 0.002"), data
    event, data = raw_api_call(server[1], "generate", f'{{"data": ["", "", 0, 1, 2, {value}, null, "handover"]}}')
    assert event == "error" and "guidance scale must be a finite number" in data["error"], data
    serves_a_good_request(client)


# ----------------------------------------------------------------------------- the UI table

# ui_generate's inputs: pair, prompt, seed, randomize, images, steps, guidance, log10(cutoff), mode
GOOD_UI = ["tiny", "", 0, False, 1, 2, 1.0, -2.7, "handover"]
UI_CASES = [
    ("prompt-empty", {1: ""}, None),
    ("prompt-10000", {1: "x" * 10_000}, None),
    ("prompt-emoji-rtl", {1: "👟 حذاء רגל"}, None),
    ("prompt-control", {1: "\x00\x1b[2J\u202edress\r\n"}, None),
    ("seed-negative", {2: -5}, "Value -5 is less than minimum value 0"),
    ("seed-2^32", {2: 2**32}, "Value 4294967296 is greater than maximum value 4294967295"),
    ("seed-float", {2: 2.6}, None),  # the seed box rounds to a whole number
    ("seed-cleared", {2: None}, "seed must be a whole number"),
    ("steps-0", {5: 0}, "Value 0 is less than minimum value 1"),
    ("steps-negative", {5: -3}, "Value -3 is less than minimum value 1"),
    ("steps-10000", {5: 10_000}, "Value 10000 is greater than maximum value 200"),
    ("cutoff-nan", {7: float("nan")}, "the cutoff slider position must be a finite number, got nan"),
    ("cutoff-above", {7: 5.0}, "Value 5.0 is greater than maximum value 1.91"),
    ("cutoff-below", {7: -9.0}, "Value -9.0 is less than minimum value -2.7"),
    ("images-9", {4: 9}, "Value 9 is greater than maximum value 8"),
    ("guidance-negative", {6: -1.0}, "Value -1.0 is less than minimum value 0"),
    ("guidance-huge", {6: 1e6}, "Value 1000000.0 is greater than maximum value 20"),
    ("pair-corrupt", {0: "corrupt"}, "Model pair 'corrupt'.*not a readable safetensors file.*How to fix"),
    ("pair-hub-offline", {0: "hub"}, "HF_HUB_OFFLINE=1"),
]


@pytest.mark.parametrize(("changes", "expect"), [pytest.param(*c[1:], id=c[0]) for c in UI_CASES])
def test_ui_generate_input_is_answered_clearly(server, client, changes, expect):
    data = [changes.get(i, v) for i, v in enumerate(GOOD_UI)]
    msg = ui_call(server, "ui_generate", data)
    if expect is None:
        assert msg["success"], msg
        amb, base, seed = msg["output"]["data"][:3]
        assert len(amb) == len(base) == 1 and isinstance(seed, int)
    else:
        assert not msg["success"] and re.search(expect, msg["output"]["error"] or ""), msg["output"]
    serves_a_good_request(client)


@pytest.mark.parametrize("name", list(UPLOADS))
def test_ui_upload_is_answered_clearly(server, client, name):
    filename = f"{name}.tiff" if name.endswith("tiff") else f"{name}.png"  # a non-image under an image's name too
    msg = ui_call(server, "ui_check", ["tiny", upload(server[1], filename, UPLOADS[name])])
    if name in UPLOAD_OK:
        assert msg["success"], msg
        query, markdown, gallery = msg["output"]["data"]
        assert markdown.startswith("### ") and len(gallery) == 4
    else:
        assert not msg["success"] and re.search(UPLOAD_ERRORS[name], msg["output"]["error"] or ""), msg["output"]
    serves_a_good_request(client)


def test_ui_upload_of_another_file_type_is_refused_by_the_file_box(server, client):
    msg = ui_call(server, "ui_check", ["tiny", upload(server[1], "notes.pdf", UPLOADS["not-an-image"])])
    assert not msg["success"] and "Invalid file type" in msg["output"]["error"] and "image" in msg["output"]["error"]
    serves_a_good_request(client)


def test_ui_broken_pair_explains_itself_and_the_good_one_still_works(server, client):
    msg = ui_call(server, "on_pair", ["wrongshape"])
    assert msg["success"]
    status = msg["output"]["data"][0]
    assert "cannot be used" in status and "does not match" in status and "How to fix" in status
    msg = ui_call(server, "on_pair", ["tiny"])
    assert msg["success"] and "20 training images" in msg["output"]["data"][0]
    serves_a_good_request(client)
