"""The recorded Ambient trajectory gives, for every cutoff, exactly what a fresh run gives (ambient.trajectory)."""

import math

import pytest
import torch

from ambient.cutoff import Cutoff
from ambient.sampling import CFGDenoiser, initial_noise, karras_sigmas, sample
from ambient.trajectory import Trajectory, TrajectoryCache, first_step_below, hand_over, record, truncate


class Toy(torch.nn.Module):
    """A nonlinear, conditional denoiser that counts its calls."""

    def __init__(self, w: float):
        super().__init__()
        self.w, self.calls = w, 0

    def forward(self, x, sigma, cond=None):
        self.calls += 1
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        c = 0 if cond is None else cond.mean(1).reshape(-1, *([1] * (x.ndim - 1)))
        return torch.tanh(self.w * x / (1 + s) + c) * (1 - torch.exp(-s))


SHAPE = (1, 4, 4)
SEEDS = [3, 5, 7]
STEPS = 12


def _sigmas():
    return karras_sigmas(STEPS)


@pytest.mark.parametrize("sampler", ["heun", "euler", "dpmpp_2m"])
@pytest.mark.parametrize("guided", [False, True])
def test_hand_over_from_the_trajectory_equals_a_fresh_run_at_every_cutoff(sampler, guided):
    amb, base = Toy(1.3), Toy(0.7)
    cond = torch.tensor([[0.2, -0.1], [0.5, 0.3], [0.0, 0.4]]) if guided else None
    g = 2.0 if guided else 1.0
    a = CFGDenoiser(amb, g) if guided else amb
    b = CFGDenoiser(base, g) if guided else base
    sig = _sigmas()
    traj = record(a, initial_noise(SEEDS, SHAPE, float(sig[0])), sig, cond, sampler)
    cutoffs = [0.0, math.inf, 1e-4, *[float(s) for s in sig[:-1]], 0.5, 2.0, 7.3, 30.0]
    for sc in cutoffs:
        fresh = sample(amb, base, SEEDS, SHAPE, cond, steps=STEPS, sigma_c=sc, sampler=sampler, guidance=g)
        fast = hand_over(traj, a, b, sc, cond).clamp(-1, 1)
        assert torch.equal(fresh, fast), (sampler, sc, (fresh - fast).abs().max())


@pytest.mark.parametrize("sampler", ["heun", "euler", "dpmpp_2m"])
def test_truncate_from_the_trajectory_equals_a_fresh_truncated_run(sampler):
    amb = Toy(1.1)
    sig = _sigmas()
    traj = record(amb, initial_noise(SEEDS, SHAPE, float(sig[0])), sig, None, sampler)
    for sc in [0.0, 1e-3, 0.3, float(sig[5]), 5.0, 60.0]:
        fresh = sample(amb, None, SEEDS, SHAPE, steps=STEPS, sigma_c=sc, mode="truncate", sampler=sampler)
        assert torch.equal(fresh, truncate(traj, amb, sc).clamp(-1, 1)), (sampler, sc)


def test_a_slider_move_runs_only_the_steps_below_the_cutoff():
    amb, base = Toy(1.3), Toy(0.7)
    sig = _sigmas()
    traj = record(amb, initial_noise(SEEDS, SHAPE, float(sig[0])), sig, None, "heun")
    amb.calls = base.calls = 0
    hand_over(traj, amb, base, 0.0)  # the Ambient model alone: nothing to run
    assert amb.calls == base.calls == 0
    sc = float(sig[STEPS - 3])  # the last three sigmas above 0 are at or below this one
    hand_over(traj, amb, base, sc * 0.999)
    start = first_step_below(sig, sc * 0.999, "heun")
    # Heun's step 9 evaluates the Ambient model at sig[9] and the baseline at sig[10]; steps 10 and 11 are the
    # baseline's: 5 evaluations in all, against 2 * 12 - 1 = 23 for a fresh run.
    assert start == STEPS - 3 and amb.calls == 1
    assert base.calls == 2 * (STEPS - start) - 2
    with pytest.raises(ValueError, match="needs a baseline"):
        hand_over(traj, amb, None, 1.0)


def test_cache_keeps_recent_trajectories_within_its_byte_budget():
    def make(k):
        return lambda: Trajectory(torch.zeros(3), [torch.zeros(250)] * 2, [torch.zeros(250)], "heun")

    one = make(0)().nbytes()
    cache = TrajectoryCache(max_bytes=2 * one)
    t0 = cache.get("a", make(0))
    assert cache.get("a", make(0)) is t0 and cache.hits == 1 and cache.misses == 1
    cache.get("b", make(1))
    cache.get("a", make(0))  # "a" is now the newest
    cache.get("c", make(2))  # evicts "b", the oldest
    assert len(cache) == 2 and cache.nbytes <= cache.max_bytes
    assert cache.get("a", make(0)) is t0
    misses = cache.misses
    cache.get("b", make(1))
    assert cache.misses == misses + 1
    with pytest.raises(ValueError):
        TrajectoryCache(max_bytes=-1)
    assert Cutoff(0.0).is_ambient_alone


def test_pair_side_by_side_reuses_the_recorded_runs_and_matches_fresh_sampling(tmp_path):
    from ambient.pair import load_pair
    from ambient.tiny import make_tiny_pair
    from ambient.trajectory import TrajectoryCache

    make_tiny_pair(tmp_path)
    folder = tmp_path / "tiny"
    pair = load_pair(folder / "ambient", folder / "baseline", folder / "train.npz", folder / "index")
    pair.trajectory_cache = TrajectoryCache()
    seeds, steps = [11, 12], 6
    cond = pair.prompts.cond("", len(seeds))
    for sampler in ("heun", "dpmpp_2m"):
        pair.trajectory_cache.clear()
        hits, misses = pair.trajectory_cache.hits, pair.trajectory_cache.misses
        for sc in (0.0, 0.4, 2.0, 9.0, math.inf):
            cut = Cutoff(sc)
            r = pair.side_by_side(seeds, "", steps, cut, trajectory_points=None, sampler=sampler)
            fresh_a = sample(
                pair.ambient,
                pair.baseline,
                seeds,
                pair.image_shape,
                cond,
                steps,
                cut,
                sampler=sampler,
                sigma_min=pair.sigma_min,
                sigma_max=pair.sigma_max,
            )
            fresh_b = sample(
                pair.baseline,
                None,
                seeds,
                pair.image_shape,
                cond,
                steps,
                0.0,
                sampler=sampler,
                sigma_min=pair.sigma_min,
                sigma_max=pair.sigma_max,
            )
            assert torch.equal(r.ambient, pair.codec.decode(fresh_a)), (sampler, sc)
            assert torch.equal(r.baseline, pair.codec.decode(fresh_b)), (sampler, sc)
            assert len(r.records["ambient"]) == len(r.records["baseline"]) == steps  # every step's estimate
        # two recorded runs (one a side) served all five cutoffs (the baseline alone needs no Ambient run)
        assert pair.trajectory_cache.misses - misses == 2 and pair.trajectory_cache.hits - hits == 5 + 4 - 2
    pair.trajectory_cache = TrajectoryCache(max_bytes=0)  # recording off: each side sampled afresh, same images
    for sc in (0.0, 0.4, math.inf):
        off = pair.side_by_side(seeds, "", steps, Cutoff(sc), trajectory_points=None)
        pair.trajectory_cache = TrajectoryCache()
        on = pair.side_by_side(seeds, "", steps, Cutoff(sc), trajectory_points=None)
        pair.trajectory_cache = TrajectoryCache(max_bytes=0)
        assert torch.equal(off.ambient, on.ambient) and torch.equal(off.baseline, on.baseline)
        assert [s for s, _ in off.records["ambient"]] == [s for s, _ in on.records["ambient"]]
        for (_, a), (_, b) in zip(off.records["ambient"], on.records["ambient"], strict=True):
            assert torch.equal(a, b)
    assert len(pair.trajectory_cache) == 0
    t = pair.side_by_side(seeds, "", steps, Cutoff(0.5, "truncate"))
    fresh_t = sample(
        pair.ambient,
        None,
        seeds,
        pair.image_shape,
        cond,
        steps,
        Cutoff(0.5, "truncate"),
        sigma_min=pair.sigma_min,
        sigma_max=pair.sigma_max,
    )
    assert torch.equal(t.ambient, pair.codec.decode(fresh_t))


def test_two_sides_recorded_in_two_threads_give_the_same_images(tmp_path):
    from ambient.pair import load_pair
    from ambient.tiny import make_tiny_pair

    make_tiny_pair(tmp_path)
    folder = tmp_path / "tiny"
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # as the app gives each request: the two runs then go to two threads
    try:
        runs = {}
        for parallel in (True, False):
            pair = load_pair(folder / "ambient", folder / "baseline", folder / "train.npz", folder / "index")
            pair.trajectory_cache, pair.parallel_sides = TrajectoryCache(), parallel
            runs[parallel] = pair.side_by_side([4, 5, 6], "", 5, Cutoff(0.3), sampler="dpmpp_2m")
    finally:
        torch.set_num_threads(old)
    assert torch.equal(runs[True].ambient, runs[False].ambient)
    assert torch.equal(runs[True].baseline, runs[False].baseline)


def test_a_request_encodes_its_prompt_once(tmp_path):
    from ambient.pair import load_pair
    from ambient.tiny import make_tiny_pair

    make_tiny_pair(tmp_path)
    folder = tmp_path / "tiny"
    pair = load_pair(folder / "ambient", folder / "baseline", folder / "train.npz", folder / "index")
    pair.trajectory_cache = TrajectoryCache()
    calls = []
    real = pair.prompts.cond
    pair.prompts.cond = lambda prompt, n: calls.append(prompt) or real(prompt, n)
    pair.side_by_side([1, 2], "a shoe", 4, Cutoff(0.5), guidance=2.0)
    assert calls == ["a shoe"]  # both runs recorded with the request's own encoding
    moved = pair.side_by_side([1, 2], "a shoe", 4, Cutoff(2.0), guidance=2.0)
    assert calls == ["a shoe"] * 2  # a slider move: the recorded runs need no encoding
    fresh = sample(
        pair.ambient,
        pair.baseline,
        [1, 2],
        pair.image_shape,
        real("a shoe", 2),
        4,
        Cutoff(2.0),
        guidance=2.0,
        sigma_min=pair.sigma_min,
        sigma_max=pair.sigma_max,
    )
    assert torch.equal(moved.ambient, pair.codec.decode(fresh))
