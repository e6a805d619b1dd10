"""Llama 3.x, Mistral, Qwen2/2.5 and Qwen3 against transformers' own classes (torch, CPU, float32).

Each family's tiny random model (tests/_families.py: weights x8, random biases and norm scales) is
loaded from its Hugging Face directory (sharded safetensors) and from the GGUF file llama.cpp's
converter would write for it. pass-jax's logits must equal transformers' at every position of a
prompt (max abs difference < 1e-4; measured about 1e-6), greedy decoding must equal transformers'
`generate` token for token, and every PaSS variant (calls 1 and 2, a chain and trees, one of them wide
enough that drafts are accepted) must equal pass-jax's ar. Checkpoints with options pass-jax does not implement are refused in one line.
Run with -s to see the parity table rows (`PARITY family source ...`).
"""
from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _families import FAMILIES, make_model, write_gguf  # noqa: E402
from pass_jax import families as families_lib  # noqa: E402
from pass_jax import lookahead as lookahead_lib  # noqa: E402
from pass_jax.decoding import DecodeError, DecodeSpec, check_context, decode_jit  # noqa: E402
from pass_jax.iteration import Iteration  # noqa: E402
from pass_jax.generate import Generator, GenerationError, bucket_width  # noqa: E402
from pass_jax.loading import LoadError, load_model  # noqa: E402
from pass_jax.model import causal_mask, forward  # noqa: E402
from pass_jax.sampling import GREEDY  # noqa: E402

TOL = 1e-4
NEW_TOKENS = 24
PROMPT = "the quick brown fox jumps over a lazy dog while parallel speculative sampling drafts 2024 café"
PASS_VARIANTS = {"calls2-chain": dict(calls=2, num_lookahead=3), "calls1-chain": dict(calls=1, num_lookahead=3),
                 "calls2-tree": dict(calls=2, draft_tree=(3, 2)), "calls1-tree": dict(calls=1, draft_tree=(2, 2)),
                 # 256 first-draft candidates of a 400-token vocabulary: untrained look-ahead vectors are still
                 # accepted most of the time, so the accepting paths are checked as well as the rejecting ones
                 "calls2-wide": dict(calls=2, draft_tree=(256,)), "calls1-wide": dict(calls=1, draft_tree=(256,))}
SEEDS = {family: i for i, family in enumerate(FAMILIES)}

forward_jit = jax.jit(forward, static_argnums=1)


@pytest.fixture(autouse=True)
def _no_model_cache(monkeypatch):
    monkeypatch.setenv("PASS_JAX_MODEL_CACHE", "0")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """family -> (HF dir, GGUF path, torch model, tokenizer), built once per module."""
    cache = {}

    def get(family):
        if family not in cache:
            root = tmp_path_factory.mktemp(family)
            path, model, tokenizer = make_model(family, root / "hf", seed=SEEDS[family])
            cache[family] = path, write_gguf(family, model, tokenizer, root / f"{family}.gguf"), model, tokenizer
        return cache[family]

    return get


def jax_logits(model, ids) -> np.ndarray:
    width = len(ids)
    logits, _ = forward_jit(model.params, model.config, jnp.asarray([ids], jnp.int32), jnp.arange(width)[None],
                            causal_mask(jnp.zeros((1,), jnp.int32), width, width))
    return np.asarray(logits[0])


def decode(model, ids, mode, lookahead=None, **variant):
    num_l = variant.pop("num_lookahead", len(variant.get("draft_tree", ())) or 1)
    width = bucket_width(len(ids), model.config.max_seq_len)
    tokens = np.zeros((1, width), np.int32)
    tokens[0, :len(ids)] = ids
    spec = DecodeSpec(model.config, Iteration.from_options(mode, num_l, **variant), max_new_tokens=NEW_TOKENS,
                      sampling=GREEDY, eos_ids=())
    if lookahead is None:
        lookahead = (jnp.zeros((1, model.config.hidden_size)) if mode == "ar" else
                     lookahead_lib.init_untrained(model.params, num_l, jax.random.key(1)))
    state = decode_jit(model.params, lookahead, jnp.asarray(tokens), jnp.asarray([len(ids)], jnp.int32),
                       jax.random.key(0), spec=spec)
    assert int(state.lengths[0]) == len(ids) + NEW_TOKENS
    return np.asarray(state.tokens[0, len(ids):len(ids) + NEW_TOKENS]).tolist(), jax.device_get(state.stats)


@torch.no_grad()
def hf_generate(model, ids) -> list[int]:
    """transformers' own greedy `generate`, with no end-of-sequence token (pass-jax decodes with none)."""
    import transformers

    config = transformers.GenerationConfig(do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                           eos_token_id=None, pad_token_id=0, bos_token_id=None)
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         generation_config=config)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("source", ["hf", "gguf"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_parity(family, source, built):
    hf_dir, gguf_path, torch_model, tokenizer = built(family)
    model = load_model(hf_dir if source == "hf" else gguf_path)
    c, hf = model.config, torch_model.config
    assert c.family == FAMILIES[family]["gguf_arch" if source == "gguf" else "config"].lower().removesuffix("config")
    assert (c.qkv_bias, c.qk_norm) == (family == "qwen2", family == "qwen3")
    assert c.tie_embeddings == bool(hf.tie_word_embeddings) and ("lm_head" in model.params) == (not c.tie_embeddings)
    assert (c.rope_scaling is not None) == (family == "llama3")
    if family == "llama3":  # from the GGUF's rope_freqs.weight too: config.json's parameters
        assert dataclasses.asdict(c.rope_scaling) == {k: v for k, v in hf.rope_parameters.items()
                                                      if k not in ("rope_type", "rope_theta")}
    assert c.head_dim == (getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads)
    assert c.rope_theta == hf.rope_parameters["rope_theta"]

    ids = tokenizer(PROMPT).input_ids
    assert model.tokenizer(PROMPT).input_ids == ids  # the GGUF's tokenizer too
    with torch.no_grad():
        expected = torch_model(torch.tensor([ids])).logits[0].numpy()
    got = jax_logits(model, ids)
    assert got.shape == expected.shape
    diff = float(np.abs(got - expected).max())
    assert diff < TOL, diff

    ar, _ = decode(model, ids, "ar")
    reference = hf_generate(torch_model, ids)
    greedy_equal = ar == reference
    pass_equal, accepted = {}, {}
    for name, variant in PASS_VARIANTS.items():
        tokens, stats = decode(model, ids, "pass", **dict(variant))
        pass_equal[name] = tokens == ar
        hist = np.asarray(stats.accepted_hist).sum(0)
        accepted[name] = int((hist * np.arange(hist.size)).sum())  # drafts accepted (untrained vectors: few)
    row = dict(family=family, source=source, max_logit_diff=diff, greedy_equal=greedy_equal,
               pass_equal=all(pass_equal.values()), accepted_drafts=accepted, logit_scale=float(np.abs(expected).max()))
    print(f"\nPARITY {json.dumps(row)}")
    assert greedy_equal, (ar, reference)
    assert all(pass_equal.values()), pass_equal


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_chat_template_and_gguf_tokenizer(family, built):
    """--chat applies the family's own template, from the HF directory and from the GGUF alike; the GGUF's
    tokenizer encodes and decodes as the directory's."""
    hf_dir, gguf_path, _, tokenizer = built(family)
    strings = [PROMPT, " leading space", "東京 café\n\nnew  lines", "x<|im_end|>y", "[INST] hi [/INST]", "3.14159",
               "def f(x):\n    return {x}\n"]
    messages = [{"role": "user", "content": "What is the quick brown fox?"}]
    expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    for path in (hf_dir, gguf_path):
        model = load_model(path)
        for s in strings:
            assert model.tokenizer(s).input_ids == tokenizer(s).input_ids, (path.name, s)
            assert model.tokenizer.decode(tokenizer(s, add_special_tokens=False).input_ids) == s
        assert model.tokenizer.eos_token == FAMILIES[family]["eos"]
        if path == hf_dir:  # generation_config.json's end tokens stop a row too
            want = {tokenizer.convert_tokens_to_ids(t) for t in FAMILIES[family].get("stops", [])}
            assert want <= set(Generator(model, mode="ar").spec.eos_ids)
        gen = Generator(model, mode="ar", chat=True, max_new_tokens=4)
        assert gen.chat
        ids = gen.encode("What is the quick brown fox?")
        assert ids == tokenizer(expected, add_special_tokens=False).input_ids
        assert model.tokenizer.decode(ids) == expected


def test_mistral_sliding_window_within_and_beyond(tmp_path):
    """Mistral v0.1's window: decodes that stay inside it equal transformers; one that would pass it is
    refused in one line that names the window."""
    path, torch_model, tokenizer = make_model("mistral", tmp_path / "m", seed=7, sliding_window=64)
    model = load_model(path)
    assert model.config.sliding_window == 64
    ids = tokenizer(PROMPT).input_ids
    with torch.no_grad():
        expected = torch_model(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(jax_logits(model, ids) - expected).max() < TOL
    gen = Generator(model, mode="ar", max_new_tokens=NEW_TOKENS)
    assert gen.encode(PROMPT) == ids
    gen = Generator(model, mode="ar", max_new_tokens=60)
    with pytest.raises(GenerationError, match="sliding attention window of 64 tokens") as err:
        gen.encode(PROMPT)
    assert "\n" not in str(err.value)
    spec = DecodeSpec(model.config, Iteration.chain(3, calls=2), max_new_tokens=60, sampling=GREEDY)
    with pytest.raises(DecodeError, match="sliding attention window of 64 tokens"):
        check_context(spec, len(ids))


def _hf_dir_with(tmp_path, family, **config_changes):
    path, _, _ = make_model(family, tmp_path / family, shard=False)
    config = json.loads((path / "config.json").read_text())
    config.update(config_changes)
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("family, changes, message", [
    ("qwen2", dict(use_sliding_window=True, sliding_window=32, max_window_layers=1), "sliding-window layers"),
    ("qwen3", dict(attention_bias=True), "attention_bias in a qwen3"),
    ("mistral", dict(attention_bias=True), "attention_bias in a mistral"),
    ("llama3", dict(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4,
                                     "original_max_position_embeddings": 64}), "rope scaling 'yarn'"),
    ("qwen2", dict(hidden_act="gelu"), "activation 'gelu'"),
])
def test_unimplemented_hf_options_are_refused(tmp_path, family, changes, message):
    path = _hf_dir_with(tmp_path, family, **changes)
    with pytest.raises(LoadError, match=message) as err:
        load_model(path)
    assert "\n" not in str(err.value)


def test_unimplemented_gguf_layouts_are_refused(tmp_path, built):
    import gguf

    _, _, model, tokenizer = built("qwen3")
    for arch, tensors, message in [("gemma2", {}, "unsupported GGUF architecture 'gemma2'"),
                                   ("llama", {"blk.0.attn_q.bias": np.zeros(4, np.float32)}, "biases in a 'llama'"),
                                   ("qwen3", {}, "q/k norms missing from a 'qwen3' file")]:
        path = tmp_path / f"{arch}.gguf"
        writer = gguf.GGUFWriter(str(path), arch)
        for key, value in (("context_length", 64), ("embedding_length", 64), ("block_count", 1),
                           ("feed_forward_length", 128), ("attention.head_count", 4)):
            writer.add_uint32(f"{arch}.{key}", value)
        writer.add_tensor("token_embd.weight", np.zeros((16, 64), np.float32))
        for name, value in tensors.items():
            writer.add_tensor(name, value)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with pytest.raises(LoadError, match=message) as err:
            load_model(path)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("theta, head_dim, scaling", [
    (500000.0, 128, dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                         original_max_position_embeddings=8192)),   # Llama 3.1 8B
    (500000.0, 64, dict(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                        original_max_position_embeddings=8192)),    # Llama 3.2 1B
    (50000.0, 16, dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                       original_max_position_embeddings=32)),       # one medium frequency only
])
def test_rope_freqs_recover_llama3_scaling(theta, head_dim, scaling):
    """llama.cpp stores Llama-3 scaling as per-frequency divisors; the recovered parameters give the same
    frequencies as the originals (the parameters themselves are not unique)."""
    from pass_jax.config import LlamaConfig
    from pass_jax.model import rope_inv_freq

    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2) / head_dim)
    factors = families_lib._llama3_factors(inv_freq, scaling).astype(np.float32)
    recovered = families_lib.rope_scaling_from_factors(factors, theta, head_dim)
    base = dict(vocab_size=8, hidden_size=head_dim * 2, num_layers=1, num_heads=2, num_kv_heads=2,
                intermediate_size=8, rope_theta=theta)
    want = rope_inv_freq(LlamaConfig(**base, rope_scaling=scaling))
    got = rope_inv_freq(LlamaConfig(**base, rope_scaling=recovered))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-6)
    if head_dim >= 64:  # enough frequencies between the bounds: Llama 3.x's own parameters come back
        assert recovered == scaling
    with pytest.raises(families_lib.FamilyError, match="does not follow Llama-3"):
        families_lib.rope_scaling_from_factors(factors * np.linspace(1, 1.5, factors.size, dtype=np.float32),
                                               theta, head_dim)


def test_converted_and_cached_family_models_keep_their_options(built, tmp_path, monkeypatch):
    """`pass-jax convert` output and the GGUF float32 cache entry reload with the family's options."""
    from pass_jax.loading import save_converted

    hf_dir, gguf_path, _, tokenizer = built("qwen2")
    ids = tokenizer(PROMPT).input_ids
    original = load_model(hf_dir)
    save_converted(original, tmp_path / "converted")
    converted = load_model(tmp_path / "converted")
    assert converted.config == original.config and converted.config.qkv_bias
    np.testing.assert_array_equal(jax_logits(converted, ids), jax_logits(original, ids))

    _, gguf_path, _, tokenizer = built("qwen3")
    monkeypatch.setenv("PASS_JAX_MODEL_CACHE", "1")
    monkeypatch.setenv("PASS_JAX_CACHE", str(tmp_path / "cache"))
    first, second = load_model(gguf_path), load_model(gguf_path)  # the second from the cache entry
    assert "float32 cache" not in first.source and second.config == first.config and second.config.qk_norm
    assert any((tmp_path / "cache").rglob("pass_jax.json"))
    ids = tokenizer(PROMPT).input_ids
    np.testing.assert_array_equal(jax_logits(second, ids), jax_logits(first, ids))
    assert second.tokenizer(PROMPT).input_ids == ids


def test_mistral_v01_gguf_gets_its_window(tmp_path, built):
    """llama.cpp writes Mistral-7B as `llama` without the window; a v0.1 file is recognised by its names."""
    from pass_jax.families import gguf_config_values

    fields = {"general.architecture": "llama", "general.basename": "Mistral", "general.version": "v0.1",
              "llama.embedding_length": 64, "llama.attention.head_count": 4, "llama.block_count": 1,
              "llama.feed_forward_length": 128, "llama.context_length": 32768}
    tensors = {"token_embd.weight": np.zeros((64, 16))}
    assert gguf_config_values(lambda k, d=None: fields.get(k, d), tensors)["sliding_window"] == 4096
    fields["general.version"] = "v0.3"
    assert "sliding_window" not in gguf_config_values(lambda k, d=None: fields.get(k, d), tensors)


def test_training_past_a_sliding_window_is_refused():
    from pass_jax.config import ConfigError, load_preset
    from pass_jax.train.loop import check_window

    config = load_preset("mistral_7b").replace(sliding_window=4096)
    check_window(config, 4088, 8)
    with pytest.raises(ConfigError, match="sliding attention window of 4096 tokens.*data.seq_len <= 4088"):
        check_window(config, 4089, 8)
    check_window(load_preset("mistral_7b"), 100_000, 8)  # v0.2 on: no window
