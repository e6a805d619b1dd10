"""Names and locations that several layers share, importable without JAX (the CLI parser uses them)."""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m"  # the bundled SmolLM2-135M-Instruct (`loading.resolve_model_path`)
MODES = ("ar", "pass")  # plain autoregressive decoding, or PaSS
CACHE_ENV = "PASS_JAX_CACHE"


def cache_dir() -> Path:
    """The pass-jax cache root: compiled programs (xla/), float32 copies of GGUF models (models/)."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "pass_jax")).expanduser()
