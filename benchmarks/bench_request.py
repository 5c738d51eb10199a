"""1. The side-by-side request, end to end: ``demo.handlers.Handlers.generate`` as the app calls it (2 models x 4
images at the UI's defaults: empty prompt, the app's sampler and its starting steps, guidance 1, sigma_c at the left
end, hand-over, 4 neighbours), neighbour search included, plus what ``/generate`` adds (PNG encoding and JSON),
repeated with fresh seeds (no cache hits). The library calls inside each request are timed in place (sampling, of
which network evaluations; embedding; faiss search; ratio test; encoding).

    python benchmarks/bench_request.py [--quick] [--threads N] [--requests R]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common  # benchmarks/common.py, beside this script

NAME = "request"
TARGET_MEDIAN_S = 1.5


def app_default_pair(config: Path) -> tuple[Any, Any, str | None]:
    """(the app's registry, the config's default pair from it or None, why not): the pair Handlers serve."""
    from ambient.pair import PairError
    from demo.pairs import PairRegistry

    registry = PairRegistry.from_path(config)
    if registry.config_error is not None:
        return registry, None, registry.config_error
    try:
        return registry, registry.get(registry.default), None
    except PairError as e:
        return registry, None, str(e)


def instrument(pair: Any, probe: common.Probe) -> list[tuple[Any, str, Any]]:
    """Wrap the library calls a request makes with timers; returns what to restore."""
    saved = [(pair, "side_by_side", None)]
    pair.side_by_side = probe.wrap("sampling", pair.side_by_side)
    for model in {id(pair.ambient): pair.ambient, id(pair.baseline): pair.baseline}.values():
        saved.append((model, "forward", None))
        model.forward = probe.wrap("network", model.forward, count_items=True)
    index = pair.index
    emb = index.embedder  # builds it on first use
    saved += [(emb, "embed", None), (index, "search_embeddings", None), (index, "ratio_test", None)]
    emb.embed = probe.wrap("embedding", emb.embed, count_items=True)
    index.search_embeddings = probe.wrap("search", index.search_embeddings, count_items=True)
    index.ratio_test = probe.wrap("ratio_test", index.ratio_test, count_items=True)
    return saved


def restore(saved: list[tuple[Any, str, Any]]) -> None:
    """Undo ``instrument``."""
    for obj, attr, value in saved:
        if value is None:
            obj.__dict__.pop(attr, None)
        else:
            setattr(obj, attr, value)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write request.json."""
    ap = common.base_parser(__doc__)
    ap.add_argument("--requests", type=int, default=None, help="timed requests (default 10, --quick 2)")
    ap.add_argument("--prompt", default="", help="prompt (default: empty, as the UI starts)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    threads = common.set_threads(args.threads)
    env = common.env_info(threads)
    n_req = args.requests or (2 if args.quick else 10)
    from ambient.sampling import nfe
    from demo import handlers as h
    from demo.handlers import Handlers

    with tempfile.TemporaryDirectory(prefix="bench-request-") as tmp:
        registry, pair, pair_info = common.load_pair(args.config, tmp, app_default_pair)
        handlers = Handlers(registry, cache_size=1)
        steps = 2 if args.quick else pair.start_steps(handlers.sampler)  # the app's own start
        settings = {
            "sampler": handlers.sampler,
            "pair": pair.name,
            "prompt": args.prompt,
            "n_images": 4,
            "steps": steps,
            "guidance": 1.0,
            "sigma_c": None,
            "mode": "handover",
            "k": 4,
        }

        def request(seed: int) -> Any:
            return handlers.generate(
                settings["pair"],
                settings["prompt"],
                seed,
                settings["n_images"],
                settings["steps"],
                settings["guidance"],
                settings["sigma_c"],
                settings["mode"],
                settings["k"],
            )

        _, first_s = common.timed(lambda: request(10_000))  # loads the embedder (and text encoder with a prompt)
        probe = common.Probe()
        saved = instrument(pair, probe)
        totals: list[float] = []
        parts: list[dict[str, float]] = []
        items: dict[str, int] = {}
        try:
            for r in range(n_req):
                probe.reset()
                res, dt = common.timed(lambda r=r: request(20_000 + 16 * r))
                assert not res.cached
                _, enc = common.timed(lambda res=res: h.result_json(res, True))  # what /generate adds: PNGs, JSON
                totals.append(dt + enc)
                parts.append({**probe.seconds, "encoding": enc})
                items = dict(probe.items)
        finally:
            restore(saved)

    total = common.stats(totals)
    names = ["sampling", "network", "embedding", "search", "ratio_test", "encoding"]
    part_median = {k: common.stats([p.get(k, 0.0) for p in parts])["median"] for k in names}
    part_median["sampler_overhead"] = max(0.0, part_median["sampling"] - part_median["network"])
    accounted = [
        p.get("sampling", 0) + p.get("embedding", 0) + p.get("search", 0) + p.get("ratio_test", 0) + p["encoding"]
        for p in parts
    ]
    part_median["other"] = common.stats([t - a for t, a in zip(totals, accounted, strict=True)])["median"]
    image_evals = items.get("network", 0)
    rows = [
        ["sampling (Pair.side_by_side: both runs recorded, x0_hat decoded)", part_median["sampling"]],
        ["  of which network evaluations (summed over the two threads)", part_median["network"]],
        ["  of which sampler loop, records and threads", part_median["sampler_overhead"]],
        ["embedding (index embedder)", part_median["embedding"]],
        ["search (faiss, search_embeddings)", part_median["search"]],
        ["ratio test (exact pixel L2)", part_median["ratio_test"]],
        ["encoding (/generate's PNGs and JSON)", part_median["encoding"]],
        ["other (validation, trajectories, uint8, verdicts)", part_median["other"]],
        ["total", total["median"]],
    ]
    breakdown = common.table(
        "Breakdown of one request (medians over the requests)",
        ["part", "seconds", "share"],
        [[n, f"{s:.3f}", f"{100 * s / total['median']:.0f}%"] for n, s in rows],
    )
    per_request = {
        "network_calls": nfe(steps, handlers.sampler) * 2,
        "image_evaluations": image_evals,
        "images_embedded": items.get("embedding", 0),
        "queries_searched": items.get("search", 0),
    }
    notes = [
        f"{n_req} requests after one untimed first request ({first_s:.2f} s, it builds the embedder); "
        "each with new seeds so the handlers' cache never answers.",
        f"Per request: {per_request['network_calls']} network calls on batches of 4 "
        f"({image_evals} image evaluations), {per_request['images_embedded']} images embedded (finals and the x0_hat "
        f"of every step), {per_request['queries_searched']} index queries.",
        f"threads: {threads}; the app itself runs with cores // max-concurrency = "
        f"{max(1, (env['cores'] or 1) // 2)} torch threads by default (app.py --threads 0).",
    ]
    payload = common.result(
        NAME,
        "1. Side-by-side request (Handlers.generate, 2 models x 4 images, neighbours included)",
        args,
        env,
        t_start,
        headline={"request_median_s": total["median"], "request_p90_s": total["p90"], "first_request_s": first_s},
        pair=pair_info,
        settings=settings,
        request_s=total,
        first_request_s=first_s,
        parts_median_s=part_median,
        per_request=per_request,
        requests_s=totals,
        targets=[
            common.target(
                "side-by-side request, median",
                total["median"],
                "<=",
                TARGET_MEDIAN_S,
                "s",
                evaluated=not args.quick,
                note="--quick uses 2 steps" if args.quick else "",
            ),
        ],
        tables=[
            breakdown,
            common.table(
                "Request latency",
                ["requests", "median s", "p90 s", "min s", "max s"],
                [[total["n"], total["median"], total["p90"], total["min"], total["max"]]],
            ),
        ],
        notes=notes,
    )
    path = common.write_result(common.out_dir(args), NAME, payload)
    print(f"{NAME}: median {total['median']:.3f} s, p90 {total['p90']:.3f} s -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
