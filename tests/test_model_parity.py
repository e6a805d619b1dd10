"""Logits and greedy-decoding parity with `transformers.LlamaForCausalLM` (torch, CPU, float32).

Thresholds: tiny random models, max abs logit difference < 1e-4 (measured ~1e-6); the bundled
SmolLM2 GGUF against transformers' own GGUF loader, < 1e-3 (measured ~1.5e-4). Greedy decoding
of 32 new tokens must be identical in both cases.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pass_jax.decoding import DecodeSpec, decode_jit  # noqa: E402
from pass_jax.iteration import Iteration  # noqa: E402
from pass_jax.loading import bundled_gguf_path, load_model  # noqa: E402
from pass_jax.model import causal_mask, forward  # noqa: E402
from pass_jax.sampling import GREEDY  # noqa: E402

TINY_TOL = 1e-4
GGUF_TOL = 1e-3
NEW_TOKENS = 32

forward_jit = jax.jit(forward, static_argnums=1)

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 50000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32}

# transformers.LlamaConfig overrides on top of the conftest defaults (hidden 64, 4 heads, 2 KV heads, 2 layers).
VARIANTS = {
    "mha_untied": dict(num_key_value_heads=4),
    "gqa_untied": dict(num_key_value_heads=2, num_hidden_layers=3),
    "gqa_tied": dict(num_key_value_heads=1, tie_word_embeddings=True),
    "llama3_rope": dict(num_key_value_heads=2, rope_parameters=LLAMA3_ROPE),
    "head_dim_32": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=32, rope_theta=500.0),
}


def jax_logits(model, ids) -> np.ndarray:
    tokens = jnp.asarray([ids], jnp.int32)
    width = len(ids)
    logits, cache = forward_jit(model.params, model.config, tokens, jnp.arange(width)[None],
                                causal_mask(jnp.zeros((1,), jnp.int32), width, width))
    assert cache is None
    return np.asarray(logits[0])


def jax_greedy(model, ids, new_tokens=NEW_TOKENS) -> list[int]:
    spec = DecodeSpec(model.config, Iteration.AR, max_new_tokens=new_tokens, sampling=GREEDY, eos_ids=())
    state = decode_jit(model.params, None, jnp.asarray([ids], jnp.int32), jnp.asarray([len(ids)], jnp.int32),
                       jax.random.key(0), spec)
    assert int(state.lengths[0]) == len(ids) + new_tokens
    return np.asarray(state.tokens[0, len(ids):len(ids) + new_tokens]).tolist()


@torch.no_grad()
def torch_greedy(model, ids, new_tokens=NEW_TOKENS) -> list[int]:
    """Argmax with transformers' KV cache; no EOS handling, so nothing stops early."""
    out = model(torch.tensor([ids]), use_cache=True)
    result = []
    for _ in range(new_tokens):
        token = int(out.logits[0, -1].argmax())
        result.append(token)
        out = model(torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
    return result


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_tiny_hf_llama_parity(variant, make_hf_llama, sp_tokenizer, tmp_path):
    path, torch_model = make_hf_llama(tmp_path / variant, seed=sorted(VARIANTS).index(variant), **VARIANTS[variant])
    model = load_model(path)
    hf = torch_model.config
    c = model.config
    assert (c.num_heads, c.num_kv_heads, c.num_layers, c.vocab_size) == (
        hf.num_attention_heads, hf.num_key_value_heads, hf.num_hidden_layers, len(sp_tokenizer))
    assert c.tie_embeddings == bool(hf.tie_word_embeddings)
    assert ("lm_head" in model.params) == (not c.tie_embeddings)
    assert c.head_dim == VARIANTS[variant].get("head_dim", 16)
    assert (c.rope_scaling is not None) == (variant == "llama3_rope")
    assert c.rope_theta == hf.rope_parameters["rope_theta"]
    assert model.tokenizer is not None and len(model.tokenizer) == c.vocab_size

    ids = [sp_tokenizer.bos_token_id] + sp_tokenizer("the quick brown fox jumps over a lazy dog").input_ids
    assert len(ids) > 8
    with torch.no_grad():
        expected = torch_model(torch.tensor([ids])).logits[0].numpy()
    got = jax_logits(model, ids)
    diff = float(np.abs(got - expected).max())
    print(f"{variant}: max abs logit diff {diff:.3g} (logit scale {np.abs(expected).max():.3g})")
    assert got.shape == expected.shape
    assert diff < TINY_TOL

    assert jax_greedy(model, ids) == torch_greedy(torch_model, ids)


def test_llama3_rope_scaling_matters(make_hf_llama, tmp_path):
    """The llama3 variant's frequencies are really rescaled: dropping the scaling breaks parity."""
    path, torch_model = make_hf_llama(tmp_path / "m", seed=3, rope_parameters=LLAMA3_ROPE)
    scaled = load_model(path)
    unscaled = load_model(path, rope_scaling=None)
    ids = list(range(3, 40))
    with torch.no_grad():
        expected = torch_model(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(jax_logits(scaled, ids) - expected).max() < TINY_TOL
    assert np.abs(jax_logits(unscaled, ids) - expected).max() > 100 * TINY_TOL


@pytest.fixture(scope="module")
def smollm2_torch():
    import transformers

    path = bundled_gguf_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                              dtype=torch.float32)
    return model.eval()


def test_smollm2_gguf_parity(smollm2, smollm2_torch):
    ids = smollm2.tokenizer("The capital of France is Paris, and the capital of Germany is").input_ids
    with torch.no_grad():
        expected = smollm2_torch(torch.tensor([ids])).logits[0].numpy()
    got = jax_logits(smollm2, ids)
    diff = float(np.abs(got - expected).max())
    print(f"smollm2 GGUF: max abs logit diff {diff:.3g} (logit scale {np.abs(expected).max():.3g})")
    assert diff < GGUF_TOL
    assert int(got[-1].argmax()) == smollm2.tokenizer.encode(" Berlin")[0]

    jax_tokens = jax_greedy(smollm2, ids)
    assert jax_tokens == torch_greedy(smollm2_torch, ids)
    assert smollm2.tokenizer.decode(jax_tokens).startswith(" Berlin")
