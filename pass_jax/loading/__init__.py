"""Checkpoint loading, one module per format (the Levanter pattern: every conversion in one weight table).

Sources: a Hugging Face LLaMA directory (`hf`), a GGUF file (`gguf`, through the float32 cache in
`model_cache`), or a pass-jax Orbax directory written by `pass-jax convert` (`converted`). `common`
holds what they share (`LoadedModel`, `LoadError`, the weight table, placing tensors onto their
shardings), `tokenizers` the tokenizers. Tensors are read one at a time and placed straight onto
their shardings, so a 7B checkpoint never needs two full copies in host memory.

`load_model` picks the format; this package names the public API, so `from pass_jax.loading import
load_model` and `loading.load_model` (which tests replace) stay the one entry point.
"""
from __future__ import annotations

import os

from ..defaults import DEFAULT_MODEL, cache_dir  # noqa: F401 - both are part of this package's API
from .common import (BUNDLED_GGUF, BUNDLED_GGUF_NAME, LoadedModel, LoadError, WeightRow,  # noqa: F401
                     bundled_gguf_path, default_dtype, resolve_model_path)
from .converted import PASS_JAX_FORMAT, check_convert_destination, load_converted, save_converted  # noqa: F401
from .gguf import gguf_to_config, load_gguf, read_gguf  # noqa: F401
from .hf import hf_to_config, load_hf_directory  # noqa: F401
from .model_cache import MODEL_CACHE_ENV, MODEL_CACHE_FORMAT, gguf_cache_entry  # noqa: F401
from .tokenizers import gguf_tokenizer, hf_tokenizer  # noqa: F401


def load_model(name_or_path: str | os.PathLike = DEFAULT_MODEL, mesh=None, **config_overrides) -> LoadedModel:
    """Load the bundled model, a .gguf file, a Hugging Face directory or a converted directory."""
    path = resolve_model_path(name_or_path)
    if path.is_file():
        if path.suffix != ".gguf":
            raise LoadError(f"{path}: a model file must be .gguf; for Hugging Face models give the directory")
        return load_gguf(path, mesh, **config_overrides)
    if (path / "pass_jax.json").is_file():
        return load_converted(path, mesh, **config_overrides)
    if (path / "params").is_dir() and (path / "tokenizer").is_dir() and not (path / "config.json").exists():
        raise LoadError(f"{path} looks like a pass-jax converted checkpoint without its pass_jax.json (deleted, or "
                        "not fully written): restore it, or convert the model again")
    return load_hf_directory(path, mesh, **config_overrides)


def context_length(name_or_path: str | os.PathLike = DEFAULT_MODEL) -> int | None:
    """The model's context in tokens when it can be read without loading the weights (a converted
    checkpoint's pass_jax.json, a GGUF file's cache entry, a Hugging Face config.json), else None: so
    that a budget that cannot fit is refused before seconds of loading. Never raises: the load that
    follows reports a bad model."""
    import json

    try:
        path = resolve_model_path(name_or_path)
        if path.is_file():
            meta = gguf_cache_entry(path) / "pass_jax.json"  # reading the GGUF metadata itself takes seconds
            return int(json.loads(meta.read_text())["config"]["max_seq_len"]) if meta.is_file() else None
        if (path / "pass_jax.json").is_file():
            return int(json.loads((path / "pass_jax.json").read_text())["config"]["max_seq_len"])
        if (path / "config.json").is_file():
            return int(json.loads((path / "config.json").read_text())["max_position_embeddings"])
    except (OSError, ValueError, KeyError, TypeError, LoadError):
        return None
    return None
