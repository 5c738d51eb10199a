"""Both networks of a pair in one call (weights stacked, ``torch.func.vmap`` over ``functional_call``) against two
calls in a row, on one sampler step of the default pair (4 images a side, as the app); paired, alternating rounds.

    python benchmarks/bench_stacked.py [--rounds 5] [--calls 10]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch.func import functional_call, stack_module_state

from ambient.denoiser import load_denoiser
from ambient.sampling import initial_noise


def main() -> None:
    """Time both ways and print the medians and the largest difference between their outputs."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ambient", default="assets/fmnist-100/ambient_up2_s4_seed1")
    ap.add_argument("--baseline", default="assets/fmnist-100/baseline_up2_seed1")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=10)
    args = ap.parse_args()
    a, b = load_denoiser(args.ambient).eval(), load_denoiser(args.baseline).eval()
    x = initial_noise(range(4), a.image_shape, 80.0)
    sigma = torch.tensor(5.0)
    params, buffers = stack_module_state([a, b])
    skeleton = copy.deepcopy(a).to("meta")

    def one(p: dict, bu: dict, xx: torch.Tensor) -> torch.Tensor:
        return functional_call(skeleton, (p, bu), (xx, sigma, None))

    ways = {
        "two calls": lambda: torch.stack([a(x, sigma, None), b(x, sigma, None)]),
        "stacked (vmap)": lambda: torch.vmap(one, in_dims=(0, 0, None))(params, buffers, x),
    }
    times: dict[str, list[float]] = {k: [] for k in ways}
    with torch.no_grad():
        diff = (ways["two calls"]() - ways["stacked (vmap)"]()).abs().max().item()
        for _ in range(args.rounds):
            for name, fn in ways.items():
                fn()
                t = time.perf_counter()
                for _ in range(args.calls):
                    fn()
                times[name].append((time.perf_counter() - t) / args.calls)
    for name, ts in times.items():
        print(f"{name:15s} median {statistics.median(ts) * 1000:.1f} ms per step (both sides)")
    ratio = statistics.median(times["stacked (vmap)"]) / statistics.median(times["two calls"])
    print(f"stacked / two calls: {ratio:.2f}; largest output difference {diff:.2g}; threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
