"""Names, locations and defaults that several layers share, importable without JAX (the CLI parser
uses them)."""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m"  # the bundled SmolLM2-135M-Instruct (`loading.resolve_model_path`)
MODES = ("ar", "pass")  # plain autoregressive decoding, or PaSS
CALLS = (1, 2)  # PaSS model calls per iteration: 1 (validate and draft in one call) or 2 (the paper)
# The default iteration of every entry point (`iteration.DEFAULT_ITERATION`: the CLI, `Generator`,
# `pass_jax.generate()`, `DecodeSpec`, `plan`), chosen by measurement (docs/BENCHMARKS.md): one call per
# iteration and 4 then 2 candidates commit the most tokens per model call on held-out prompts; a chain
# of 4 drafts copied from the context beside them lifts that from 1.76 to 2.08 (text) and 1.84 to 2.17
# (code), paper sampling, 24 held-out prompts each.
DEFAULT_CALLS = 1
DEFAULT_TREE = (4, 2)
DEFAULT_CONTEXT = 4  # context drafts of the default (no -L, --draft-tree or --drafts given)
BENCH_TREES = ((3, 1, 1), DEFAULT_TREE, (4, 2, 1))  # `bench`'s trees beside its chains (--draft-tree)
CACHE_ENV = "PASS_JAX_CACHE"


def cache_dir() -> Path:
    """The pass-jax cache root: compiled programs (xla/), float32 copies of GGUF models (models/)."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "pass_jax")).expanduser()
