"""Shared test settings: offline hub, small thread pool, fixed seeds."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# Tiny tensors in tests: one thread avoids oversubscription on the 2-core machines (and is faster there).
torch.set_num_threads(1)
