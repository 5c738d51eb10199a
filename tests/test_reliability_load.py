"""Many users at once and many requests in a row, against a local server on the tiny random pair.

- load: 16 gradio_client clients, 5 generate requests each, at the app's default queue settings; no request
  fails, at most ``max_concurrency`` handlers run at once (counted inside the handler), p50/p95 latency reported
  (printed and written to artifacts/load_test.json).
- busy: with a queue of one, a request beyond it gets a clear "queue is full" answer at once, not a hang.
- soak: ``python app.py`` in a subprocess serves 200 requests in a row; its resident memory after warm-up grows by
  less than 5 % (written to artifacts/soak.json).

Latencies depend on the machine and its load; only failures, the concurrency limit and memory are asserted.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client
from gradio_client.utils import QueueError

from demo.handlers import Handlers
from demo.pairs import PairRegistry
from demo.ui import build_app, launch_kwargs

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
CLIENTS, PER_CLIENT = 16, 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks."""
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def machine() -> dict:
    return {"cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)}


class Gauge:
    """A test hook around ``Handlers.generate``: counts the handler executions running at the same time."""

    def __init__(self, handlers: Handlers, hold: threading.Event | None = None):
        self.real, self.hold = handlers.generate, hold
        self.active = self.peak = self.calls = 0
        self.entered = threading.Event()
        self._lock = threading.Lock()
        handlers.generate = self  # the endpoints look the method up on the instance at every call

    def __call__(self, *args, **kwargs):
        with self._lock:
            self.active += 1
            self.calls += 1
            self.peak = max(self.peak, self.active)
        try:
            self.entered.set()
            if self.hold is not None:
                assert self.hold.wait(60), "the test never released the handler"
            return self.real(*args, **kwargs)
        finally:
            with self._lock:
                self.active -= 1


def launch(tiny: Path, max_concurrency: int, max_queue: int, hold: threading.Event | None = None):
    H = Handlers(PairRegistry.from_path(tiny))
    H.pair("tiny")
    demo = build_app(H, "", "", max_concurrency=max_concurrency)
    demo.queue(max_size=max_queue, default_concurrency_limit=max_concurrency)  # as app.py does
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs())
    return demo, f"http://127.0.0.1:{port}/", Gauge(H, hold)


def test_sixteen_clients_at_once(tiny):
    import app

    defaults = app.parse_args([])  # the app's own settings: 2 at a time, 16 waiting
    limit, queue_size = defaults.max_concurrency, defaults.max_queue
    demo, url, gauge = launch(tiny, limit, queue_size)
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    ready = threading.Barrier(CLIENTS)

    def user(i: int) -> None:
        try:
            client = Client(url, verbose=False)
        except Exception as e:  # counted below
            with lock:
                failures.append(f"client {i}: {e!r}")
            ready.abort()
            return
        ready.wait(120)
        for j in range(PER_CLIENT):
            seed = 1000 * i + j  # distinct seeds: every request samples, none is served from the cache
            t = time.perf_counter()
            try:
                r = client.predict(pair="", prompt="", seed=seed, n_images=2, steps=4, api_name="/generate")
                assert r["seeds"] == [seed, seed + 1]
            except Exception as e:
                with lock:
                    failures.append(f"client {i} request {j}: {e!r}")
                continue
            with lock:
                latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    try:
        threads = [threading.Thread(target=user, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
    finally:
        demo.close()
    wall = time.perf_counter() - t0
    n = CLIENTS * PER_CLIENT
    report = {
        "clients": CLIENTS,
        "requests": n,
        "failures": len(failures),
        "completed": len(latencies),
        "concurrency_limit": limit,
        "queue_max_size": queue_size,
        "max_concurrent_handlers": gauge.peak,
        "handler_calls": gauge.calls,
        "latency_s": {
            "p50": round(percentile(latencies, 50), 3) if latencies else None,
            "p95": round(percentile(latencies, 95), 3) if latencies else None,
            "mean": round(statistics.fmean(latencies), 3) if latencies else None,
            "max": round(max(latencies), 3) if latencies else None,
        },
        "wall_s": round(wall, 2),
        "throughput_rps": round(len(latencies) / wall, 2),
        "request": {"n_images": 2, "steps": 4, "pair": "tiny (untrained, 32x32)"},
        "machine": machine(),
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "load_test.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nload test: {json.dumps(report)}")
    assert failures == [], failures[:5]
    assert len(latencies) == n and gauge.calls == n
    assert 1 <= gauge.peak <= limit, f"{gauge.peak} handlers ran at once; the limit is {limit}"


def test_a_request_beyond_the_queue_is_told_the_app_is_busy(tiny):
    hold = threading.Event()
    demo, url, gauge = launch(tiny, max_concurrency=1, max_queue=1, hold=hold)
    try:
        client = Client(url, verbose=False)
        kw = {"pair": "", "prompt": "", "n_images": 1, "steps": 2, "api_name": "/generate"}
        running = client.submit(seed=1, **kw)
        assert gauge.entered.wait(60), "the first request never reached the handler"
        waiting = client.submit(seed=2, **kw)
        deadline = time.monotonic() + 30
        while len(demo._queue) < 1:  # the second request is in the queue (the first one is running)
            assert time.monotonic() < deadline, "the second request never reached the queue"
            time.sleep(0.01)
        t = time.perf_counter()
        with pytest.raises(QueueError, match="Queue is full! Please try again."):
            client.submit(seed=3, **kw).result(timeout=30)
        busy_s = time.perf_counter() - t
        # the same over plain HTTP: 503 with the reason
        r = httpx.post(f"{url}gradio_api/call/generate", json={"data": ["", "", 4, 1, 2, 1.0, None, "handover"]})
        assert r.status_code == 503 and "Queue is full. Max size is 1" in r.json()["detail"], r.text
        hold.set()
        assert running.result(timeout=60)["seeds"] == [1] and waiting.result(timeout=60)["seeds"] == [2]
        assert client.predict(seed=5, **kw)["seeds"] == [5]  # and it serves again
    finally:
        hold.set()
        demo.close()
    print(f"\nbusy answer after {busy_s * 1000:.0f} ms")
    assert busy_s < 10 and gauge.peak == 1


# ----------------------------------------------------------------------------- soak


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS, Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def test_soak_two_hundred_requests_in_a_row(tiny, tmp_path):
    port = _free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env["AMBIENT_CACHE"] = str(tmp_path / "cache")
    cmd = [sys.executable, str(ROOT / "app.py"), "--config", str(tiny), "--port", str(port), "--threads", "1"]
    cmd += ["--no-fallback"]
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the app did not start in 180 s"
            try:
                if httpx.get(f"{url}gradio_api/info", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        client = Client(url, verbose=False)
        prompts = ["", "a photo of a sneaker", "a photo of a bag", ""]

        def request(i: int) -> float:
            t = time.perf_counter()
            r = client.predict(pair="", prompt=prompts[i % 4], seed=i, n_images=1, steps=2, api_name="/generate")
            assert r["seeds"] == [i]
            return time.perf_counter() - t

        for i in range(40):  # warm-up: encoder loaded, result cache (32 entries) full, thread pool grown
            request(10_000 + i)
        rss_start = rss_bytes(proc.pid)
        latencies, failures, samples = [], [], []
        for i in range(200):
            try:
                latencies.append(request(i))
            except Exception as e:
                failures.append(f"request {i}: {e!r}")
            if i % 50 == 49:
                samples.append(rss_bytes(proc.pid))
        rss_end = rss_bytes(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    growth = (rss_end - rss_start) / rss_start
    report = {
        "requests": 200,
        "failures": len(failures),
        "warm_up_requests": 40,
        "rss_after_warm_up_mb": round(rss_start / 2**20, 1),
        "rss_samples_mb": [round(s / 2**20, 1) for s in samples],
        "rss_end_mb": round(rss_end / 2**20, 1),
        "growth_percent": round(100 * growth, 2),
        "latency_s": {
            "p50": round(percentile(latencies, 50), 3) if latencies else None,
            "p95": round(percentile(latencies, 95), 3) if latencies else None,
        },
        "request": {"n_images": 1, "steps": 2, "prompts": prompts},
        "machine": machine(),
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nsoak: {json.dumps(report)}")
    assert failures == [], failures[:5]
    assert growth < 0.05, f"resident memory grew by {100 * growth:.1f} % over 200 requests"


def test_sixteen_clients_drag_the_cutoff_slider(tiny):
    """16 clients each generate once, then move the cutoff 6 times (a drag through the API): no failures, every
    answer is for the position asked, and the recorded trajectories stay within the cache's byte budget."""
    from ambient.trajectory import TrajectoryCache

    demo, url, gauge = launch(tiny, 2, 16)
    pair = gauge.real.__self__.pair("tiny")
    pair.trajectory_cache = TrajectoryCache(max_bytes=4 << 20)  # small, so the budget is exercised
    positions = [0.01, 0.05, 0.2, 0.7, 2.0, 9.0]
    failures: list[str] = []
    latencies: list[float] = []
    lock = threading.Lock()
    rss0 = rss_bytes(os.getpid())

    def user(i: int) -> None:
        try:
            client = Client(url, verbose=False)
            seed = 50_000 + 100 * i
            client.predict(pair="", prompt="", seed=seed, n_images=2, steps=6, api_name="/generate")
            for sc in positions:
                t = time.perf_counter()
                r = client.predict(pair="", prompt="", seed=seed, n_images=2, steps=6, sigma_c=sc, api_name="/generate")
                with lock:
                    latencies.append(time.perf_counter() - t)
                assert r["seeds"] == [seed, seed + 1] and abs(r["sigma_c"] - sc) < 1e-9 * max(1, sc), r["sigma_c"]
        except Exception as e:
            with lock:
                failures.append(f"client {i}: {e!r}")

    try:
        threads = [threading.Thread(target=user, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
    finally:
        demo.close()
    cache = pair.trajectory_cache
    report = {
        "clients": CLIENTS,
        "moves_per_client": len(positions),
        "failures": len(failures),
        "move_latency_s": {"p50": round(percentile(latencies, 50), 3), "p95": round(percentile(latencies, 95), 3)},
        "trajectory_cache": {
            "bytes": cache.nbytes,
            "budget": cache.max_bytes,
            "hits": cache.hits,
            "misses": cache.misses,
        },
        "rss_growth_mb": round((rss_bytes(os.getpid()) - rss0) / 2**20, 1),
        "machine": machine(),
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "slider_load_test.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nslider load test: {json.dumps(report)}")
    assert failures == [], failures[:5]
    assert len(latencies) == CLIENTS * len(positions)
    assert 0 < cache.nbytes <= cache.max_bytes
    assert cache.hits >= CLIENTS * len(positions)  # every move reused its seed's recorded runs (both sides)
