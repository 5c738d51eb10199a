"""5. Cold start: ``python app.py --config <pairs.json> --port <free port>`` as a subprocess, to the first page served
(HTTP GET / polled every 20 ms until it answers 200). For scale, the same clock for a bare ``python -c "import
torch, gradio, diffusers"``. Each launch is a fresh process; the OS file cache is warm after the first (as on a
restarted Space it usually is not), so the first launch is reported beside the median.

    python benchmarks/bench_cold_start.py [--quick] [--launches N]
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import common  # benchmarks/common.py, beside this script

NAME = "cold_start"
TARGET_S = 10.0
TIMEOUT_S = 180.0


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_to_first_page(config: str, cache: str) -> dict[str, Any]:
    """Start the app, poll until GET / is 200, stop it; seconds to the first page and the log tail on failure."""
    port = free_port()
    env = dict(os.environ, AMBIENT_CACHE=cache, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    env.pop("GRADIO_SERVER_PORT", None)
    cmd = [sys.executable, "app.py", "--config", config, "--port", str(port), "--host", "127.0.0.1"]
    log = tempfile.TemporaryFile()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=common.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    seconds, status = None, None
    try:
        while time.perf_counter() - t0 < TIMEOUT_S:
            if proc.poll() is not None:
                status = f"exited with {proc.returncode}"
                break
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        seconds = time.perf_counter() - t0
                        status = "200"
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.02)
        else:
            status = f"no page within {TIMEOUT_S:.0f} s"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the process group this function started
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.seek(0)
        tail = log.read().decode(errors="replace")[-1500:]
        log.close()
    return {"seconds": seconds, "status": status, "log_tail": tail if seconds is None else ""}


def bare_imports() -> float:
    """Seconds for a fresh interpreter to import torch, gradio and diffusers."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, gradio, diffusers"], cwd=common.ROOT, check=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write cold_start.json."""
    ap = common.base_parser(__doc__)
    ap.add_argument("--launches", type=int, default=None, help="app launches (default 3, --quick 1)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    threads = common.set_threads(args.threads)
    env = common.env_info(threads)
    launches = args.launches or (1 if args.quick else 3)
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp:
        _, _, pair_info = common.load_pair(args.config, tmp)
        config = pair_info["config"]
        runs = [launch_to_first_page(config, str(Path(tmp) / "cache")) for _ in range(launches)]
    ok = [r["seconds"] for r in runs if r["seconds"] is not None]
    if not ok:
        raise SystemExit(f"the app never served its first page: {runs[-1]['status']}\n{runs[-1]['log_tail']}")
    imports_s = None if args.quick else bare_imports()
    st = common.stats(ok)
    cmd = f"python app.py --config {config} --port <free port> --host 127.0.0.1"
    payload = common.result(
        NAME,
        "5. Cold start (python app.py to the first page)",
        args,
        env,
        t_start,
        headline={"first_page_median_s": st["median"], "first_launch_s": ok[0]}
        | ({"bare_imports_s": imports_s} if imports_s else {}),
        pair=pair_info,
        app_command=cmd,
        launches=runs,
        first_page_s=st,
        bare_imports_s=imports_s,
        targets=[
            common.target(
                "python app.py to the first page, median", st["median"], "<=", TARGET_S, "s", evaluated=not args.quick
            ),
            common.target(
                "python app.py to the first page, first launch", ok[0], "<=", TARGET_S, "s", evaluated=not args.quick
            ),
        ],
        tables=[
            common.table(
                "Cold start",
                ["what", "seconds"],
                [
                    [f"app to first page, median of {len(ok)}", st["median"]],
                    ["app to first page, first launch", ok[0]],
                    ["bare `import torch, gradio, diffusers` (not in --quick)", imports_s],
                ],
            )
        ],
        notes=[
            f"`{cmd}`; the app's own threads setting (cores // max-concurrency), not --threads.",
            "The app starts a warm-up generate in a background thread before launch; it competes with serving.",
        ],
    )
    path = common.write_result(common.out_dir(args), NAME, payload)
    print(f"{NAME}: first page after {st['median']:.2f} s (median of {len(ok)}) -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
