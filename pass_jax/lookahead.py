"""The look-ahead parameters: L learned vectors [L, d_emb], a pytree of their own.

They are the only trainable parameters of PaSS. Stored as an Orbax checkpoint (a directory) or a
`.npz` file with one `lookahead` array; trained vectors for the bundled model ship in
`pass_jax/lookahead_weights/`.
"""
from __future__ import annotations

from .errors import PassJaxError

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .config import LlamaConfig

LOOKAHEAD_AXES = ("lookahead", "embed")
BUNDLED_DIR = Path(__file__).resolve().parent / "lookahead_weights"
MAX_BUNDLED_L = 8


class LookaheadError(PassJaxError):
    """Look-ahead vectors that cannot be used with this model."""


def init_untrained(params, num_lookahead: int, key, noise: float = 0.01) -> jax.Array:
    """Mean token embedding plus small noise: the 'untrained' baseline of the paper's comparison."""
    embedding = params["embedding"]
    mean = jnp.mean(embedding.astype(jnp.float32), axis=0)
    scale = noise * jnp.std(embedding.astype(jnp.float32))
    return (mean[None] + scale * jax.random.normal(key, (num_lookahead, embedding.shape[1]))).astype(embedding.dtype)


def init_random(config: LlamaConfig, num_lookahead: int, key, scale: float = 0.02) -> jax.Array:
    return scale * jax.random.normal(key, (num_lookahead, config.hidden_size), config.jnp_param_dtype)


def check(vectors, config: LlamaConfig, num_lookahead: int | None = None, where: str = "look-ahead vectors"):
    if vectors.ndim != 2 or vectors.shape[1] != config.hidden_size:
        raise LookaheadError(f"{where} have shape {tuple(vectors.shape)}, but this model needs "
                             f"[L, {config.hidden_size}] (d_emb = {config.hidden_size})")
    if num_lookahead is not None and num_lookahead > vectors.shape[0]:
        raise LookaheadError(f"{where} hold {vectors.shape[0]} look-ahead steps; {num_lookahead} were asked for")
    return vectors


def save(path: str | Path, vectors, metadata: dict | None = None) -> None:
    """`.npz` for a small portable file, otherwise an Orbax checkpoint directory."""
    path = Path(path).expanduser().absolute()
    if path.suffix == ".npz":
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, lookahead=np.asarray(jax.device_get(vectors), np.float32))
        if metadata is not None:
            path.with_suffix(".json").write_text(json.dumps(metadata, indent=1))
        return
    import orbax.checkpoint as ocp
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(path / "lookahead", {"lookahead": vectors}, force=True)
    if metadata is not None and jax.process_index() == 0:
        (path / "metadata.json").write_text(json.dumps(metadata, indent=1))


def load(path: str | Path, config: LlamaConfig) -> jax.Array:
    path = Path(path).expanduser()
    if not path.exists():
        raise LookaheadError(f"look-ahead checkpoint {path} not found")
    if path.suffix == ".npz":
        with np.load(path) as data:
            if "lookahead" not in data:
                raise LookaheadError(f"{path} has no 'lookahead' array (found {list(data)})")
            vectors = data["lookahead"]
    else:
        import orbax.checkpoint as ocp
        item = path / "lookahead" if (path / "lookahead").exists() else path
        with ocp.StandardCheckpointer() as ckpt:
            vectors = np.asarray(ckpt.restore(item)["lookahead"])
    return jnp.asarray(check(vectors, config, where=str(path)), config.jnp_param_dtype)


def forward_inputs(lookahead, step_index) -> dict:
    """`forward` keyword arguments that put look-ahead vectors at the slots where step_index > 0.

    step_index int [B, T]: 0 for a real token, i for [LA]_i (1-based). Real tokens see exactly the
    base model. Every decode variant and the training loss build their inputs through this one
    function, so a new look-ahead parametrisation only has to extend it.
    """
    vectors = jnp.concatenate([jnp.zeros_like(lookahead[:1]), lookahead])  # row 0: unused for real tokens
    return {"input_embeds": vectors[step_index], "embeds_mask": step_index > 0}


def bundled_path(domain: str = "text") -> Path:
    return BUNDLED_DIR / f"smollm2-135m-{domain}.npz"


def resolve(spec: str | None, params, config: LlamaConfig, num_lookahead: int, model_source: str = "",
            key=None, domain: str = "text") -> tuple[jax.Array, str]:
    """`--lookahead {default,text,code,none,PATH}` -> (vectors [L', d_emb], a description).

    For the bundled SmolLM2, 'text' uses the shipped vectors trained on Wikipedia text, 'code' those
    trained on Python, and 'default' those of `domain`; other models fall back to the untrained
    initialisation, which 'none' always means.
    """
    key = jax.random.key(0) if key is None else key
    spec = spec or "default"
    domain = {"default": domain, "text": "text", "code": "code"}.get(spec)
    if domain and "SmolLM2-135M" in model_source and bundled_path(domain).is_file():
        path = bundled_path(domain)
        return check(load(path, config), config, num_lookahead, str(path))[:num_lookahead], f"trained ({path.name})"
    if spec in ("text", "code"):
        raise LookaheadError(f"--lookahead {spec}: shipped vectors exist only for the bundled smollm2-135m")
    if spec in ("default", "none"):
        return init_untrained(params, num_lookahead, key), "untrained (mean embedding + noise)"
    vectors = load(spec, config)
    return check(vectors, config, num_lookahead, spec)[:num_lookahead], f"trained ({spec})"
