"""Model configuration: a frozen, validated dataclass and the named presets in `configs/`."""
from __future__ import annotations

from .typed_config import ConfigError, build

import dataclasses
import importlib.resources
import json
from pathlib import Path
from typing import Any, Mapping

import jax.numpy as jnp

# The checkout's configs/, installed as the package data pass_jax.configs (editable or not).
CONFIGS_DIR = Path(str(importlib.resources.files("pass_jax.configs")))
_DTYPES = ("float32", "bfloat16", "float16")
FAMILIES = ("llama", "mistral", "qwen2", "qwen3")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama-3 style frequency-dependent RoPE scaling (`rope_type: llama3` in transformers)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    head_dim: int | None = None  # None: hidden_size // num_heads
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rms_eps: float = 1e-6
    tie_embeddings: bool = False
    max_seq_len: int = 2048
    dtype: str = "float32"  # activations
    param_dtype: str = "float32"
    # Family options (docs: README "Model families"). Qwen2/2.5: bias on the q, k and v projections.
    qkv_bias: bool = False
    # Qwen3: RMSNorm over each head's q and k (before RoPE), one [head_dim] scale each.
    qk_norm: bool = False
    # Mistral v0.1: each position attends to at most this many (itself included). pass-jax has no
    # sliding-window attention: a decode whose KV buffer would exceed the window is refused
    # (`decoding.check_context`), so every position it computes sees exactly what the model would.
    sliding_window: int | None = None
    # The checkpoint's family (`model_type` in Hugging Face terms, `general.architecture` in GGUF):
    # llama, mistral, qwen2 or qwen3. Informational: the options above carry every difference.
    family: str = "llama"

    def __post_init__(self):
        if isinstance(self.rope_scaling, Mapping):
            object.__setattr__(self, "rope_scaling", build(RopeScaling, self.rope_scaling, "rope_scaling"))
        if self.head_dim is None:
            if self.num_heads > 0 and self.hidden_size % self.num_heads:
                raise ConfigError(
                    f"num_heads={self.num_heads} does not divide hidden_size={self.hidden_size}; "
                    "set head_dim explicitly if the model really has a non-dividing head size")
            object.__setattr__(self, "head_dim", self.hidden_size // max(self.num_heads, 1))
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                     "intermediate_size", "head_dim", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads} (grouped-query attention)")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim={self.head_dim} must be even for RoPE")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ConfigError(f"{name}={getattr(self, name)!r} is not supported; use one of {_DTYPES}")
        if self.rms_eps <= 0 or self.rope_theta <= 0:
            raise ConfigError("rms_eps and rope_theta must be positive")
        if self.sliding_window is not None and (not isinstance(self.sliding_window, int) or self.sliding_window < 1):
            raise ConfigError(f"sliding_window must be a positive integer or null, got {self.sliding_window!r}")
        if self.family not in FAMILIES:
            raise ConfigError(f"family={self.family!r} is not supported; use one of {FAMILIES}")

    @property
    def jnp_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def jnp_param_dtype(self):
        return jnp.dtype(self.param_dtype)

    def replace(self, **changes) -> "LlamaConfig":
        return from_dict({**to_dict(self), **changes})

    def num_params(self) -> int:
        d, h, kv, hd, i = self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim, self.intermediate_size
        per_layer = d * hd * (2 * h + 2 * kv) + 3 * d * i + 2 * d
        per_layer += hd * (h + 2 * kv) if self.qkv_bias else 0
        per_layer += 2 * hd if self.qk_norm else 0
        head = 0 if self.tie_embeddings else d * self.vocab_size
        return self.vocab_size * d + self.num_layers * per_layer + d + head


def from_dict(data: Mapping[str, Any], where: str = "model config") -> LlamaConfig:
    """Build a config, naming any unknown key or mistyped value instead of failing in the constructor."""
    data = dict(data)
    data.pop("name", None)
    return build(LlamaConfig, data, where=where)


def to_dict(config: LlamaConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def preset_names() -> list[str]:
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.json") if _read_json(p).get("kind") == "model")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A config file path, or the name of one in `configs/` (with or without `.json`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    candidate = CONFIGS_DIR / f"{path.name.removesuffix('.json')}.json"
    if candidate.is_file():
        return candidate
    names = sorted(p.stem for p in CONFIGS_DIR.glob("*.json"))
    raise ConfigError(f"no config named {str(name_or_path)!r}; available in {CONFIGS_DIR}: {names}")


def load_config_file(name_or_path: str | Path) -> dict[str, Any]:
    return _read_json(resolve_config_path(name_or_path))


def load_preset(name_or_path: str | Path) -> LlamaConfig:
    """A named model preset, e.g. `smollm2_135m`, `llama1_7b`, `llama2_7b`, `tiny`."""
    path = resolve_config_path(name_or_path)
    data = _read_json(path)
    if data.get("kind") != "model":
        raise ConfigError(f"{path} is not a model config (its 'kind' is {data.get('kind')!r})")
    data.pop("kind")
    data.pop("description", None)
    return from_dict(data, where=str(path))
