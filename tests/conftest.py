"""Shared test settings: offline hub, small thread pool, fixed seeds."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# Tiny tensors in tests: one thread avoids oversubscription on the 2-core machines (and is faster there).
torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """pairs.json of a tiny random model pair (20 Fashion-MNIST images), built once per session."""
    from demo.tiny_pair import make_tiny_pair

    root = tmp_path_factory.getbasetemp() / "tiny-pair"
    if not (root / "pairs.json").exists():
        make_tiny_pair(root, n=20)
    return root / "pairs.json"
