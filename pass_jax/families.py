"""The model families pass-jax loads, and how each one's checkpoint options map onto `LlamaConfig`.

Llama (1/2/3.x), Mistral, Qwen2/2.5 and Qwen3 are one decoder with a few options: Llama-3 RoPE
scaling, bias on the q/k/v projections (Qwen2), per-head RMSNorm on q and k (Qwen3), a sliding
attention window (Mistral v0.1), tied embeddings. Every option a checkpoint sets is either mapped
here or refused with one line that names it: a checkpoint is never loaded with a silent difference.

Hugging Face names the family in `config.json`'s `model_type`; GGUF in `general.architecture`, under
which its metadata keys live (`qwen2.context_length`, ...). llama.cpp's converter writes Mistral as
`llama`, and permutes the Q/K rows of `llama` models (interleaved RoPE) but not of qwen2/qwen3.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import numpy as np

from .errors import PassJaxError

HF_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
GGUF_ARCHITECTURES = ("llama", "qwen2", "qwen3")
# GGUF architectures whose Q/K rows llama.cpp's converter permutes for its interleaved RoPE.
GGUF_PERMUTED_QK = ("llama",)


class FamilyError(PassJaxError):
    """A checkpoint whose architecture or options pass-jax does not implement."""


class ExtraRow(NamedTuple):
    """A per-layer parameter some families have: our name under `attention`, HF and GGUF suffixes."""
    name: str
    hf: str
    gguf: str


QKV_BIAS_ROWS = (ExtraRow("bq", "self_attn.q_proj.bias", "attn_q.bias"),
                 ExtraRow("bk", "self_attn.k_proj.bias", "attn_k.bias"),
                 ExtraRow("bv", "self_attn.v_proj.bias", "attn_v.bias"))
QK_NORM_ROWS = (ExtraRow("q_norm", "self_attn.q_norm.weight", "attn_q_norm.weight"),
                ExtraRow("k_norm", "self_attn.k_norm.weight", "attn_k_norm.weight"))


def extra_rows(config) -> tuple[ExtraRow, ...]:
    """The per-layer attention parameters this config adds to LLaMA's (all copied as stored)."""
    return (QKV_BIAS_ROWS if config.qkv_bias else ()) + (QK_NORM_ROWS if config.qk_norm else ())


def extra_param_path(layer: int, row: ExtraRow) -> tuple[str, ...]:
    """Our param path of an extra row: biases are leaves of `attention`, norms are `attention/<norm>/scale`."""
    base = (f"layer_{layer}", "attention", row.name)
    return base + ("scale",) if row.name.endswith("_norm") else base


def gguf_permutes_qk(config) -> bool:
    """Whether a GGUF of this family holds llama.cpp's permuted Q/K rows (Mistral is written as llama)."""
    return config.family in ("llama", "mistral")


def _refuse(what: str, where: str = "") -> FamilyError:
    return FamilyError(f"{where + ': ' if where else ''}{what}")


# --- Hugging Face config.json -------------------------------------------------------------------

def _full_attention_only(hf, family: str) -> None:
    """Qwen2/3 can slide a window over some layers (`use_sliding_window`, `layer_types`); pass-jax cannot."""
    types = getattr(hf, "layer_types", None) or ()
    if getattr(hf, "use_sliding_window", False) or any(t != "full_attention" for t in types):
        raise _refuse(f"{family} with sliding-window layers (use_sliding_window / layer_types) is not supported: "
                      "pass-jax implements full attention only")


def hf_config_values(hf) -> dict[str, Any]:
    """`LlamaConfig` values from a transformers config of a supported family, or a FamilyError naming
    the first option pass-jax does not implement."""
    model_type = getattr(hf, "model_type", None)
    if model_type not in HF_MODEL_TYPES:
        raise _refuse(f"unsupported architecture {model_type!r}: pass-jax loads LLaMA-family checkpoints, "
                      f"model_type {', '.join(HF_MODEL_TYPES)} in config.json")
    if getattr(hf, "hidden_act", "silu") != "silu":
        raise _refuse(f"unsupported activation {hf.hidden_act!r}: {model_type} in pass-jax uses silu")
    if getattr(hf, "mlp_bias", False):
        raise _refuse("unsupported mlp_bias: pass-jax's MLP has no bias terms")
    values: dict[str, Any] = {"family": model_type}
    if model_type in ("llama", "mistral"):
        if getattr(hf, "attention_bias", False):
            raise _refuse(f"unsupported attention_bias in a {model_type} checkpoint: pass-jax has no bias on the "
                          "output projection")
    elif model_type == "qwen2":
        _full_attention_only(hf, model_type)
        values["qkv_bias"] = True  # Qwen2's q/k/v projections always carry a bias, its output one never
    elif model_type == "qwen3":
        _full_attention_only(hf, model_type)
        if getattr(hf, "attention_bias", False):
            raise _refuse("unsupported attention_bias in a qwen3 checkpoint (bias on q/k/v/o): pass-jax has none "
                          "on the output projection")
        values["qk_norm"] = True
    if model_type == "mistral":
        window = getattr(hf, "sliding_window", None)
        if window is not None and window < hf.max_position_embeddings:
            values["sliding_window"] = int(window)  # v0.1; checked against each decode's buffer
    rope = dict(getattr(hf, "rope_parameters", None) or getattr(hf, "rope_scaling", None) or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type == "llama3":
        values["rope_scaling"] = {k: rope[k] for k in ("factor", "low_freq_factor", "high_freq_factor",
                                                       "original_max_position_embeddings")}
    elif rope_type not in ("default", None):
        raise _refuse(f"unsupported rope scaling {rope_type!r}: pass-jax supports default and llama3")
    values.update(
        vocab_size=hf.vocab_size, hidden_size=hf.hidden_size, num_layers=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads, num_kv_heads=getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads,
        intermediate_size=hf.intermediate_size, head_dim=getattr(hf, "head_dim", None),
        rope_theta=float(rope.get("rope_theta", getattr(hf, "rope_theta", 10000.0))), rms_eps=hf.rms_norm_eps,
        tie_embeddings=bool(getattr(hf, "tie_word_embeddings", False)), max_seq_len=hf.max_position_embeddings)
    return values


# --- GGUF metadata ------------------------------------------------------------------------------

def gguf_config_values(field: Callable[[str, Any], Any], tensors: dict[str, Any], where: str = "") -> dict[str, Any]:
    """`LlamaConfig` values from a GGUF file's metadata (`field(key, default)`) and tensor table.

    The family is `general.architecture`, the prefix of its keys; the options are read from the
    tensors present (q/k/v biases, q/k norms, `rope_freqs.weight`), and any the family should not
    have is refused, as is RoPE scaling other than llama3's."""
    arch = field("general.architecture", None)
    if arch not in GGUF_ARCHITECTURES:
        raise _refuse(f"unsupported GGUF architecture {arch!r}: pass-jax loads {', '.join(GGUF_ARCHITECTURES)}",
                      where)
    if "token_embd.weight" not in tensors:
        raise _refuse("tensor 'token_embd.weight' (the token embedding) is missing", where)

    def key(name, default=None):
        return field(f"{arch}.{name}", default)

    hidden, heads = int(key("embedding_length")), int(key("attention.head_count"))
    has_bias = "blk.0.attn_q.bias" in tensors
    has_qk_norm = "blk.0.attn_q_norm.weight" in tensors
    if "blk.0.attn_output.bias" in tensors or "blk.0.ffn_up.bias" in tensors:
        raise _refuse("bias on the attention output or MLP projections is not supported", where)
    if has_bias and arch != "qwen2":
        raise _refuse(f"q/k/v projection biases in a {arch!r} file: pass-jax implements them for qwen2 only", where)
    if arch == "qwen2" and not has_bias:
        raise _refuse("a qwen2 file without q/k/v biases (blk.0.attn_q.bias): not a Qwen2 layout", where)
    if has_qk_norm != (arch == "qwen3"):
        raise _refuse(f"q/k norms {'in' if has_qk_norm else 'missing from'} a {arch!r} file: pass-jax implements "
                      "them for qwen3 only, where they are required", where)
    scaling_type = key("rope.scaling.type", None)
    if scaling_type not in (None, "none"):
        raise _refuse(f"unsupported rope scaling {scaling_type!r}: pass-jax supports default and llama3 "
                      "(a rope_freqs.weight tensor)", where)
    head_dim = int(key("attention.key_length", None) or key("rope.dimension_count", None) or hidden // heads)
    if int(key("attention.value_length", head_dim)) != head_dim:
        raise _refuse("key and value head sizes differ; pass-jax needs them equal", where)
    values = dict(
        family=arch, vocab_size=int(key("vocab_size", None) or int(tensors["token_embd.weight"].shape[-1])),
        hidden_size=hidden, num_layers=int(key("block_count")), num_heads=heads,
        num_kv_heads=int(key("attention.head_count_kv", heads)), intermediate_size=int(key("feed_forward_length")),
        head_dim=head_dim, rope_theta=float(key("rope.freq_base", 10000.0)),
        # float32 eps in GGUF (9.99999975e-06) is meant as 1e-5.
        rms_eps=float(f"{float(np.float32(key('attention.layer_norm_rms_epsilon', 1e-6)).item()):.6g}"),
        tie_embeddings="output.weight" not in tensors, max_seq_len=int(key("context_length", 2048)),
        qkv_bias=has_bias, qk_norm=has_qk_norm)
    window = key("attention.sliding_window", None)
    if window is None and arch == "llama" and _is_mistral_v01(field):
        window = MISTRAL_V01_WINDOW  # llama.cpp writes Mistral as llama and drops the window from the metadata
    if window is not None and int(window) < values["max_seq_len"]:
        values["sliding_window"] = int(window)
    return values


MISTRAL_V01_WINDOW = 4096


def _is_mistral_v01(field: Callable[[str, Any], Any]) -> bool:
    """Whether a `llama` GGUF is Mistral-7B v0.1 by its names (`general.basename`/`name`/`version`, as
    llama.cpp's converter writes them from the model's directory and card)."""
    names = " ".join(str(field(k, "") or "") for k in ("general.basename", "general.name", "general.version",
                                                        "general.finetune")).lower()
    return "mistral" in names and ("v0.1" in names or "v0_1" in names or "v01" in names)


def rope_scaling_from_factors(factors: np.ndarray, theta: float, head_dim: int, where: str = "") -> dict | None:
    """Llama-3 RoPE scaling parameters that reproduce llama.cpp's `rope_freqs.weight` (a divisor per frequency).

    llama.cpp's converter writes the factors, not the parameters: 1 for short wavelengths, `factor` for
    long ones, 1 / ((1 - s) / factor + s) between, with s linear in 1 / wavelength. The parameters are
    recovered from that line (only the two wavelength bounds matter; original_max_position_embeddings
    is fixed and the factors set relative to it), then checked: factors they do not reproduce within
    float32 rounding are refused."""
    factors = np.asarray(factors, np.float64).reshape(-1)
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if factors.shape != inv_freq.shape:
        raise _refuse(f"rope_freqs.weight has {factors.size} values, expected head_dim / 2 = {inv_freq.size}", where)
    if np.allclose(factors, 1.0):
        return None
    factor = float(factors.max())
    wavelen = 2 * math.pi / inv_freq
    short, long_ = np.isclose(factors, 1.0, rtol=1e-6), np.isclose(factors, factor, rtol=1e-6)
    medium = ~short & ~long_
    # The bounds: a wavelength below `high` is unscaled, one above `low` scaled fully.
    high_lo = wavelen[short].max() if short.any() else 0.0
    high_hi = wavelen[~short].min()
    low_lo = wavelen[~long_].max() if (~long_).any() else 0.0
    low_hi = wavelen[long_].min() if long_.any() else wavelen.max() * 2
    if medium.sum() >= 2:
        # s = (1/wl - 1/low) / (1/high - 1/low): a line in 1/wl through the medium points.
        s = (1 / factors[medium] - 1 / factor) / (1 - 1 / factor)
        slope, intercept = np.polyfit(1 / wavelen[medium], s, 1)
        inv_low = -intercept / slope
        inv_high = inv_low + 1 / slope
        low, high = 1 / inv_low, 1 / inv_high
    elif medium.sum() == 1:
        # One point on the line: keep `high` in its bracket and solve for `low`.
        s = (1 / factors[medium][0] - 1 / factor) / (1 - 1 / factor)
        high = (high_lo + high_hi) / 2 if high_lo > 0 else high_hi * 0.99
        inv_w = 1 / wavelen[medium][0]
        inv_low = (inv_w - s / high) / (1 - s)
        low = 1 / inv_low
    else:
        high = (high_lo + high_hi) / 2 if high_lo > 0 else high_hi * 0.99
        low = (low_lo + low_hi) / 2
    # Only the bounds are determined; take original_max_position_embeddings = the low bound (low_freq_factor
    # 1, as every Llama 3.x has it) and round to 6 digits where that still reproduces the file's factors, so
    # a Llama 3.x GGUF gets the parameters of its config.json (factor 8, 1, 4, 8192 for 3.1).
    original = max(int(round(low)), 1)
    exact = {"factor": factor, "low_freq_factor": original / low, "high_freq_factor": original / high,
             "original_max_position_embeddings": original}
    rounded = {k: (v if isinstance(v, int) else float(f"{v:.6g}")) for k, v in exact.items()}
    for scaling in (rounded, exact):
        if np.allclose(_llama3_factors(inv_freq, scaling), factors, rtol=1e-5, atol=1e-6):
            return {k: (int(v) if k == "original_max_position_embeddings" else float(v)) for k, v in scaling.items()}
    raise _refuse("rope_freqs.weight does not follow Llama-3 RoPE scaling: pass-jax implements no other "
                  "per-frequency factors", where)


def _llama3_factors(inv_freq: np.ndarray, rs: dict) -> np.ndarray:
    """The divisor per frequency that transformers' llama3 scaling applies (`model.rope_inv_freq`)."""
    orig, lff, hff, factor = (rs["original_max_position_embeddings"], rs["low_freq_factor"], rs["high_freq_factor"],
                              rs["factor"])
    wavelen = 2 * math.pi / inv_freq
    smooth = (orig / wavelen - lff) / (hff - lff)
    scaled = np.where(wavelen > orig / lff, inv_freq / factor, inv_freq)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= orig / hff) & (wavelen <= orig / lff)
    return inv_freq / np.where(medium, smoothed, scaled)


# --- end-of-turn tokens -------------------------------------------------------------------------

def hf_stop_ids(path) -> tuple[int, ...]:
    """The extra end tokens a Hugging Face directory's `generation_config.json` names (`eos_token_id`, an
    id or a list: Llama 3.1 Instruct stops at <|eot_id|> and <|eom_id|> as well as <|end_of_text|>,
    Qwen2.5 Instruct at <|im_end|> and <|endoftext|>), as transformers' `generate` does."""
    import json
    from pathlib import Path

    file = Path(path) / "generation_config.json"
    try:
        value = json.loads(file.read_text()).get("eos_token_id")
    except (OSError, ValueError, AttributeError):
        return ()
    values = value if isinstance(value, list) else [value]
    return tuple(sorted({int(v) for v in values if isinstance(v, int) and not isinstance(v, bool)}))


def gguf_stop_ids(field: Callable[[str, Any], Any]) -> tuple[int, ...]:
    """The end-of-turn tokens llama.cpp records besides EOS (`tokenizer.ggml.eot_token_id`, `eom_token_id`)."""
    ids = {field(f"tokenizer.ggml.{name}_token_id", None) for name in ("eos", "eot", "eom")}
    return tuple(sorted(int(i) for i in ids if i is not None))
