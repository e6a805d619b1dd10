"""The look-ahead parameters of PaSS: the only trainable parameters, a pytree of their own.

Three kinds, all lossless (the base model stays frozen and real tokens see exactly the base model;
only the look-ahead slots change):
- "vectors" (the paper): L input vectors, an array [L, d_emb] fed in place of token embeddings.
- "deep": {"embeds": [L, d_emb], "layers": [num_layers, L, d_emb]}: the input vectors plus one
  vector per layer added to the residual stream before that layer, at look-ahead slots only.
  With zero `layers` it computes exactly what "vectors" does, so it can start from trained vectors.
- "adapter": deep, plus low-rank adapters for the first La <= L steps, at look-ahead slots only:
  x -> x + (x @ down) @ up on the normed input of each layer's attention and MLP, and on the final
  hidden state before the LM head (`ADAPTER_LEAVES`; down [.., La, d_emb, r], up [.., La, r, d_emb]).
  With zero `up` it computes exactly what its deep part does.

Stored as a `.npz` file (`lookahead`, plus `layers` for "deep", plus the adapter leaves) with a
JSON metadata file naming the kind, or as an Orbax checkpoint directory; trained parameters for the
bundled model ship in `pass_jax/lookahead_weights/`.
"""
from __future__ import annotations

from .errors import PassJaxError, quiet_abandoned_reads, root_reason

import dataclasses
import json
import zipfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .config import LlamaConfig
from .defaults import DEFAULT_MODEL
from .model import LookaheadInputs

KINDS = ("vectors", "deep", "adapter")
DEEP_KEYS = frozenset({"embeds", "layers"})
# Per layer (attention input, MLP input) and once before the LM head; "down" [.., La, D, r], "up" [.., La, r, D].
ADAPTER_LEAVES = ("attn_down", "attn_up", "mlp_down", "mlp_up", "head_down", "head_up")
BUNDLED_DIR = Path(__file__).resolve().parent / "lookahead_weights"
UNTRAINED_STEPS = 8  # steps `resolve` draws for the untrained initialisation when no L is given (-L auto)


class LookaheadError(PassJaxError):
    """Look-ahead parameters that cannot be used with this model."""


def kind_of(lookahead) -> str:
    """"vectors" for an array [L, d_emb], "deep" for {"embeds", "layers"}, "adapter" for those
    plus `ADAPTER_LEAVES`."""
    if isinstance(lookahead, dict):
        if set(lookahead) == DEEP_KEYS:
            return "deep"
        if set(lookahead) == DEEP_KEYS | set(ADAPTER_LEAVES):
            return "adapter"
        raise LookaheadError(f"look-ahead parameters with keys {sorted(lookahead)} are no known kind; "
                             f"deep ones have 'embeds' and 'layers', adapter ones also {', '.join(ADAPTER_LEAVES)}")
    return "vectors"


def adapter_steps(lookahead) -> int:
    """La: the number of leading steps that have adapters (0 unless the kind is "adapter")."""
    return lookahead["head_down"].shape[0] if kind_of(lookahead) == "adapter" else 0


def zero_adapters(num_layers: int, hidden: int, steps: int, rank: int, key, dtype=jnp.float32) -> dict:
    """Adapters that change nothing yet: zero "up", small random "down" (so that "up" gets a gradient)."""
    keys = jax.random.split(key, 3)
    scale = 1.0 / np.sqrt(hidden)
    down = lambda k, lead: (scale * jax.random.normal(k, lead + (steps, hidden, rank))).astype(dtype)  # noqa: E731
    up = lambda lead: jnp.zeros(lead + (steps, rank, hidden), dtype)  # noqa: E731
    return {"attn_down": down(keys[0], (num_layers,)), "attn_up": up((num_layers,)),
            "mlp_down": down(keys[1], (num_layers,)), "mlp_up": up((num_layers,)),
            "head_down": down(keys[2], ()), "head_up": up(())}


def input_vectors(lookahead):
    """The [L, d_emb] vectors fed at the look-ahead slots, whatever the kind."""
    return lookahead["embeds"] if kind_of(lookahead) != "vectors" else lookahead


def init_untrained(params, num_lookahead: int, key, noise: float = 0.01) -> jax.Array:
    """Mean token embedding plus small noise: the 'untrained' baseline of the paper's comparison."""
    embedding = params["embedding"]
    mean = jnp.mean(embedding.astype(jnp.float32), axis=0)
    scale = noise * jnp.std(embedding.astype(jnp.float32))
    return (mean[None] + scale * jax.random.normal(key, (num_lookahead, embedding.shape[1]))).astype(embedding.dtype)


def init_random(config: LlamaConfig, num_lookahead: int, key, scale: float = 0.02) -> jax.Array:
    return scale * jax.random.normal(key, (num_lookahead, config.hidden_size), config.jnp_param_dtype)


def as_kind(lookahead, kind: str, num_layers: int, adapter_rank: int = 8, num_adapted: int | None = None,
            key=None):
    """Convert to `kind` without changing the function: vectors become deep with zero per-layer
    vectors, deep becomes adapter with zero-output adapters (for `num_adapted` steps, default all,
    of rank `adapter_rank`); back down only when the dropped parts are all zero. Adapters of a lower
    rank grow to `adapter_rank` with zero-output columns; a lower `adapter_rank` is refused. Adapters
    for fewer than `num_adapted` steps (when given) grow zero-output adapters for the next steps."""
    if kind not in KINDS:
        raise LookaheadError(f"look-ahead kind must be one of {', '.join(KINDS)}, got {kind!r}")
    have = kind_of(lookahead)
    if have == kind == "adapter":
        return _grow_steps(_grow_rank(lookahead, adapter_rank, num_layers, key), num_adapted, num_layers, key)
    if have == kind:
        return lookahead
    if have == "vectors":
        lookahead = {"embeds": lookahead, "layers": jnp.zeros((num_layers,) + lookahead.shape, lookahead.dtype)}
    if kind == "adapter":
        embeds = lookahead["embeds"]
        steps = embeds.shape[0] if num_adapted is None else num_adapted
        key = jax.random.key(0) if key is None else key
        return {**lookahead, **zero_adapters(num_layers, embeds.shape[1], steps, adapter_rank, key, embeds.dtype)}
    if have == "adapter":
        if any(np.any(np.asarray(lookahead[name])) for name in ADAPTER_LEAVES if name.endswith("_up")):
            raise LookaheadError(f"adapter look-ahead parameters have non-zero adapters: they cannot be used as {kind}")
        lookahead = {name: lookahead[name] for name in DEEP_KEYS}
    if kind == "deep":
        return lookahead
    if np.any(np.asarray(lookahead["layers"])):
        raise LookaheadError("deep look-ahead parameters have non-zero per-layer vectors: they cannot be used "
                             "as plain input vectors")
    return lookahead["embeds"]


def _grow_steps(lookahead, steps: int | None, num_layers: int, key):
    have = adapter_steps(lookahead)
    steps = min(steps or have, lookahead["embeds"].shape[0])
    if steps <= have:
        return lookahead
    down = lookahead["head_down"]
    extra = zero_adapters(num_layers, down.shape[-2], steps - have, down.shape[-1],
                          jax.random.key(0) if key is None else key, down.dtype)
    return {**lookahead, **{name: jnp.concatenate([jnp.asarray(lookahead[name]), extra[name]], axis=-3)
                            for name in ADAPTER_LEAVES}}


def _grow_rank(lookahead, rank: int, num_layers: int, key):
    have = lookahead["head_down"].shape[-1]
    if rank < have:
        raise LookaheadError(f"these adapters have rank {have}: they cannot be cut to rank {rank} without changing "
                             f"their function (set the rank to {have} or more)")
    if rank == have:
        return lookahead
    embeds = lookahead["embeds"]
    extra = zero_adapters(num_layers, embeds.shape[1], adapter_steps(lookahead), rank - have,
                          jax.random.key(0) if key is None else key, lookahead["head_down"].dtype)
    grown = {name: jnp.concatenate([jnp.asarray(lookahead[name]), extra[name]], axis=-1 if name.endswith("_down") else -2)
             for name in ADAPTER_LEAVES}
    return {**lookahead, **grown}


def init(kind: str, params, config: LlamaConfig, num_lookahead: int, key, adapter_rank: int = 8):
    """Untrained parameters of a kind: mean embedding + noise, zero per-layer vectors, zero-output adapters."""
    vectors_key, adapter_key = jax.random.split(key)
    return as_kind(init_untrained(params, num_lookahead, vectors_key), kind, config.num_layers, adapter_rank,
                   key=adapter_key)


def num_steps(lookahead) -> int:
    return input_vectors(lookahead).shape[0]


def num_parameters(lookahead) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(lookahead))


def truncate(lookahead, num_lookahead: int):
    """The first `num_lookahead` steps (every leaf sliced on its "lookahead" axis)."""
    kind = kind_of(lookahead)
    if kind == "vectors":
        return lookahead[:num_lookahead]
    cut = {"embeds": lookahead["embeds"][:num_lookahead], "layers": lookahead["layers"][:, :num_lookahead]}
    if kind == "adapter":
        cut.update({name: lookahead[name][..., :num_lookahead, :, :] for name in ADAPTER_LEAVES})
    return cut


def check(lookahead, config: LlamaConfig, num_lookahead: int | None = None, where: str = "look-ahead parameters"):
    """Raise a one-line LookaheadError unless the parameters fit this model (and hold num_lookahead steps)."""
    vectors = input_vectors(lookahead)
    if vectors.ndim != 2 or vectors.shape[1] != config.hidden_size:
        raise LookaheadError(f"{where} have shape {tuple(vectors.shape)}, but this model needs "
                             f"[L, {config.hidden_size}] (d_emb = {config.hidden_size})")
    if kind_of(lookahead) != "vectors":
        want = (config.num_layers,) + tuple(vectors.shape)
        if tuple(lookahead["layers"].shape) != want:
            raise LookaheadError(f"{where}: per-layer look-ahead vectors have shape "
                                 f"{tuple(lookahead['layers'].shape)}, but this model needs {list(want)}")
    if kind_of(lookahead) == "adapter":
        _check_adapters(lookahead, config, vectors.shape[0], where)
    if num_lookahead is not None and num_lookahead > vectors.shape[0]:
        raise LookaheadError(f"{where} hold {vectors.shape[0]} look-ahead steps; {num_lookahead} were asked for")
    return lookahead


def _check_adapters(lookahead, config: LlamaConfig, num_l: int, where: str) -> None:
    steps, hidden = adapter_steps(lookahead), config.hidden_size
    rank = lookahead["head_down"].shape[-1] if lookahead["head_down"].ndim == 3 else None
    for name in ADAPTER_LEAVES:
        lead = () if name.startswith("head") else (config.num_layers,)
        want = lead + ((steps, hidden, rank) if name.endswith("_down") else (steps, rank, hidden))
        if rank is None or tuple(lookahead[name].shape) != want:
            raise LookaheadError(f"{where}: adapter {name} has shape {tuple(lookahead[name].shape)}, but this model "
                                 f"needs {list(want)} ([layers,] adapted steps, d_emb = {hidden}, rank)")
    if steps > num_l:
        raise LookaheadError(f"{where}: adapters for {steps} steps, but only {num_l} look-ahead steps")


def prepare(lookahead, config: LlamaConfig, num_lookahead: int, where: str = "look-ahead parameters"):
    """Checked and cut to `num_lookahead` steps: what a decode takes."""
    return truncate(check(lookahead, config, num_lookahead, where), num_lookahead)


def _npz_arrays(lookahead) -> dict[str, np.ndarray]:
    host = jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float32), lookahead)
    if kind_of(lookahead) == "vectors":
        return {"lookahead": host}
    return {"lookahead": host["embeds"], **{name: leaf for name, leaf in host.items() if name != "embeds"}}


def save(path: str | Path, lookahead, metadata: dict | None = None) -> None:
    """`.npz` for a small portable file, otherwise an Orbax checkpoint directory. The metadata JSON
    (`PATH.json` beside a .npz, `metadata.json` inside a directory) records the kind."""
    from . import outputs

    path = Path(path).expanduser().absolute()
    metadata = None if metadata is None else {"kind": kind_of(lookahead), **metadata}
    arrays = _npz_arrays(lookahead)
    _check_finite(arrays, f"refusing to save {path}: the look-ahead parameters")
    if path.suffix == ".npz":
        path.parent.mkdir(parents=True, exist_ok=True)
        with outputs.atomic_file(path) as tmp:
            np.savez(tmp, **arrays)
        if metadata is not None:
            outputs.write_text(metadata_path(path), json.dumps(metadata, indent=1))
        return
    import orbax.checkpoint as ocp
    with outputs.atomic_dir(path, is_writer=jax.process_index() == 0) as tmp:
        with ocp.StandardCheckpointer() as ckpt:
            ckpt.save(tmp / "lookahead", {"lookahead": lookahead}, force=True)
        if metadata is not None and jax.process_index() == 0:
            metadata_path(tmp).write_text(json.dumps(metadata, indent=1))


def metadata_path(path: str | Path) -> Path:
    path = Path(path).expanduser()
    return path.with_suffix(".json") if path.suffix == ".npz" else path / "metadata.json"


def read_metadata(path: str | Path) -> dict:
    """The JSON metadata saved beside look-ahead parameters ({} if there is none)."""
    meta = metadata_path(path)
    if not meta.is_file():
        return {}
    try:
        return json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LookaheadError(f"{meta}: look-ahead metadata is not valid JSON ({err})") from None


def load(path: str | Path, config: LlamaConfig):
    """Look-ahead parameters of any kind from a .npz or an Orbax directory, checked against the model."""
    lookahead = read(path)
    check(lookahead, config, where=str(path))
    return jax.tree.map(lambda x: jnp.asarray(x, config.jnp_param_dtype), lookahead)


def read(path: str | Path):
    """Look-ahead parameters as host arrays, checked to be readable and finite but not yet against a
    model: the CLI calls it before spending seconds on loading one."""
    path = Path(path).expanduser()
    if not path.exists():
        raise LookaheadError(f"look-ahead checkpoint {path} not found")
    if path.is_file():
        if path.suffix != ".npz":
            raise LookaheadError(f"{path}: a look-ahead file must be .npz (or give an Orbax checkpoint directory)")
        if not zipfile.is_zipfile(path):  # np.load would misreport other bytes as pickled data
            raise LookaheadError(f"{path}: not a .npz file (not a zip archive)")
        try:
            with np.load(path) as data:
                arrays = {name: data[name] for name in data}
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            raise LookaheadError(f"{path}: not a readable .npz file ({err})") from None
        if "lookahead" not in arrays:
            raise LookaheadError(f"{path} has no 'lookahead' array (found {list(arrays)})")
        lookahead = ({"embeds": arrays["lookahead"], **{k: v for k, v in arrays.items() if k != "lookahead"}}
                     if "layers" in arrays else arrays["lookahead"])
        kind_of(lookahead)  # unknown arrays: one clear line
    else:
        import orbax.checkpoint as ocp
        item = path / "lookahead" if (path / "lookahead").exists() else path
        try:
            with ocp.StandardCheckpointer() as ckpt, quiet_abandoned_reads():
                lookahead = jax.tree.map(np.asarray, ckpt.restore(item)["lookahead"])
        except Exception as err:  # Orbax and TensorStore raise ValueError, OSError, even a bare Exception
            raise LookaheadError(f"{path}: not a look-ahead Orbax checkpoint ({root_reason(err)})") from None
    _check_finite(lookahead, f"{path}: the look-ahead parameters")
    return lookahead


def _check_finite(lookahead, what: str) -> None:
    """NaN or inf parameters (a diverged run) would draft garbage without a word."""
    bad = sum(int(np.size(leaf) - np.isfinite(leaf).sum()) for leaf in jax.tree.leaves(lookahead))
    if bad:
        raise LookaheadError(f"{what} hold {bad} non-finite values (NaN or inf)")


def forward_inputs(lookahead, step_index) -> LookaheadInputs | None:
    """`forward`'s `lookahead=` argument that puts look-ahead parameters at the slots where step_index > 0
    (None for None parameters: a plain call).

    step_index int [B, T]: 0 for a real token, i for [LA]_i (1-based). Real tokens see exactly the
    base model. Every decode variant and the training loss build their inputs through this one
    function, so a new look-ahead parametrisation only has to extend it (and `LookaheadInputs`).
    """
    if lookahead is None:
        return None

    def by_step(table):  # [..., L, D] -> [..., B, T, D]; row 0 (real tokens) is unused
        return jnp.take(jnp.concatenate([jnp.zeros_like(table[..., :1, :]), table], axis=-2), step_index, axis=-2)

    kind = kind_of(lookahead)
    inputs = LookaheadInputs(mask=step_index > 0, embeds=by_step(input_vectors(lookahead)))
    if kind != "vectors":
        inputs = inputs._replace(layer_embeds=by_step(lookahead["layers"]))
    if kind == "adapter":  # one-hot of the step over the adapted steps: zero at tokens and later steps
        inputs = inputs._replace(adapters={name: lookahead[name] for name in ADAPTER_LEAVES},
                                 adapter_select=jax.nn.one_hot(step_index - 1, adapter_steps(lookahead),
                                                               dtype=jnp.float32))
    return inputs


def bundled_path(domain: str = "text") -> Path:
    return BUNDLED_DIR / f"{DEFAULT_MODEL}-{domain}.npz"


@dataclasses.dataclass(frozen=True, eq=False)
class Resolved:
    """`--lookahead` resolved once: the parameters (every step their source holds, not yet checked
    against a model), a description of their source for reports, the JSON metadata saved beside them
    ({} if none: `-L auto` reads its "acceptance"), and their file (None for the untrained ones)."""

    params: Any
    source: str
    metadata: dict = dataclasses.field(default_factory=dict)
    path: Path | None = None

    def prepare(self, config: LlamaConfig, num_lookahead: int):
        """The parameters checked against the model and cut to `num_lookahead` steps, on device in the
        model's parameter dtype: what a decode takes (done once, by `Generator`)."""
        cut = prepare(self.params, config, num_lookahead, str(self.path) if self.path else "look-ahead parameters")
        return jax.tree.map(lambda x: jnp.asarray(x, config.jnp_param_dtype), cut)


def read_file(path: str | Path, source: str | None = None) -> Resolved:
    """The parameters and metadata of a .npz or Orbax path, read once (checked readable and finite)."""
    path = Path(path).expanduser()
    return Resolved(read(path), source or f"trained ({path})", read_metadata(path), path)


def resolve(spec: str | None, params, config: LlamaConfig, model_identity: str | None = None, *,
            domain: str = "text", num_lookahead: int | None = None, key=None, found: Resolved | None = None
            ) -> Resolved:
    """`--lookahead {default,text,code,none,PATH}` -> `Resolved`, reading its file once.

    For the bundled SmolLM2 (model_identity, `LoadedModel.identity`, says so; a converted copy keeps
    it), 'text' uses the shipped parameters trained on Wikipedia text, 'code' those trained on
    Python, and 'default' those of `domain`; other models fall back to the untrained
    initialisation (`num_lookahead` steps, default UNTRAINED_STEPS), which 'none' always means.
    `found`: what `read_file` already read for this spec (the CLI reads a PATH before loading a model).
    """
    if found is not None:
        return found
    path = resolve_path(spec, model_identity, domain)
    if path is None:
        key = jax.random.key(0) if key is None else key
        steps = UNTRAINED_STEPS if num_lookahead is None else num_lookahead
        return Resolved(init_untrained(params, steps, key), "untrained (mean embedding + noise)")
    return read_file(path, f"trained ({path.name if path.parent == BUNDLED_DIR else spec})")


def resolve_path(spec: str | None, model_identity: str | None = None, domain: str = "text") -> Path | None:
    """The file or directory `--lookahead` names (see `resolve`), or None for the untrained initialisation."""
    spec = spec or "default"
    shipped = {"default": domain, "text": "text", "code": "code"}.get(spec)
    if shipped and model_identity == DEFAULT_MODEL and bundled_path(shipped).is_file():
        return bundled_path(shipped)
    if spec in ("text", "code"):
        raise LookaheadError(f"--lookahead {spec}: shipped look-ahead parameters exist only for the bundled {DEFAULT_MODEL}")
    return None if spec in ("default", "none") else Path(spec)
