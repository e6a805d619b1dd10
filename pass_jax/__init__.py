"""pass-jax: PaSS (Parallel Speculative Sampling) for LLaMA-family models in JAX/Flax.

The names below are imported on first use (PEP 562), so `import pass_jax.cli` (the parser behind
`pass-jax --help`) does not import JAX. `pass_jax.generate` is the module `pass_jax/generate.py`;
calling it runs its one-call API `generate(prompts, model, ...)`.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "LlamaConfig": "config", "load_preset": "config",
    "DecodeSpec": "decoding", "decode": "decoding", "decode_jit": "decoding",
    "PassJaxError": "errors",
    "GenerationResult": "generate", "Generator": "generate",
    "LoadedModel": "loading", "load_model": "loading",
    "forward": "model", "init_cache": "model", "init_params": "model",
    "GREEDY": "sampling", "PAPER": "sampling", "SamplingConfig": "sampling",
}

__all__ = [*_EXPORTS, "generate"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    if name == "generate":  # the submodule, callable (see its end)
        return importlib.import_module(".generate", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
