"""Security: no pickle is ever loaded (safetensors and JSON only), uploads are capped, the server serves files only
from the folders gradio needs, there is no public share link unless asked for, and no secret reaches the logs.

The server checks run against ``python app.py`` itself (a subprocess with its real launch arguments), started
with a dummy HF_TOKEN and GRADIO_SHARE=True in its environment.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
import httpx
import numpy as np
import pytest
import torch

from ambient.denoiser import DDPMAdapter, EDMDenoiser, load_denoiser
from demo.handlers import MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS
from demo.pairs import PairError, PairRegistry

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_DummySecretToken0123456789abcdefXYZ"
SKIP_DIRS = {".venv", "venv", "runs", ".git", "node_modules", "__pycache__", "artifacts"}


# ----------------------------------------------------------------------------- pickle: the source scan

BANNED_MODULES = {"joblib", "dill", "cloudpickle", "shelve"}
PICKLE_CALLS = {f"{m}.{f}" for m in ("pickle", "_pickle", "cPickle") for f in ("load", "loads", "Unpickler")} | {
    "pandas.read_pickle",
    "torch.serialization.load",
}


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _kw_is(call: ast.Call, name: str, value: object) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


def pickle_uses(source: str, filename: str = "<source>") -> list[str]:
    """Every place in ``source`` that can unpickle: torch.load without weights_only=True, pickle.load(s),
    np.load with allow_pickle=True (or not a literal False), pandas.read_pickle, joblib/dill/cloudpickle/shelve."""
    tree = ast.parse(source, filename)
    alias: dict[str, str] = {}  # local name -> what it stands for, e.g. np -> numpy, load -> pickle.load
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in BANNED_MODULES:
                    found.append(f"{filename}:{node.lineno}: import {a.name}")
                alias[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in BANNED_MODULES:
                found.append(f"{filename}:{node.lineno}: from {node.module} import ...")
            for a in node.names:
                alias[a.asname or a.name] = f"{node.module}.{a.name}"
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if not name:
            continue
        head, _, rest = name.partition(".")
        full = alias.get(head, head) + (f".{rest}" if rest else "")
        where = f"{filename}:{node.lineno}: {name}(...)"
        if full in PICKLE_CALLS:
            found.append(where)
        elif full == "torch.load" and not _kw_is(node, "weights_only", True):
            found.append(where + " without weights_only=True")
        elif full == "numpy.load" and any(k.arg == "allow_pickle" for k in node.keywords):
            if not _kw_is(node, "allow_pickle", False):
                found.append(where + " with allow_pickle")
    return found


def python_sources() -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".")]
        for f in filenames:
            if f.endswith(".py"):
                yield Path(dirpath) / f


@pytest.mark.parametrize(
    ("source", "bad"),
    [
        ("import torch\ntorch.load('m.pt')", True),
        ("import torch\ntorch.load('m.pt', weights_only=False)", True),
        ("import torch\ntorch.load('m.pt', map_location='cpu', weights_only=True)", False),
        ("from torch import load as L\nL('m.pt')", True),
        ("import pickle\npickle.loads(b'')", True),
        ("import pickle as p\np.load(open('x', 'rb'))", True),
        ("from pickle import Unpickler\nUnpickler(f).load()", True),
        ("import pickle\npickle.dumps(1)", False),
        ("import numpy as np\nnp.load('x.npz', allow_pickle=True)", True),
        ("import numpy as np\nnp.load('x.npz', allow_pickle=flag)", True),
        ("import numpy as np\nnp.load('x.npz', allow_pickle=False)", False),
        ("import numpy\nnumpy.load('x.npy')", False),
        ("import joblib", True),
        ("from dill import loads", True),
        ("import pandas as pd\npd.read_pickle('x')", True),
    ],
)
def test_the_scan_finds_what_it_should(source, bad):
    assert bool(pickle_uses(source)) is bad, pickle_uses(source)


def test_no_source_file_can_load_a_pickle():
    files = list(python_sources())
    names = {p.relative_to(ROOT).parts[0] for p in files}
    assert {"ambient", "demo", "tests", "app.py"} <= names and len(files) > 30
    found = [hit for p in files for hit in pickle_uses(p.read_text(encoding="utf-8"), str(p.relative_to(ROOT)))]
    assert found == [], "\n".join(found)


# ----------------------------------------------------------------------------- pickle: model folders at run time

_WATCH: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _WATCH is not None:
        if event == "open":
            _WATCH.append(str(args[0]))
        elif event == "pickle.find_class":
            _WATCH.append(f"pickle.find_class {args[0]}.{args[1]}")


sys.addaudithook(_audit)  # inert unless a test is watching


@contextlib.contextmanager
def watch() -> Iterator[list[str]]:
    """Every file Python opens and every global an unpickler looks up while the block runs."""
    global _WATCH
    _WATCH = []
    try:
        yield _WATCH
    finally:
        _WATCH = None


class Boom:
    """Unpickling this creates a folder: proof that a pickle was loaded."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


PICKLE_NAMES = ("model.pt", "pytorch_model.bin", "model.pkl", "model.ckpt")


def _pickled_folder(folder: Path, sentinel: Path, with_config: bool) -> Path:
    folder.mkdir(parents=True)
    for name in PICKLE_NAMES:
        (folder / name).write_bytes(pickle.dumps(Boom(sentinel)))
    if with_config:
        torch.manual_seed(0)
        from ambient.denoiser import build_unet

        cfg = build_unet(0, 8, 1, (8, 16)).config()
        (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def _touched(opened: list[str]) -> list[str]:
    return [o for o in opened if o.startswith("pickle.") or o.endswith((".pt", ".bin", ".pkl", ".ckpt"))]


def test_a_folder_with_only_model_pt_is_refused_and_never_read(tmp_path):
    sentinel = tmp_path / "UNPICKLED"
    only_pt = tmp_path / "only-pt"
    only_pt.mkdir()
    (only_pt / "model.pt").write_bytes(pickle.dumps(Boom(sentinel)))
    config_and_pickles = _pickled_folder(tmp_path / "config-and-pickles", sentinel, with_config=True)
    with watch() as opened:
        with pytest.raises(FileNotFoundError, match=r"has no ambient_config\.json; a model folder needs ambient_conf"):
            EDMDenoiser.from_pretrained(only_pt)
        with pytest.raises(FileNotFoundError, match=r"has no model\.safetensors"):
            EDMDenoiser.from_pretrained(config_and_pickles)
        with pytest.raises(FileNotFoundError, match=r"has no model\.safetensors"):
            load_denoiser(config_and_pickles)
    assert _touched(opened) == [] and not sentinel.exists()


def test_a_diffusers_folder_with_bin_weights_is_refused_and_never_read(tmp_path):
    from diffusers import DDPMScheduler, UNet2DModel

    sentinel = tmp_path / "UNPICKLED"
    pipe = tmp_path / "pipe"
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    unet.save_config(pipe / "unet")
    DDPMScheduler(num_train_timesteps=10).save_config(pipe / "scheduler")
    (pipe / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(Boom(sentinel)))
    with watch() as opened:
        with pytest.raises(OSError, match=r"no file named diffusion_pytorch_model\.safetensors"):
            DDPMAdapter.from_pretrained(pipe)
    assert _touched(opened) == [] and not sentinel.exists()


def test_the_app_refuses_a_pair_of_pickles_with_a_clear_message(tmp_path, tiny):
    sentinel = tmp_path / "UNPICKLED"
    root = tmp_path / "cfg"
    shutil.copytree(tiny.parent / "tiny", root / "tiny")
    _pickled_folder(root / "pickles", sentinel, with_config=True)
    np.savez(root / "objects.npz", images=np.array([Boom(sentinel)], dtype=object))  # an .npz holding a pickle
    good = json.loads(tiny.read_text())["pairs"][0]
    pairs = [
        good,
        {**good, "name": "pickles", "ambient": "pickles"},
        {**good, "name": "npz", "train_data": "objects.npz"},
    ]
    (root / "pairs.json").write_text(json.dumps({"pairs": pairs}))
    reg = PairRegistry.from_path(root / "pairs.json")
    with watch() as opened:
        with pytest.raises(PairError, match=r"ambient model could not be loaded: .*has no model\.safetensors") as e:
            reg.get("pickles")
        assert "ambient_config.json + unet/" in e.value.fix
        with pytest.raises(PairError, match=r"train_data.*could not be read: .*allow_pickle=False"):
            reg.get("npz")
    assert [o for o in _touched(opened) if not o.endswith(".npz")] == [] and not sentinel.exists()
    assert reg.get("tiny").name == "tiny"


# ----------------------------------------------------------------------------- the app as launched


def test_launch_arguments_no_share_no_extra_paths(monkeypatch, tiny):
    import app

    assert app.parse_args([]).share is False and app.parse_args(["--share"]).share is True
    calls: list[dict] = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: calls.append(kw))
    monkeypatch.setattr(app, "_warm_up", lambda handlers: None)
    monkeypatch.setenv("GRADIO_SHARE", "True")
    old = torch.get_num_threads()
    try:
        assert app.main(["--config", str(tiny), "--threads", "1", "--no-fallback"]) == 0
        assert app.main(["--config", str(tiny), "--threads", "1", "--no-fallback", "--share"]) == 0
    finally:
        torch.set_num_threads(old)
    default, asked = calls
    assert default["share"] is False and asked["share"] is True  # a public link only when asked for
    assert default["server_name"] == "127.0.0.1"
    for kw in calls:
        assert "allowed_paths" not in kw  # nothing beyond gradio's own upload and cache folders is served
        assert kw["max_file_size"] == "20mb" and MAX_UPLOAD_BYTES == 20 * 2**20
    assert MAX_UPLOAD_PIXELS == 4096 * 4096


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_server(tiny, tmp_path_factory):
    """``python app.py`` with a dummy token in its environment; yields (url, read the output so far, config)."""
    folder = tmp_path_factory.mktemp("app")
    good = json.loads(tiny.read_text())["pairs"][0]
    config = tiny.parent / "security-pairs.json"
    hub = {**good, "name": "hub", "ambient": "hub:someone/private-model"}
    config.write_text(json.dumps({"default": "tiny", "pairs": [good, hub]}))
    port = _free_port()
    env = dict(os.environ, HF_TOKEN=TOKEN, HUGGING_FACE_HUB_TOKEN=TOKEN, GRADIO_SHARE="True", HF_HUB_OFFLINE="1")
    env |= {"OMP_NUM_THREADS": "1", "AMBIENT_CACHE": str(folder / "cache"), "PYTHONUNBUFFERED": "1"}
    log_path = folder / "server.log"
    log = open(log_path, "w")  # noqa: SIM115
    cmd = [sys.executable, str(ROOT / "app.py"), "--config", str(config), "--port", str(port), "--threads", "1"]
    proc = subprocess.Popen(cmd, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while True:
        assert proc.poll() is None, log_path.read_text()[-3000:]
        assert time.monotonic() < deadline, "the app did not start in 180 s"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}gradio_api/info", timeout=5).status_code == 200:
                break
        time.sleep(0.25)
    yield url, proc, log_path, config
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log.close()


def test_files_are_served_only_from_gradios_own_folders(app_server, tiny):
    url = app_server[0]
    secrets_and_sources = [
        "/etc/passwd",
        "/proc/self/environ",  # would hold HF_TOKEN
        str(ROOT / "app.py"),
        str(ROOT / "assets" / "pairs.json"),
        str(app_server[3]),
        str(tiny.parent / "tiny" / "ambient" / "unet" / "diffusion_pytorch_model.safetensors"),
        str(tiny.parent / "tiny" / "train.npz"),
    ]
    with httpx.Client(timeout=30) as c:
        for path in secrets_and_sources:
            for route in ("gradio_api/file=", "gradio_api/file/", "file="):
                r = c.get(url + route + path)
                assert r.status_code in (403, 404), (route, path, r.status_code, r.text[:200])
                assert TOKEN not in r.text and "root:" not in r.text
        for path in ("%2Fetc%2Fpasswd", "..%2F..%2F..%2F..%2Fetc%2Fpasswd", "/tmp/gradio/../../etc/passwd"):
            r = c.get(url + "gradio_api/file=" + path)
            assert r.status_code in (403, 404) and "root:" not in r.text, (path, r.status_code)
        # the server does not fetch URLs for a visitor on the machine's own network either
        r = c.get(url + f"gradio_api/file=http://127.0.0.1:{url.rsplit(':', 1)[1].strip('/')}/config")
        assert r.status_code == 403
        # an uploaded file is served back (that is what the folder is for), as a download
        up = c.post(url + "gradio_api/upload", files={"files": ("a.png", b"\x89PNG not really", "image/png")})
        assert up.status_code == 200
        assert c.get(url + "gradio_api/file=" + up.json()[0]).status_code == 200


def test_the_ui_file_box_does_not_take_a_server_path(app_server):
    """A crafted event naming a server file instead of an upload is refused before the handler sees it."""
    url = app_server[0]
    info = httpx.get(url + "config", timeout=30).json()
    fn_index = next(d["id"] for d in info["dependencies"] if d.get("api_name") == "ui_check")
    session = uuid.uuid4().hex[:12]
    data = ["tiny", {"path": "/etc/passwd", "orig_name": "passwd.png", "meta": {"_type": "gradio.FileData"}}]
    with httpx.Client(timeout=60) as c:
        r = c.post(url + "gradio_api/queue/join", json={"data": data, "fn_index": fn_index, "session_hash": session})
        assert r.status_code == 200, r.text
        with c.stream("GET", url + "gradio_api/queue/data", params={"session_hash": session}) as resp:
            msgs = [json.loads(line[5:]) for line in resp.iter_lines() if line.startswith("data:")]
    done = next(m for m in msgs if m["msg"] == "process_completed")
    assert not done["success"] and "was not uploaded by a user" in done["output"]["error"], done
    assert "root:" not in json.dumps(msgs)


def test_uploads_are_capped_in_size(app_server):
    url = app_server[0]
    big = b"\0" * (MAX_UPLOAD_BYTES + 1024)
    r = httpx.post(url + "gradio_api/upload", files={"files": ("big.png", big, "image/png")}, timeout=60)
    assert r.status_code == 413 and "maximum allowed size of 20971520 bytes" in r.text
    # pixels: a decompression bomb is refused before decoding (tests/test_reliability_inputs.py, bomb-20000)


def test_no_share_link_and_no_secret_in_the_logs(app_server):
    from gradio_client import Client

    url, proc, log_path, _ = app_server
    client = Client(url, verbose=False)
    assert client.predict(pair="", prompt="a bag", seed=3, n_images=1, steps=2, api_name="/generate")["seeds"] == [3]
    for bad in ({"seed": -1}, {"pair": "hub"}, {"pair": "nope"}):
        with pytest.raises(Exception) as e:
            client.predict(**{"pair": "", **bad}, api_name="/generate")
        assert TOKEN not in str(e.value)
    with pytest.raises(Exception, match="not an image"):
        client.predict(pair="", image="aGVsbG8=", api_name="/neighbours")
    for page in ("config", "gradio_api/info", ""):
        assert TOKEN not in httpx.get(url + page, timeout=30).text
    time.sleep(0.5)
    assert proc.poll() is None  # still serving; it runs unbuffered, so everything it printed is in the log
    out = log_path.read_text()
    assert f"Running on local URL:  {url.rstrip('/')}" in out, out[-2000:]
    assert "public URL" not in out and "gradio.live" not in out, out[-2000:]
    assert TOKEN not in out and TOKEN[3:20] not in out
