"""Meshes and logical-axis sharding rules (the MaxText pattern).

Every parameter and cache dimension has a logical name (`model.py`); `RULES` map names to mesh
axes. A dimension that a mesh axis does not divide is replicated along that axis instead of
failing, so one rule set serves SmolLM2 (9 heads) and LLaMA-7B alike.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .config import ConfigError, LlamaConfig
from .model import CACHE_AXES, param_logical_axes

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axes, in priority order (MaxText-style `logical_axis_rules`).
RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("batch", ("data", "fsdp")),
    ("cache_batch", ("data", "fsdp")),
    ("vocab", ("tensor",)),
    ("embed", ("fsdp",)),
    ("q_heads", ("tensor",)),
    ("kv_heads", ("tensor",)),
    ("mlp", ("tensor",)),
    ("cache_kv_heads", ("tensor",)),
    ("cache_seq", ()),
    ("head_dim", ()),
    ("norm", ()),
    ("lookahead", ()),
    ("length", ()),
)


def mesh_sizes(text: str | Sequence[int]) -> list[int]:
    """'2x4' -> [2, 4]; a sequence of sizes passes through (checked by `parse_mesh_shape`)."""
    if not isinstance(text, str):
        return list(text)
    try:
        return [int(s) for s in text.lower().split("x")]
    except ValueError:
        raise ConfigError(f"mesh {text!r} is not of the form DATAxTENSOR or DATAxFSDPxTENSOR") from None


def parse_mesh_shape(text: str | Sequence[int] | None, num_devices: int | None = None) -> dict[str, int]:
    """'2x4' -> data=2, tensor=4; '2x2x2' -> data, fsdp, tensor; None -> all devices on 'data'."""
    num_devices = num_devices or jax.device_count()
    sizes = [num_devices] if text is None else mesh_sizes(text)
    names = {1: ("data",), 2: ("data", "tensor"), 3: MESH_AXES}.get(len(sizes))
    if names is None or any(s < 1 for s in sizes):
        raise ConfigError(f"mesh {text!r} must have 1-3 positive sizes, e.g. 8, 2x4 or 2x2x2")
    shape = {axis: 1 for axis in MESH_AXES}
    shape.update(zip(names, sizes))
    if math.prod(sizes) != num_devices:
        raise ConfigError(f"mesh {text!r} needs {math.prod(sizes)} devices but {num_devices} are available")
    return shape


def make_mesh(shape: str | dict[str, int] | None = None, devices=None) -> Mesh:
    devices = devices if devices is not None else jax.devices()
    if not isinstance(shape, dict):
        shape = parse_mesh_shape(shape, len(devices))
    sizes = tuple(shape.get(axis, 1) for axis in MESH_AXES)
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def logical_to_spec(logical: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules=RULES) -> PartitionSpec:
    """Map logical names to mesh axes, dropping any mesh axis that does not divide the dimension."""
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name, dim in zip(logical, shape):
        axes = []
        for axis in table.get(name, ()) if name else ():
            size = mesh.shape[axis]
            if axis in used or size == 1 or dim % (math.prod(mesh.shape[a] for a in axes) * size):
                continue
            axes.append(axis)
        used.update(axes)
        spec.append(tuple(axes) if len(axes) > 1 else (axes[0] if axes else None))
    return PartitionSpec(*spec)


def named_sharding(logical, shape, mesh: Mesh, rules=RULES) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical, shape, mesh, rules))


def param_shardings(config: LlamaConfig, mesh: Mesh, shapes: Any | None = None) -> Any:
    """A pytree of NamedSharding matching the params."""
    from .model import param_shapes
    shapes = shapes if shapes is not None else param_shapes(config)
    logical = param_logical_axes(config)
    return jax.tree.map(lambda spec, s: named_sharding(tuple(spec), s.shape, mesh),
                        logical, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec))


def shard_params(params: Any, config: LlamaConfig, mesh: Mesh) -> Any:
    return jax.device_put(params, param_shardings(config, mesh, params))


def cache_sharding(config: LlamaConfig, mesh: Mesh, batch: int, length: int) -> NamedSharding:
    return named_sharding(CACHE_AXES, (batch, length, config.num_kv_heads, config.head_dim), mesh)


def batch_sharding(mesh: Mesh, shape: Sequence[int]) -> NamedSharding:
    """Shard the leading (batch) dimension over data-parallel axes; replicate the rest."""
    return named_sharding(("batch",) + (None,) * (len(shape) - 1), shape, mesh)
