"""Per-device memory of a run on a mesh, computed without any device (`pass-jax plan`, see `plan_command`).

Parameter and KV-cache bytes are exact: every array's per-device shard shape comes from the same
`NamedSharding`s the run uses (`sharding.param_shardings` rules, `sharding.cache_sharding`), built
on a `jax.sharding.AbstractMesh` of the requested shape, so a 2x4 mesh can be planned on a laptop.
Activation bytes are an estimate (see `activation_bytes`).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AbstractMesh, NamedSharding

from .config import ConfigError, LlamaConfig, load_preset
from .errors import PassJaxError
from .iteration import DEFAULT_ITERATION, Iteration
from .sharding import MESH_AXES, cache_sharding, mesh_sizes, named_sharding, parse_mesh_shape

GiB = 1024 ** 3
USABLE = 0.9  # leave ~10% of device memory for the runtime, fragmentation and XLA scratch
DEVICES: tuple[tuple[str, int], ...] = (  # memory per chip / GPU
    ("TPU v4", 32 * GiB),
    ("TPU v5e", 16 * GiB),
    ("A100-40GB", 40 * GiB),
    ("A100-80GB", 80 * GiB),
    ("H100-80GB", 80 * GiB),
)
LOOKAHEAD_TRAIN_DTYPE = np.dtype(np.float32)  # pass_jax.train.loop keeps the look-ahead parameters in float32
LOOKAHEAD_KINDS = ("vectors", "deep", "adapter")  # `lookahead.KINDS`, without importing it

class PlanError(PassJaxError):
    """Settings that cannot be planned."""


# --- meshes ----------------------------------------------------------------------------------------

def mesh_shape(text: str | Sequence[int] | dict) -> dict[str, int]:
    """'2x4' -> {'data': 2, 'fsdp': 1, 'tensor': 4}; the device count is the product of the sizes."""
    if isinstance(text, dict):
        unknown = set(text) - set(MESH_AXES)
        if unknown:
            raise ConfigError(f"unknown mesh axes {sorted(unknown)}; the axes are {MESH_AXES}")
        return {axis: int(text.get(axis, 1)) for axis in MESH_AXES}
    return parse_mesh_shape(text, num_devices=max(math.prod(mesh_sizes(text)), 1))


def mesh_text(shape: dict[str, int]) -> str:
    """{'data': 2, 'fsdp': 1, 'tensor': 4} -> '2x4' (DATAxFSDPxTENSOR when fsdp > 1)."""
    if shape["fsdp"] > 1:
        return f"{shape['data']}x{shape['fsdp']}x{shape['tensor']}"
    return f"{shape['data']}x{shape['tensor']}"


def abstract_mesh(shape: dict[str, int]) -> AbstractMesh:
    return AbstractMesh(tuple(shape[axis] for axis in MESH_AXES), MESH_AXES)


def factorisations(num_devices: int) -> list[dict[str, int]]:
    out = []
    for data in range(1, num_devices + 1):
        if num_devices % data:
            continue
        rest = num_devices // data
        for fsdp in range(1, rest + 1):
            if rest % fsdp == 0:
                out.append({"data": data, "fsdp": fsdp, "tensor": rest // fsdp})
    return out


# --- the model's arrays ----------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _model_tree(config: LlamaConfig):
    """(flat [(path, ShapeDtypeStruct, logical axes)]) from one abstract init: no memory, no device."""
    import flax.linen as nn
    from .model import abstract_variables

    abstract = abstract_variables(config)
    shapes = nn.unbox(abstract["params"])
    logical = nn.get_partition_spec(abstract)["params"]
    flat_shapes = jax.tree_util.tree_leaves_with_path(shapes)
    flat_logical = jax.tree.leaves(logical, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    return tuple((jax.tree_util.keystr(path), s, tuple(spec)) for (path, s), spec in zip(flat_shapes, flat_logical))


def _nbytes(shape, dtype) -> int:
    return math.prod(shape) * np.dtype(dtype).itemsize


def param_shards(config: LlamaConfig, mesh) -> dict[str, dict[str, Any]]:
    """Per parameter: global shape, per-device shard shape, spec and per-device bytes."""
    out = {}
    for path, s, logical in _model_tree(config):
        sharding = named_sharding(logical, s.shape, mesh)
        shard = sharding.shard_shape(s.shape)
        out[path] = {"shape": tuple(s.shape), "shard_shape": tuple(shard), "spec": str(sharding.spec),
                     "bytes": _nbytes(shard, s.dtype)}
    return out


def lookahead_count(config: LlamaConfig, num_lookahead: int, kind: str = "vectors", adapter_rank: int = 8) -> int:
    """Look-ahead parameters of a kind (`lookahead.py`) with L steps, every step adapted: vectors
    [L, D]; deep adds [layers, L, D]; adapter adds attention and MLP down/up per layer and the head's
    ([.., L, D, r] and [.., L, r, D])."""
    if kind not in LOOKAHEAD_KINDS:
        raise PlanError(f"look-ahead kind must be one of {', '.join(LOOKAHEAD_KINDS)}, got {kind!r}")
    d, layers = config.hidden_size, config.num_layers
    count = num_lookahead * d
    if kind != "vectors":
        count += layers * num_lookahead * d
    if kind == "adapter":
        count += (4 * layers + 2) * num_lookahead * d * adapter_rank
    return count


# --- the estimate ----------------------------------------------------------------------------------

def activation_bytes(config: LlamaConfig, mesh, batch: int, max_len: int, iteration: Iteration,
                     train: bool, anchors: int) -> tuple[int, dict[str, Any]]:
    """An ESTIMATE of the activation memory per device (XLA's real peak depends on its fusion
    and buffer reuse; on accelerators it is usually at or below this).

    Per device, with b = batch rows on this device, heads/intermediate/vocab divided by the tensor
    axis where the weights are split, dt the compute dtype:
      generation (worst call: the prefill of T = max_len tokens against S cache slots):
        2 b T hidden dt (residual stream) + max(attention, MLP) of one layer
        attention = b T (q + 2 kv heads) head_dim dt + b heads T S (4 + dt) (f32 scores, probabilities)
        MLP = 3 b T intermediate dt; plus the float32 logits b P vocab of the decode call that
        projects the most positions P (`Iteration.call_shapes`); with a recycle chain, the int32
        successor table b V (`DecodeState.successors`).
      training (one forward + backward of the many-anchor input, W = max_len + anchors * L):
        every layer's saved activations (residual, q/k/v, probabilities, 3 MLP tensors) for the
        backward pass, one layer's float32 scores, the bool [b, W, W] mask, and 3 copies of the
        float32 logits b W vocab (logits, log-softmax, their gradient).
    """
    c = config
    dt = np.dtype(c.dtype).itemsize
    b = named_sharding(("batch",), (batch,), mesh).shard_shape((batch,))[0]
    tensor_split = lambda dim, logical: named_sharding((logical,), (dim,), mesh).shard_shape((dim,))[0]  # noqa: E731
    hq = tensor_split(c.num_heads * c.head_dim, "q_heads") // c.head_dim
    hkv = tensor_split(c.num_kv_heads * c.head_dim, "kv_heads") // c.head_dim
    inter = tensor_split(c.intermediate_size, "mlp")
    vocab = tensor_split(c.vocab_size, "vocab")
    d, hd = c.hidden_size, c.head_dim
    if train:
        t = s = max_len + anchors * iteration.num_lookahead
    else:
        t, s = max_len, iteration.buffer_length(max_len)
    residual = 2 * b * t * d * dt
    qkv = b * t * (hq + 2 * hkv) * hd * dt
    scores = b * hq * t * s * 4
    probs = b * hq * t * s * dt
    mlp = 3 * b * t * inter * dt
    if train:
        saved = c.num_layers * (residual + qkv + probs + mlp)
        logits = 3 * b * t * vocab * 4
        total = saved + scores + b * t * s + logits
        parts = {"saved_for_backward": saved, "attention_scores": scores, "mask": b * t * s, "logits": logits}
    else:
        logits = b * iteration.projected * vocab * 4
        layer = residual + max(qkv + scores + probs, mlp)
        successors = b * c.vocab_size * 4 if iteration.recycle else 0  # the recycle proposer's int32 table per row
        total = layer + logits + successors
        parts = {"one_layer": layer, "logits": logits, "successors": successors}
    return total, {"rows_per_device": b, "tokens": t, "keys": s, **parts}


# --- the plan --------------------------------------------------------------------------------------

def _config(config: LlamaConfig | str, dtype: str | None) -> LlamaConfig:
    config = load_preset(config) if isinstance(config, str) else config
    if dtype is not None:
        config = config.replace(dtype=dtype, param_dtype=dtype)
    return config


def _fits(total: int) -> dict[str, dict[str, Any]]:
    return {name: {"memory_bytes": memory, "usable_bytes": int(memory * USABLE), "fits": total <= memory * USABLE,
                   "fraction_of_usable": total / (memory * USABLE)} for name, memory in DEVICES}


def _one(config: LlamaConfig, shape: dict[str, int], batch: int, max_len: int, iteration: Iteration,
         train: bool, anchors: int, kind: str, adapter_rank: int, detail: bool) -> dict[str, Any]:
    mesh = abstract_mesh(shape)
    shards = param_shards(config, mesh)
    params = sum(p["bytes"] for p in shards.values())
    count = lookahead_count(config, iteration.num_lookahead, kind, adapter_rank)
    if train:
        cache, length, cache_spec = 0, 0, None
        lookahead = _nbytes((count,), LOOKAHEAD_TRAIN_DTYPE)
        optimizer = 3 * lookahead  # AdamW mu and nu, and the gradient, for the look-ahead parameters only
    else:
        length = iteration.buffer_length(max_len)
        sharding: NamedSharding = cache_sharding(config, mesh, batch, length)
        global_shape = (batch, length, config.num_kv_heads, config.head_dim)
        cache = 2 * config.num_layers * _nbytes(sharding.shard_shape(global_shape), config.dtype)
        cache_spec = str(sharding.spec)
        lookahead = _nbytes((count,), config.param_dtype)
        optimizer = 0
    activations, activation_detail = activation_bytes(config, mesh, batch, max_len, iteration, train, anchors)
    total = params + cache + lookahead + optimizer + activations
    out = {
        "mesh": mesh_text(shape), "mesh_shape": dict(shape), "num_devices": math.prod(shape.values()),
        "per_device": {"params": params, "kv_cache": cache, "lookahead": lookahead, "optimizer": optimizer,
                       "activations_estimate": activations, "total": total},
        "cache_length": length, "cache_spec": cache_spec, "activation_detail": activation_detail,
        "fits": _fits(total),
    }
    if detail:
        out["param_shards"] = shards
    return out


def plan(config: LlamaConfig | str, mesh_shape_: str | Sequence[int] | dict | None, batch: int, max_len: int,
         iteration: Iteration = DEFAULT_ITERATION, dtype: str | None = None, train: bool = False, anchors: int = 32,
         num_devices: int | None = None, recommend: bool = True, lookahead_kind: str = "vectors",
         adapter_rank: int = 8) -> dict[str, Any]:
    """Per-device memory of generation (or, with train=True, look-ahead training) on a mesh.

    config: a LlamaConfig or a preset name; mesh_shape_: '2x4' (data x tensor), '2x2x2'
    (data x fsdp x tensor), a tuple or a dict, or None to plan the recommended mesh of
    `num_devices`; max_len: prompt + new tokens (generation) or the sequence length (training);
    iteration: the decode iteration (its widest call sizes the KV buffer; training uses its L);
    lookahead_kind, adapter_rank: the look-ahead parameters counted; dtype: overrides the config's compute and parameter dtype. Returns bytes per device, the
    device table and the recommended mesh (see `plan_command.RULE_HELP`). Needs no devices.
    """
    if batch < 1 or max_len < 1 or anchors < 1 or adapter_rank < 1:
        raise PlanError("batch, max_len, anchors and adapter_rank must be >= 1")
    if train and iteration.num_lookahead < 1:
        raise PlanError("training needs --num-lookahead >= 1")
    if lookahead_kind not in LOOKAHEAD_KINDS:
        raise PlanError(f"look-ahead kind must be one of {', '.join(LOOKAHEAD_KINDS)}, got {lookahead_kind!r}")
    config = _config(config, dtype)
    if mesh_shape_ is None and num_devices is None:
        raise PlanError("give a mesh (e.g. 2x4) or a device count")
    shape = mesh_shape(mesh_shape_) if mesh_shape_ is not None else None
    if shape is not None and num_devices is None:
        num_devices = math.prod(shape.values())
    args = (batch, max_len, iteration, train, anchors, lookahead_kind, adapter_rank)
    recommended = recommend_mesh(config, num_devices, *args) if recommend or shape is None else None
    if shape is None:
        if recommended is None:
            raise PlanError(f"no factorisation of {num_devices} devices fits any device in the table")
        shape = recommended["mesh_shape"]
    result = _one(config, shape, *args, detail=True)
    result.update(
        config={"num_params": config.num_params(), "dtype": config.dtype,
                "param_dtype": config.param_dtype},
        batch=batch, max_len=max_len, num_lookahead=iteration.num_lookahead, iteration=iteration.to_json(),
        lookahead_kind=lookahead_kind, train=train,
        anchors=anchors if train else None, usable_fraction=USABLE, recommended=recommended)
    return result


def recommend_mesh(config: LlamaConfig, num_devices: int, batch: int, max_len: int, iteration: Iteration,
                   train: bool, anchors: int, kind: str = "vectors", adapter_rank: int = 8) -> dict[str, Any] | None:
    """See `plan_command.RULE_HELP`. None when no factorisation fits even the largest device."""
    candidates = [s for s in factorisations(num_devices) if batch % (s["data"] * s["fsdp"]) == 0]
    candidates.sort(key=lambda s: (-s["data"], s["fsdp"]))
    plans = [_one(config, s, batch, max_len, iteration, train, anchors, kind, adapter_rank, detail=False)
             for s in candidates]
    for name, memory in sorted(DEVICES, key=lambda d: d[1]):
        for p in plans:
            if p["per_device"]["total"] <= memory * USABLE:
                return {"mesh": p["mesh"], "mesh_shape": p["mesh_shape"], "budget_device": name,
                        "budget_bytes": int(memory * USABLE), "total_bytes": p["per_device"]["total"],
                        "smallest_budget": name == min(DEVICES, key=lambda d: d[1])[0]}
    return None


# --- the command -----------------------------------------------------------------------------------

def human(n: float) -> str:
    for unit, size in (("GiB", GiB), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def format_plan(p: dict[str, Any], name: str) -> str:
    dev = p["per_device"]
    shape = p["mesh_shape"]
    mode = (f"training the look-ahead parameters (sequence {p['max_len']} + {p['anchors']} anchors x L)" if p["train"]
            else f"generation (max-len {p['max_len']}, KV buffer {p['cache_length']})")
    cache_label = ("KV cache (not used in training)" if p["train"]
                   else f"KV cache ({p['batch']} x {p['cache_length']} slots)")
    rows = [("parameters (sharded)", dev["params"]), (cache_label, dev["kv_cache"]),
            (f"look-ahead parameters ({p['lookahead_kind']})", dev["lookahead"]), ("optimizer (AdamW moments + grads)", dev["optimizer"]),
            ("activations (ESTIMATE)", dev["activations_estimate"]), ("total", dev["total"])]
    lines = [
        f"pass-jax plan: {name} ({p['config']['num_params'] / 1e9:.2f}B parameters, {p['config']['param_dtype']}), "
        f"mesh {p['mesh']} = data {shape['data']} x fsdp {shape['fsdp']} x tensor {shape['tensor']} "
        f"({p['num_devices']} devices), batch {p['batch']}, {p['iteration']['label']}, {mode}",
        "",
        f"{'per device':<40}{'bytes':>12}",
        *(f"  {label:<38}{human(value):>12}" for label, value in rows),
    ]
    if not p["train"]:
        lines.append(f"  (cache spec {p['cache_spec']}, {p['activation_detail']['rows_per_device']} rows per device)")
    lines += ["", f"fits? (using {int(p['usable_fraction'] * 100)}% of each device's memory)"]
    for device, row in p["fits"].items():
        verdict = "yes" if row["fits"] else "NO "
        lines.append(f"  {device:<10} {human(row['memory_bytes']):>10}   {verdict}  "
                     f"({100 * row['fraction_of_usable']:.0f}% of usable)")
    rec = p["recommended"]
    lines.append("")
    if rec is None:
        lines.append(f"recommended mesh for {p['num_devices']} devices: none fits any device in the table")
    else:
        note = "" if rec["smallest_budget"] else " (nothing fits the smallest budget)"
        lines.append(f"recommended mesh for {p['num_devices']} devices: {rec['mesh']} "
                     f"(data {rec['mesh_shape']['data']} x fsdp {rec['mesh_shape']['fsdp']} x tensor "
                     f"{rec['mesh_shape']['tensor']}, {human(rec['total_bytes'])} per device): the most data "
                     f"parallelism that fits {rec['budget_device']}{note}")
    lines.append("activations are an estimate; parameter and KV-cache bytes are exact (real shardings).")
    return "\n".join(lines)
