"""3. Training throughput: images/s of ``ambient.training.Trainer.train_step`` (bf16 autocast where the CPU has native
bf16, as the runs use it; EDM loss, Adam, warm-up, EMA) against a plain fp32 PyTorch loop over the same UNet and
batch, written the way diffusers' example training script (train_unconditional.py) does it: fp32, AdamW, DDPMScheduler
``add_noise``, MSE on the noise, gradient clipping at 1.0, no autocast, no EMA. Our step in fp32 runs as a third arm
so that the gain from bf16 and the cost of our loop show separately. Arms alternate in blocks of steps.

    python benchmarks/bench_training.py [--quick] [--threads N] [--batch B] [--steps S] [--loss baseline|ambient]
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common  # benchmarks/common.py, beside this script

NAME = "training"
TARGET_SPEEDUP = 1.8


class PlainLoop:
    """diffusers-example-style training step: fp32, AdamW, epsilon MSE at DDPM timesteps, grad clipping."""

    def __init__(self, images: Any, captions: Any, labels: Any, batch: int, seed: int = 0):
        import torch
        from diffusers import DDPMScheduler

        from ambient.denoiser import build_unet

        torch.manual_seed(seed)
        cond_dim = 0 if captions is None else int(captions.shape[-1])
        c, size = int(images.shape[1]), int(images.shape[-1])
        self.net = build_unet(cond_dim, size, c, common.PAIR_CHANNELS).net.train()
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
        self.sched = DDPMScheduler(num_train_timesteps=1000)
        self.images, self.captions, self.labels, self.batch = images, captions, labels, batch
        self.g = torch.Generator().manual_seed(seed)

    def step(self) -> float:
        """One optimiser step; returns the loss."""
        import torch
        import torch.nn.functional as F

        g, b = self.g, self.batch
        idx = torch.randint(len(self.images), (b,), generator=g)
        clean = self.images[idx]
        noise = torch.randn(clean.shape, generator=g)
        t = torch.randint(0, self.sched.config.num_train_timesteps, (b,), generator=g)
        noisy = self.sched.add_noise(clean, noise, t)
        labels = None
        if self.captions is not None:
            k = torch.randint(self.captions.shape[1], (b,), generator=g)
            labels = self.net.cond_proj(self.captions[self.labels[idx], k])
        pred = self.net.unet(noisy, t, class_labels=labels).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write training.json."""
    ap = common.base_parser(__doc__)
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 64, as the runs; --quick 8)")
    ap.add_argument("--steps", type=int, default=None, help="steps per timed block (default 4, --quick 1)")
    ap.add_argument("--rounds", type=int, default=None, help="timed blocks per arm (default 3, --quick 1)")
    ap.add_argument("--loss", choices=("baseline", "ambient"), default="baseline")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    threads = common.set_threads(args.threads)
    env = common.env_info(threads)
    from ambient.text import get_text_encoder
    from ambient.training import TrainConfig, Trainer

    quick = args.quick
    batch = args.batch or (8 if quick else 64)
    block = args.steps or (1 if quick else 4)
    rounds = args.rounds or (1 if quick else 3)

    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        _, pair, pair_info = common.load_pair(args.config, tmp)
        data = pair.train
        encoder = get_text_encoder(common.PAIR_TEXT_MODEL)
        trainers = {}
        for precision in ("auto", "fp32"):
            cfg = TrainConfig(
                out=str(Path(tmp) / f"run-{precision}"),
                n=len(data),
                batch=batch,
                loss=args.loss,
                sigma_n=0.5 if args.loss == "ambient" else 0.0,
                text_model=common.PAIR_TEXT_MODEL,
                block_out_channels=list(common.PAIR_CHANNELS),
                precision=precision,
                progress=False,
            )
            trainers[precision] = Trainer(cfg, dataset=data, text_encoder=encoder)
        ours, ours32 = trainers["auto"], trainers["fp32"]
        plain = PlainLoop(ours.images, ours.captions, getattr(ours, "labels", None), batch)

        def block_of(step: Callable[[], float]) -> Callable[[], None]:
            def run() -> None:
                for _ in range(block):
                    step()

            return run

        arms = {"ours": block_of(ours.train_step), "ours_fp32": block_of(ours32.train_step)}
        arms["plain_fp32"] = block_of(plain.step)
        times = common.interleaved(arms, rounds, warmup=1)
    ips = {k: batch * block / common.stats(v)["median"] for k, v in times.items()}
    label_ours = f"ours, Trainer.train_step ({'bf16 autocast' if ours.bf16 else 'fp32: this CPU has no native bf16'})"
    comparisons = [
        common.comparison(
            "training images/s, same UNet and batch",
            label_ours,
            ips["ours"],
            "plain fp32 loop (diffusers example style)",
            ips["plain_fp32"],
            "img/s",
            lower_is_better=False,
        ),
        common.comparison(
            "training images/s: bf16 autocast vs our own step in fp32",
            label_ours,
            ips["ours"],
            "ours, precision=fp32",
            ips["ours_fp32"],
            "img/s",
            lower_is_better=False,
        ),
    ]
    ratio = comparisons[0]["ratio"]
    payload = common.result(
        NAME,
        "3. Training throughput (Trainer.train_step vs a plain fp32 loop)",
        args,
        env,
        t_start,
        headline={k + "_img_per_s": v for k, v in ips.items()},
        pair=pair_info,
        settings={"batch": batch, "steps_per_block": block, "rounds": rounds, "loss": args.loss, "bf16": ours.bf16},
        images_per_s=ips,
        block_times_s=times,
        comparisons=comparisons,
        targets=[
            common.target(
                "Trainer.train_step images/s over the plain fp32 loop",
                ratio,
                ">=",
                TARGET_SPEEDUP,
                "x",
                evaluated=not quick,
            )
        ],
        tables=[
            common.table(
                f"Training images/s (batch {batch}, {rounds} blocks of {block} steps per arm, medians)",
                ["loop", "images/s", "ms per step"],
                [
                    [label_ours, ips["ours"], 1000 * batch / ips["ours"]],
                    ["ours, precision=fp32", ips["ours_fp32"], 1000 * batch / ips["ours_fp32"]],
                    ["plain fp32 loop (AdamW, MSE on noise)", ips["plain_fp32"], 1000 * batch / ips["plain_fp32"]],
                ],
            )
        ],
        notes=[
            f"Our step includes what the plain loop lacks: EDM preconditioning, loss weighting, EMA update of "
            f"{pair_info.get('ambient_parameters') or 0:,} parameters, learning-rate warm-up.",
            "Weights differ (ours: Trainer's seed; plain: a fresh UNet) but not the architecture or the batch; "
            "throughput does not depend on them.",
        ],
    )
    path = common.write_result(common.out_dir(args), NAME, payload)
    print(f"{NAME}: ours {ips['ours']:.0f} img/s, plain fp32 {ips['plain_fp32']:.0f} img/s ({ratio:.2f}x) -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
