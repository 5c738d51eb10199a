"""Run every benchmark of benchmarks/ in one go and write the JSON files and the Markdown table.

    python benchmarks/run_all.py                 # full sizes, about 6-9 minutes on a 2-core CPU
    python benchmarks/run_all.py --quick         # seconds per script; numbers NOT representative

Each benchmark runs as its own process (``python benchmarks/<script> --threads N --out DIR [--quick]``) and writes
``DIR/<name>.json``; this script then writes ``DIR/run.json`` (what ran, how long) and ``DIR/README.md`` (the
tables). Default DIR: benchmarks/results (benchmarks/results-quick with --quick).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import common  # benchmarks/common.py, beside this script

# (name, script): cold start first, while the file cache is as cold as this run gets
BENCHMARKS = [
    ("cold_start", "bench_cold_start.py"),
    ("request", "bench_request.py"),
    ("samplers", "bench_samplers.py"),
    ("training", "bench_training.py"),
    ("neighbours", "bench_neighbours.py"),
    ("flops", "bench_flops.py"),
]


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks, then render README.md from their JSON."""
    ap = common.base_parser(__doc__)
    names = [n for n, _ in BENCHMARKS]
    ap.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(names)}")
    args = ap.parse_args(argv)
    out = common.out_dir(args)
    out.mkdir(parents=True, exist_ok=True)
    selected = [b for b in BENCHMARKS if args.only is None or b[0] in args.only.split(",")]
    if not selected:
        raise SystemExit(f"--only names none of {names}")
    t0 = time.perf_counter()
    runs = []
    for name, script in selected:
        cmd = [sys.executable, str(common.HERE / script), "--threads", str(args.threads)]
        cmd += ["--out", args.out] if args.out else []  # the scripts' own default is this run's folder too
        cmd += ["--config", args.config] if Path(args.config).resolve() != common.DEFAULT_CONFIG else []
        cmd += ["--quick"] if args.quick else []
        print(f"== {name}: {script}", flush=True)
        t = time.perf_counter()
        rc = subprocess.run(cmd, cwd=common.ROOT).returncode
        runs.append({"name": name, "script": script, "returncode": rc, "seconds": time.perf_counter() - t})
        if rc != 0:
            print(f"!! {name} failed with exit code {rc}", file=sys.stderr, flush=True)
    total = time.perf_counter() - t0
    results = []
    for r in runs:
        path = out / f"{r['name']}.json"
        if r["returncode"] == 0 and path.is_file():
            results.append(json.loads(path.read_text()))
    from ambient.research.studies import command_line  # imports torch: not before the cold start ran

    command = command_line()
    record = {"command": command, "quick": args.quick, "threads": args.threads, "total_s": total, "runs": runs}
    (out / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    text = common.render_readme(results, command, total, args.quick)
    failed = [r["name"] for r in runs if r["returncode"] != 0]
    if failed:
        text += f"\n**Failed:** {', '.join(failed)} (see the console output of the run).\n"
    (out / "README.md").write_text(text)
    print(f"== {len(results)}/{len(runs)} benchmarks in {total / 60:.1f} min -> {out / 'README.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
