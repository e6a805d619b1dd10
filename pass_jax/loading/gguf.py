"""GGUF files (architectures llama, qwen2, qwen3: `families.py`): metadata -> `LlamaConfig`, tensors
dequantized to float32 with llama.cpp's Q/K row permutation (interleaved RoPE) undone where it applies
(llama only), the tokenizer from the metadata (`tokenizers.gguf_tokenizer`).

A load goes through the float32 cache (`model_cache`) when it holds this file, and fills it when not.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import jax
import numpy as np

from .. import config as config_lib
from .. import families
from ..config import LlamaConfig
from ..defaults import DEFAULT_MODEL
from ..sharding import make_mesh
from .common import BUNDLED_GGUF_NAME, LoadedModel, LoadError, WeightRow, build_params, default_dtype, place
from .model_cache import MODEL_CACHE_ENV, CacheWriter, gguf_cache_entry, load_cache_entry
from .tokenizers import gguf_tokenizer


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (interleaved RoPE) to get HF's rotate_half layout."""
    out, inp = w.shape
    return w.reshape(n_head, out // n_head // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def gguf_to_config(reader, path: Path | str = "the GGUF file", **overrides) -> LlamaConfig:
    """`LlamaConfig` of a GGUF file of a supported architecture (`families.gguf_config_values`); Llama-3
    RoPE scaling comes from llama.cpp's `rope_freqs.weight` divisors."""
    tensors = {t.name: t for t in reader.tensors}
    try:
        values = families.gguf_config_values(_field_reader(reader), tensors, str(path))
        if "rope_freqs.weight" in tensors:
            values["rope_scaling"] = families.rope_scaling_from_factors(
                np.asarray(tensors["rope_freqs.weight"].data, np.float32), values["rope_theta"], values["head_dim"],
                str(path))
    except families.FamilyError as err:
        raise LoadError(str(err)) from None
    values.update(dtype=default_dtype(), param_dtype=default_dtype())
    values.update(overrides)
    return config_lib.from_dict(values)


def _field_reader(reader):
    def field(key, default=None):
        f = reader.fields.get(key)
        return default if f is None else f.contents()
    return field


def read_gguf(path: Path):
    """A `gguf.GGUFReader` over the file: metadata parsed, tensors memory-mapped."""
    import gguf

    try:
        return gguf.GGUFReader(str(path))
    except Exception as err:  # the reader raises assorted errors on non-GGUF bytes
        raise LoadError(f"{path}: not a readable GGUF file ({err})") from None


def load_gguf(path: Path, mesh=None, **config_overrides) -> LoadedModel:
    """Load a GGUF file: from its float32 cache entry when there is one, else by dequantizing it
    (and writing the entry for next time)."""
    import gguf

    entry = gguf_cache_entry(path) if os.environ.get(MODEL_CACHE_ENV, "1") != "0" else None
    damaged = False
    if entry is not None and (entry / "pass_jax.json").is_file():
        try:
            return load_cache_entry(entry, path, mesh, **config_overrides)
        except (OSError, ValueError, EOFError, KeyError) as err:  # files deleted, truncated or overwritten
            print(f"pass-jax: the model cache {entry} cannot be used ({err}); rebuilding it", file=sys.stderr)
            shutil.rmtree(entry, ignore_errors=True)
            damaged = True
    reader = read_gguf(path)
    config = gguf_to_config(reader, path, **config_overrides)
    tensors = {t.name: t for t in reader.tensors}

    def fetch(row: WeightRow, shape_dtype, sharding):
        gguf_name, kind = row.gguf, row.kind
        if gguf_name not in tensors:
            raise LoadError(f"{path}: tensor {gguf_name!r} is missing")
        t = tensors[gguf_name]
        try:
            w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        except NotImplementedError:
            raise LoadError(f"{gguf_name}: unsupported GGUF tensor type {t.tensor_type.name}") from None
        w = w.reshape([int(s) for s in reversed(t.shape)])  # ggml order is reversed: now (out, in)
        if kind == "q":
            w = _unpermute(w, config.num_heads)
        elif kind == "k":
            w = _unpermute(w, config.num_kv_heads)
        if kind != "copy":
            w = w.T
        writer.add(row.path, w)
        return place(shape_dtype, sharding, read=lambda: w, name=gguf_name)

    # Only a single process writes: a multi-host job's processes would race on a shared home.
    with CacheWriter(entry if jax.process_count() == 1 else None, config.num_params() * 4,
                     announce=not damaged) as writer:
        params = build_params(config, mesh or make_mesh(), fetch, f"loading {path.name}")
        name = reader.fields.get("general.name")
        identity = DEFAULT_MODEL if name is not None and name.contents() == BUNDLED_GGUF_NAME else None
        model = LoadedModel(config, params, gguf_tokenizer(path, reader), str(path), identity,
                            families.gguf_stop_ids(_field_reader(reader)))
        writer.finish(model, gguf_to_config(reader, path))
    return model

