"""2. Our sampler against diffusers' scheduler loops over the same trained UNet, at equal network evaluations (NFE),
and against the stock DDPMPipeline (1,000 steps).

Arms, all from the same starting noise (``ambient.sampling.initial_noise``), batch of 4 as in the app:

* ours Heun (EDM Algorithm 2, ``steps`` sigmas: NFE = 2 steps - 1) vs diffusers ``HeunDiscreteScheduler`` set up for
  EDM: a beta table whose sigmas run log-linearly from sigma_min to sigma_max (``alphas_cumprod`` kept in float64),
  ``use_karras_sigmas=True`` (rho 7), ``prediction_type="sample"``, and our preconditioned ``EDMDenoiser`` as the
  x0 model (the loop hands it ``scale_model_input(x) * sqrt(sigma^2 + 1)`` and the scheduler's sigma);
* ours Euler (NFE steps) vs diffusers ``EDMEulerScheduler`` (karras, sigma_data 0.5, ``prediction_type="epsilon"``
  = EDM's F-parametrisation): the scheduler's own ``scale_model_input`` (c_in) and ``step`` (c_skip, c_out) drive
  the raw network ``CondUNet`` at ``c_noise = scheduler.timesteps[i]``;
* diffusers ``EDMDPMSolverMultistepScheduler`` (DPM-Solver++ 2M, same configuration) at the same NFE, for quality;
* stock ``DDPMPipeline`` (``DDPMScheduler`` defaults, 1,000 steps) around a UNet2DModel of the same architecture
  (no text projection; the time per image does not depend on the weights).

Quality: mean |difference| between each arm and ours from the same noise, the error of each arm against a
converged ODE solution (our Heun with many steps), and the Frechet distance (``ambient.memorization.metrics.frechet_report``) of our
Heun samples against held-out Fashion-MNIST test images next to the held-out floor. ``--ddpm-quality-n N`` also
samples N images with a 1,000-step DDPM loop over our denoiser converted to epsilon prediction (slow: 1,000 NFE per
image) and compares Frechet distances at equal N.

    python benchmarks/bench_samplers.py [--quick] [--threads N] [--model baseline|ambient] [--ddpm-quality-n N]
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import common  # benchmarks/common.py, beside this script

NAME = "samplers"
TARGET_DDPM_SPEEDUP = 20.0


# ----------------------------------------------------------------------------- the diffusers loops


def edm_heun_scheduler(sigma_min: float, sigma_max: float, steps: int) -> Any:
    """diffusers' HeunDiscreteScheduler configured so that its karras sigmas are EDM's (sigma_min..sigma_max, rho 7)."""
    import numpy as np
    import torch
    from diffusers import HeunDiscreteScheduler

    sig = np.exp(np.linspace(np.log(sigma_min), np.log(sigma_max), 1000))
    ac = 1.0 / (1.0 + sig**2)
    betas = 1.0 - ac / np.concatenate([[1.0], ac[:-1]])
    sched = HeunDiscreteScheduler(
        num_train_timesteps=1000, trained_betas=betas, prediction_type="sample", use_karras_sigmas=True
    )
    # float32 cumprod of the betas puts sigma_min 0.7% off; keep the exact table (set_timesteps reads it).
    sched.alphas_cumprod = torch.from_numpy(ac)
    sched.set_timesteps(steps)
    return sched


def run_diffusers_heun(model: Any, x: Any, cond: Any, sched: Any) -> Any:
    """diffusers' Heun loop with our EDMDenoiser as an x0 ("sample") model."""
    import torch

    sched.set_timesteps(sched.num_inference_steps)
    with torch.no_grad():
        for t in sched.timesteps:
            x_in = sched.scale_model_input(x, t)
            sigma = sched.sigmas[sched.step_index]
            x0 = model(x_in * (sigma**2 + 1).sqrt(), sigma, cond)
            x = sched.step(x0, t, x).prev_sample
    return x.clamp(-1, 1)


def run_diffusers_edm(model: Any, x: Any, cond: Any, sched: Any) -> Any:
    """An EDM scheduler's own loop (c_in via scale_model_input, c_skip/c_out via step) over the raw network F."""
    import torch

    sched.set_timesteps(sched.num_inference_steps)
    net = model.net
    with torch.no_grad():
        for t in sched.timesteps:
            x_in = sched.scale_model_input(x, t)
            f = net(x_in, t.reshape(1).expand(len(x)), cond)
            x = sched.step(f, t, x).prev_sample
    return x.clamp(-1, 1)


class EpsilonFromEDM:
    """Our EDM denoiser seen as a DDPM epsilon model: eps(x_t, t) = (x - D(x, sigma_t)) / sigma_t, x = x_t / sqrt(a_t)."""

    def __init__(self, model: Any, alphas_cumprod: Any):
        import torch

        self.model = model
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self.sqrt_a = ac.sqrt().float()
        self.sigma = ((1 - ac) / ac).sqrt().float()

    def __call__(self, x_t: Any, t: int, cond: Any) -> Any:
        """The epsilon prediction at integer timestep t."""
        s = self.sigma[int(t)]
        x = x_t / self.sqrt_a[int(t)]
        return (x - self.model(x, s, cond)) / s


def run_ddpm_over_ours(model: Any, z: Any, cond: Any, steps: int, seed: int) -> Any:
    """A DDPM ancestral loop (DDPMScheduler defaults) over our denoiser converted to epsilon prediction."""
    import torch
    from diffusers import DDPMScheduler

    sched = DDPMScheduler()
    sched.set_timesteps(steps)
    eps = EpsilonFromEDM(model, sched.alphas_cumprod)
    g = torch.Generator().manual_seed(seed)
    x = z.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(eps(x, int(t), cond), t, x, generator=g).prev_sample
    return x.clamp(-1, 1)


def stock_ddpm_pipeline(unet_config: dict[str, Any]) -> Any:
    """diffusers' DDPMPipeline with its default DDPMScheduler around a random UNet2DModel of our architecture."""
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    pipe = DDPMPipeline(unet=UNet2DModel(**unet_config).eval(), scheduler=DDPMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ----------------------------------------------------------------------------- the benchmark


def mean_abs(a: Any, b: Any) -> float:
    """Mean absolute difference of two image batches in [-1, 1]."""
    return float((a.float() - b.float()).abs().mean())


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write samplers.json."""
    ap = common.base_parser(__doc__)
    ap.add_argument("--model", choices=("baseline", "ambient"), default="baseline", help="which model of the pair")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds per arm (default 3, --quick 1)")
    ap.add_argument("--ddpm-steps", type=int, default=None, help="stock DDPMPipeline steps (1000; --quick 4)")
    ap.add_argument("--fd-n", type=int, default=None, help="samples for the Frechet distance (default 128)")
    ap.add_argument("--ddpm-quality-n", type=int, default=0, help="also sample N images with 1,000-step DDPM (slow)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    threads = common.set_threads(args.threads)
    env = common.env_info(threads)
    import torch
    from diffusers import EDMDPMSolverMultistepScheduler, EDMEulerScheduler

    from ambient.evaluate import encode_prompts, prompt_plan
    from ambient.memorization.metrics import frechet_report
    from ambient.sampling import initial_noise, nfe, sample

    quick = args.quick
    steps = 2 if quick else 18
    n_eval = nfe(steps, "heun")
    rounds = args.rounds or (1 if quick else 3)
    ddpm_steps = args.ddpm_steps or (4 if quick else 1000)
    ref_steps = 4 if quick else 64
    fd_n = args.fd_n or (4 if quick else 128)
    batch = 4
    seeds = list(range(batch))

    with tempfile.TemporaryDirectory(prefix="bench-samplers-") as tmp:
        _, pair, pair_info = common.load_pair(args.config, tmp)
    model = pair.baseline if args.model == "baseline" else pair.ambient
    if not hasattr(model, "net") or not hasattr(model, "sigma_data"):
        raise SystemExit(f"{NAME}: the pair's {args.model} is not an EDMDenoiser (kind {pair.spec.kind!r})")
    shape, lo, hi = pair.image_shape, pair.sigma_min, pair.sigma_max
    cond = None  # the empty prompt, as the app starts

    def noise() -> Any:
        return initial_noise(seeds, shape, hi)

    edm = {"sigma_min": lo, "sigma_max": hi, "sigma_data": model.sigma_data}
    heun_sched = edm_heun_scheduler(lo, hi, steps)
    euler_sched = EDMEulerScheduler(**edm, sigma_schedule="karras", prediction_type="epsilon", rho=7.0)
    euler_sched.set_timesteps(n_eval)
    dpm_sched = EDMDPMSolverMultistepScheduler(**edm, sigma_schedule="karras", prediction_type="epsilon", rho=7.0)
    dpm_sched.set_timesteps(n_eval)
    common_kw = {"sigma_min": lo, "sigma_max": hi}
    arms: dict[str, Callable[[], Any]] = {
        "ours_heun": lambda: sample(model, None, seeds, shape, cond, steps, sampler="heun", **common_kw),
        "diffusers_heun": lambda: run_diffusers_heun(model, noise(), cond, heun_sched),
        "ours_euler": lambda: sample(model, None, seeds, shape, cond, n_eval, sampler="euler", **common_kw),
        "diffusers_edm_euler": lambda: run_diffusers_edm(model, noise(), cond, euler_sched),
        "diffusers_edm_dpmpp_2m": lambda: run_diffusers_edm(model, noise(), cond, dpm_sched),
    }
    labels = {
        "ours_heun": f"ours, Heun {steps} steps",
        "diffusers_heun": f"diffusers HeunDiscreteScheduler {steps} steps",
        "ours_euler": f"ours, Euler {n_eval} steps",
        "diffusers_edm_euler": f"diffusers EDMEulerScheduler {n_eval} steps",
        "diffusers_edm_dpmpp_2m": f"diffusers EDMDPMSolverMultistepScheduler {n_eval} steps",
    }
    outputs: dict[str, Any] = {}

    def keep(name: str, fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> None:
            outputs[name] = fn()

        return run

    times = common.interleaved({k: keep(k, fn) for k, fn in arms.items()}, rounds, warmup=1)
    per_image = {k: common.stats(v)["median"] / batch for k, v in times.items()}
    reference = sample(model, None, seeds, shape, cond, ref_steps, sampler="heun", **common_kw)
    diffs = {
        "diffusers_heun_vs_ours_heun": mean_abs(outputs["diffusers_heun"], outputs["ours_heun"]),
        "diffusers_edm_euler_vs_ours_euler": mean_abs(outputs["diffusers_edm_euler"], outputs["ours_euler"]),
        "diffusers_dpmpp_vs_ours_heun": mean_abs(outputs["diffusers_edm_dpmpp_2m"], outputs["ours_heun"]),
    }
    err_vs_ode = {k: mean_abs(v, reference) for k, v in outputs.items()}

    # stock DDPMPipeline, same batch
    pipe = stock_ddpm_pipeline(dict(model.net.unet_config))
    pipe(batch_size=batch, num_inference_steps=2, output_type="np")  # warm-up
    _, ddpm_s = common.timed(
        lambda: pipe(
            batch_size=batch,
            num_inference_steps=ddpm_steps,
            output_type="np",
            generator=torch.Generator().manual_seed(0),
        )
    )
    ddpm_per_image_1000 = ddpm_s / batch * (1000 / ddpm_steps)
    ours_per_image = per_image["ours_heun"]

    # quality: Frechet distance of our Heun samples against held-out test images, with the held-out floor
    test, test_source = common.heldout_images(3 * fd_n, seed=1)
    ref_imgs, floor_imgs = test.images[:fd_n], test.images[fd_n : 2 * fd_n]
    class_names = pair.train.class_names if pair.cond_dim else None
    prompts, _ = prompt_plan(fd_n, class_names)
    # --quick: unconditional, so as not to load the text encoder
    fd_cond = encode_prompts(prompts, pair.text_model, pair.cond_dim) if any(prompts) and not quick else None
    fd_seeds = list(range(50_000, 50_000 + fd_n))
    chunks, fd_t0 = [], time.perf_counter()
    for s in range(0, fd_n, 64):
        c = None if fd_cond is None else fd_cond[s : s + 64]
        chunks.append(sample(model, None, fd_seeds[s : s + 64], shape, c, steps, sampler="heun", **common_kw))
    fd_sample_s = time.perf_counter() - fd_t0
    ours_fd = pair.to_data(torch.cat(chunks))  # an upsampled pair is scored at its training images' size
    fd_ours = frechet_report(ours_fd, ref_imgs)["frechet_distance"]
    fd_floor = frechet_report(floor_imgs, ref_imgs)["frechet_distance"]
    quality: dict[str, Any] = {
        "frechet_n": fd_n,
        "reference": f"{fd_n} held-out images ({test_source})",
        "frechet_ours_heun": fd_ours,
        "frechet_heldout_floor": fd_floor,
        "ours_heun_sampling_s": fd_sample_s,
        "conditioning": "class prompts spread over the classes (ambient.evaluate.prompt_plan)"
        if fd_cond is not None
        else "none",
    }
    if args.ddpm_quality_n:
        n = min(args.ddpm_quality_n, fd_n)
        z = initial_noise(fd_seeds[:n], shape, 1.0)
        c = None if fd_cond is None else fd_cond[:n]
        x_ddpm, ddpm_q_s = common.timed(lambda: run_ddpm_over_ours(model, z, c, 1000, seed=0))
        x_ddpm = pair.to_data(x_ddpm)
        quality |= {
            "ddpm_quality_n": n,
            "frechet_ddpm1000_over_ours": frechet_report(x_ddpm, ref_imgs[:n])["frechet_distance"],
            "frechet_ours_heun_same_n": frechet_report(ours_fd[:n], ref_imgs[:n])["frechet_distance"],
            "ddpm1000_sampling_s": ddpm_q_s,
        }

    comparisons = [
        common.comparison(
            f"sampler time per image, equal NFE ({n_eval}), Heun",
            labels["ours_heun"],
            per_image["ours_heun"],
            labels["diffusers_heun"],
            per_image["diffusers_heun"],
            "s",
        ),
        common.comparison(
            f"sampler time per image, equal NFE ({n_eval}), Euler",
            labels["ours_euler"],
            per_image["ours_euler"],
            labels["diffusers_edm_euler"],
            per_image["diffusers_edm_euler"],
            "s",
        ),
        common.comparison(
            f"sampler time per image, equal NFE ({n_eval}), our Heun vs DPM-Solver++(2M)",
            labels["ours_heun"],
            per_image["ours_heun"],
            labels["diffusers_edm_dpmpp_2m"],
            per_image["diffusers_edm_dpmpp_2m"],
            "s",
        ),
        common.comparison(
            "time per image vs stock DDPMPipeline (1,000 steps)",
            labels["ours_heun"],
            ours_per_image,
            "DDPMPipeline 1000 steps" + (f" (extrapolated from {ddpm_steps})" if ddpm_steps != 1000 else ""),
            ddpm_per_image_1000,
            "s",
        ),
    ]
    heun_ratio = comparisons[0]["ratio"]
    euler_ratio = comparisons[1]["ratio"]
    ddpm_ratio = comparisons[3]["ratio"]
    quality_note = (
        f"Frechet distance of our Heun ({fd_ours:.3g}) vs DDPM-1000 over the same network "
        f"({quality['frechet_ddpm1000_over_ours']:.3g}) at N={quality['ddpm_quality_n']}"
        if "frechet_ddpm1000_over_ours" in quality
        else "time only: the DDPM-1000 quality run is opt-in (--ddpm-quality-n N, about 1,000 NFE per image)"
    )
    targets = [
        common.target(
            "our Heun vs diffusers Heun loop at equal NFE (speed ratio, >= 1: no slower)",
            heun_ratio,
            ">=",
            1.0,
            "x",
            evaluated=not quick,
        ),
        common.target(
            "our Euler vs diffusers EDMEulerScheduler loop at equal NFE (speed ratio)",
            euler_ratio,
            ">=",
            1.0,
            "x",
            evaluated=not quick,
        ),
        common.target(
            "speed-up per image over stock DDPMPipeline (1,000 steps)",
            ddpm_ratio,
            ">=",
            TARGET_DDPM_SPEEDUP,
            "x",
            evaluated=not quick,
            note=quality_note,
        ),
    ]
    rows = [
        [labels[k], nfe_k, f"{per_image[k] * 1000:.1f}", f"{err_vs_ode[k]:.2e}"]
        for k, nfe_k in zip(arms, [n_eval] * len(arms), strict=True)
    ]
    rows.append(
        [
            "stock DDPMPipeline, 1000 steps" + (f" (extrapolated from {ddpm_steps})" if ddpm_steps != 1000 else ""),
            1000,
            f"{ddpm_per_image_1000 * 1000:.1f}",
            "-",
        ]
    )
    notes = [
        f"Model: the pair's {args.model} ({pair_info['used']}); batch {batch} (the app's), empty prompt; "
        f"{rounds} interleaved rounds after a warm-up round, medians.",
        f"Same start noise: ours vs diffusers differ by {diffs['diffusers_heun_vs_ours_heun']:.2e} (Heun) and "
        f"{diffs['diffusers_edm_euler_vs_ours_euler']:.2e} (Euler) mean |x| on [-1, 1]: the same computation.",
        f"Error vs a converged ODE solution (our Heun, {ref_steps} steps, {nfe(ref_steps)} NFE), mean |x|: the "
        "quality of each sampler at this NFE.",
        f"Frechet distance (fmnist-cnn features, N={fd_n}): our Heun {fd_ours:.3g}; held-out real images "
        f"{fd_floor:.3g} (the floor at this N).",
        quality_note + ".",
        "Stock DDPMPipeline: DDPMScheduler() defaults (linear betas, 1,000 steps), UNet2DModel of the same "
        "config without the text projection, random weights; the diffusers EDM schedulers start from our noise "
        "(sigma_max * z), not from their init_noise_sigma sqrt(sigma_max^2 + 1).",
    ]
    payload = common.result(
        NAME,
        "2. Sampler vs diffusers (equal NFE) and vs the stock DDPMPipeline",
        args,
        env,
        t_start,
        headline={
            "ours_heun_s_per_image": ours_per_image,
            "diffusers_heun_s_per_image": per_image["diffusers_heun"],
            "ddpm1000_s_per_image": ddpm_per_image_1000,
        },
        pair=pair_info,
        settings={
            "model": args.model,
            "steps_heun": steps,
            "nfe": n_eval,
            "batch": batch,
            "rounds": rounds,
            "ddpm_steps_timed": ddpm_steps,
            "reference_ode_steps": ref_steps,
        },
        times_s=times,
        per_image_s=per_image,
        ddpm_pipeline={"steps_timed": ddpm_steps, "seconds": ddpm_s, "per_image_s_at_1000": ddpm_per_image_1000},
        mean_abs_diff_same_noise=diffs,
        mean_abs_error_vs_converged=err_vs_ode,
        quality=quality,
        comparisons=comparisons,
        targets=targets,
        tables=[
            common.table(
                "Samplers (batch of 4)",
                ["sampler", "NFE", "ms per image", "error vs converged ODE"],
                rows,
            )
        ],
        notes=notes,
    )
    path = common.write_result(common.out_dir(args), NAME, payload)
    print(
        f"{NAME}: ours {ours_per_image * 1e3:.1f} ms/img, heun ratio {heun_ratio:.2f}, ddpm {ddpm_ratio:.1f}x -> {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
