"""pass-jax: PaSS (Parallel Speculative Sampling) for LLaMA-family models in JAX/Flax.

The names below are imported on first use (PEP 562, `_lazy.lazy_exports`), so `import pass_jax.cli`
(the parser behind `pass-jax --help`) does not import JAX. `pass_jax.generate` is the module
`pass_jax/generate.py`; calling it runs its one-call API `generate(prompts, model, ...)`.
"""
from __future__ import annotations

from ._lazy import exports, lazy_exports

__version__ = "0.1.0"  # the one place; pyproject.toml reads it (`tool.setuptools.dynamic`)

_WHERE = exports(
    config="LlamaConfig load_preset",
    decoding="DecodeSpec decode decode_jit",
    errors="PassJaxError",
    generate="GenerationResult Generator",
    iteration="DEFAULT_ITERATION Iteration",
    loading="LoadedModel load_model",
    model="LookaheadInputs forward init_cache init_params",
    sampling="GREEDY PAPER SamplingConfig",
)
__all__ = [*_WHERE, "generate"]
__getattr__ = lazy_exports(__name__, _WHERE)  # `generate` (a module of _WHERE) is the submodule itself
