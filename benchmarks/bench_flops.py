"""6. Distance to the limit: floating-point operations of one network evaluation (``torch.utils.flop_counter.
FlopCounterMode``: convolutions and matmuls, 2 per multiply-add; norms and activations are not counted) times the
evaluations of a side-by-side request (counted in a real ``Handlers.generate`` call), against this machine's matmul
peak measured in the same run (fp32 and bf16 ``torch.matmul`` of large square matrices): the share of the peak that
sampling reaches. For scale, the same sampling under bf16 autocast (which the app does not use).

    python benchmarks/bench_flops.py [--quick] [--threads N] [--matmul-n 2048]
"""

from __future__ import annotations

import sys
import tempfile
import time
from typing import Any

import common  # benchmarks/common.py, beside this script
from bench_request import app_default_pair  # the app's registry, as the request benchmark loads it

NAME = "flops"


def matmul_peak(n: int, dtype: Any, repeats: int) -> dict[str, float]:
    """Best GFLOP/s of an n x n @ n x n torch.matmul in ``dtype`` (one warm-up)."""
    import torch

    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return {"n": n, "best_s": best, "gflops": 2 * n**3 / best / 1e9}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write flops.json."""
    ap = common.base_parser(__doc__)
    ap.add_argument("--matmul-n", type=int, default=None, help="square matrix size (default 2048, --quick 512)")
    ap.add_argument("--repeats", type=int, default=None, help="timed sampling runs (default 5, --quick 1)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    threads = common.set_threads(args.threads)
    env = common.env_info(threads)
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ambient.sampling import sample
    from demo.handlers import Handlers

    quick = args.quick
    n_mm = args.matmul_n or (512 if quick else 2048)
    repeats = args.repeats or (1 if quick else 5)
    steps = 2 if quick else 18
    n_images = 4

    with tempfile.TemporaryDirectory(prefix="bench-flops-") as tmp:
        registry, pair, pair_info = common.load_pair(args.config, tmp, app_default_pair)
        handlers = Handlers(registry, cache_size=1)
        shape = pair.image_shape
        x1 = torch.randn(1, *shape)
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            pair.baseline(x1, torch.tensor(1.0), None)
        flops_per_eval = int(fc.get_total_flops())  # one image, one network evaluation

        # count the image evaluations of a real request, and its total FLOPs as the counter sees them
        evals = {"n": 0}
        saved = []
        for m in {id(pair.ambient): pair.ambient, id(pair.baseline): pair.baseline}.values():
            fwd = m.forward

            def counting(x: Any, *a: Any, _fwd: Any = fwd, **k: Any) -> Any:
                evals["n"] += len(x)
                return _fwd(x, *a, **k)

            m.forward = counting
            saved.append(m)
        try:
            with FlopCounterMode(display=False) as fc_req:
                handlers.generate(pair.name, "", 1234, n_images, steps, 1.0, None, "handover", 4)
        finally:
            for m in saved:
                m.__dict__.pop("forward", None)
        request_flops = int(fc_req.get_total_flops())
        sampling_flops = flops_per_eval * evals["n"]

        # sampling as the request does it: Ambient (hand-over at sigma_min) and baseline, batch of 4, fp32
        seeds = list(range(n_images))
        kw = {"steps": steps, "sigma_min": pair.sigma_min, "sigma_max": pair.sigma_max}

        def sampling() -> None:
            sample(pair.ambient, pair.baseline, seeds, shape, None, sigma_c=pair.sigma_min, **kw)
            sample(pair.baseline, None, seeds, shape, None, **kw)

        def sampling_bf16() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                sampling()

        times = common.interleaved({"fp32": sampling, "bf16_autocast": sampling_bf16}, repeats, warmup=1)
        req_times = []
        for r in range(repeats):
            req_times.append(
                common.timed(lambda r=r: handlers.generate(pair.name, "", 5000 + 8 * r, n_images, steps))[1]
            )

    peak32 = matmul_peak(n_mm, torch.float32, 3 if quick else 5)
    peak16 = matmul_peak(n_mm, torch.bfloat16, 3 if quick else 5)
    t_fp32 = common.stats(times["fp32"])["median"]
    t_bf16 = common.stats(times["bf16_autocast"])["median"]
    t_req = common.stats(req_times)["median"]
    achieved = sampling_flops / t_fp32 / 1e9
    achieved_req = request_flops / t_req / 1e9
    achieved_bf16 = sampling_flops / t_bf16 / 1e9
    share32 = achieved / peak32["gflops"]
    rows = [
        ["FLOPs per network evaluation (one 32x32 image)", f"{flops_per_eval / 1e6:.1f} M"],
        [f"image evaluations per request ({steps} Heun steps, 2 x {n_images} images)", evals["n"]],
        ["sampling FLOPs per request", f"{sampling_flops / 1e9:.1f} G"],
        ["request FLOPs (FlopCounterMode over Handlers.generate)", f"{request_flops / 1e9:.1f} G"],
        ["sampling time per request (fp32)", f"{t_fp32:.3f} s"],
        ["whole request time", f"{t_req:.3f} s"],
        ["sampling throughput", f"{achieved:.1f} GFLOP/s"],
        [f"matmul peak fp32 ({n_mm}^2)", f"{peak32['gflops']:.1f} GFLOP/s"],
        [f"matmul peak bf16 ({n_mm}^2)", f"{peak16['gflops']:.1f} GFLOP/s"],
        ["share of the fp32 peak reached by sampling", f"{100 * share32:.1f}%"],
        ["share of the bf16 peak reached by sampling", f"{100 * achieved / peak16['gflops']:.1f}%"],
        ["sampling under bf16 autocast (not what the app does)", f"{t_bf16:.3f} s, {achieved_bf16:.1f} GFLOP/s"],
        ["lower bound at the fp32 peak", f"{sampling_flops / 1e9 / peak32['gflops']:.3f} s"],
    ]
    payload = common.result(
        NAME,
        "6. Distance to the limit (FLOPs per request vs measured matmul peak)",
        args,
        env,
        t_start,
        headline={
            "flops_per_eval": float(flops_per_eval),
            "sampling_gflops_per_s": achieved,
            "peak_fp32_gflops": peak32["gflops"],
            "peak_bf16_gflops": peak16["gflops"],
            "share_of_fp32_peak": share32,
        },
        pair=pair_info,
        settings={"steps": steps, "n_images": n_images, "matmul_n": n_mm, "repeats": repeats},
        flops_per_eval=flops_per_eval,
        image_evals_per_request=evals["n"],
        sampling_flops_per_request=sampling_flops,
        request_flops=request_flops,
        sampling_s=times,
        request_s=req_times,
        achieved_gflops={"sampling_fp32": achieved, "request": achieved_req, "sampling_bf16_autocast": achieved_bf16},
        matmul_peak={"fp32": peak32, "bf16": peak16},
        share_of_peak={
            "sampling_vs_fp32": share32,
            "sampling_vs_bf16": achieved / peak16["gflops"],
            "request_vs_fp32": achieved_req / peak32["gflops"],
        },
        comparisons=[
            common.comparison(
                "sampling FLOP/s vs this machine's fp32 matmul peak",
                "sampling (fp32)",
                achieved,
                "torch.matmul fp32 peak",
                peak32["gflops"],
                "GFLOP/s",
                lower_is_better=False,
            ),
            common.comparison(
                "sampling time per request: bf16 autocast (as the app runs where the CPU has bf16) vs fp32",
                "fp32",
                t_fp32,
                "bf16 autocast",
                t_bf16,
                "s",
            ),
        ],
        tables=[common.table("FLOPs and peak", ["quantity", "value"], rows)],
        notes=[
            "FlopCounterMode counts convolutions and matrix products only (2 FLOPs per multiply-add); group norms, "
            "SiLU and the sampler's elementwise work are extra time, not extra counted FLOPs.",
            "The request's sampling runs in fp32 (no autocast in Handlers.generate); bf16 autocast is shown for scale.",
        ],
    )
    path = common.write_result(common.out_dir(args), NAME, payload)
    print(f"{NAME}: {achieved:.1f} GFLOP/s of {peak32['gflops']:.1f} fp32 peak ({100 * share32:.1f}%) -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
