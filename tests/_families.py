"""Tiny random models of each supported family, built with transformers' own classes, saved as a
Hugging Face directory (safetensors, sharded) and as GGUF the way llama.cpp's convert_hf_to_gguf.py
writes that family (tensor names, metadata keys, Q/K permutation for `llama`, `rope_freqs.weight`
for Llama-3 RoPE scaling), each with a byte-level BPE tokenizer trained on the fly and the family's
chat template.
"""
from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np

# The pre-tokenizer splits of Llama 3 and Qwen2 (as their tokenizer.json files and llama.cpp have them).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
QWEN3_TEMPLATE = CHATML_TEMPLATE.replace("<|im_start|>assistant\n{% endif %}",
                                         "<|im_start|>assistant\n<think>\n\n</think>\n\n{% endif %}")
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 50000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}

# family -> how its tiny model, tokenizer and GGUF look. `hf`: transformers config overrides on the
# shared shape (hidden 64, 4 heads, 2 layers, MLP 128).
FAMILIES = {
    "llama3": dict(
        config="LlamaConfig", model="LlamaForCausalLM", gguf_arch="llama", pre="llama-bpe", split=LLAMA3_SPLIT,
        specials=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        bos="<|begin_of_text|>", eos="<|eot_id|>", stops=["<|end_of_text|>", "<|eot_id|>"], add_bos=True,
        template=LLAMA3_TEMPLATE,
        hf=dict(num_key_value_heads=2, head_dim=32, rope_parameters=LLAMA3_ROPE, tie_word_embeddings=True)),
    "mistral": dict(
        config="MistralConfig", model="MistralForCausalLM", gguf_arch="llama", pre="llama-bpe", split=LLAMA3_SPLIT,
        specials=["<unk>", "<s>", "</s>", "[INST]", "[/INST]"], bos="<s>", eos="</s>", add_bos=True,
        template=MISTRAL_TEMPLATE,
        hf=dict(num_key_value_heads=1, sliding_window=None, rope_theta=1e6, tie_word_embeddings=False)),
    "qwen2": dict(
        config="Qwen2Config", model="Qwen2ForCausalLM", gguf_arch="qwen2", pre="qwen2", split=QWEN2_SPLIT,
        specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], bos=None, eos="<|im_end|>", add_bos=False,
        stops=["<|im_end|>", "<|endoftext|>"], template=CHATML_TEMPLATE,
        hf=dict(num_key_value_heads=2, rope_theta=1e6, tie_word_embeddings=True, use_sliding_window=False)),
    "qwen3": dict(
        config="Qwen3Config", model="Qwen3ForCausalLM", gguf_arch="qwen3", pre="qwen2", split=QWEN2_SPLIT,
        specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"], bos=None,
        eos="<|im_end|>", add_bos=False, template=QWEN3_TEMPLATE,
        hf=dict(num_key_value_heads=2, head_dim=32, rope_theta=1e6, tie_word_embeddings=False,
                use_sliding_window=False)),
}

WORDS = ("the quick brown fox jumps over a lazy dog while parallel speculative sampling drafts several tokens "
         "with look ahead embeddings and the model validates them in one call of jax flax llama mistral qwen "
         "cache mesh shard tensor data batch prompt greedy 2024 3.14 café 東京 def return (x) {y}").split()
SCALE = 8.0  # random weights x8: well-separated greedy paths


def corpus(seed: int = 0, lines: int = 400) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(lines)]


def make_tokenizer(family: str, vocab_size: int = 400):
    """A byte-level BPE (the Llama 3 / Qwen kind) with the family's special tokens, split and chat template."""
    import transformers
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    spec = FAMILIES[family]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(spec["split"]), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=spec["specials"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    if spec["add_bos"]:
        bos = spec["bos"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=spec["bos"], eos_token=spec["eos"], chat_template=spec["template"],
        unk_token="<unk>" if "<unk>" in spec["specials"] else None)


def make_model(family: str, path: Path, seed: int = 0, shard: bool = True, **overrides):
    """Save a random transformers model of `family` (weights x SCALE, random biases and norm scales) and
    its tokenizer into `path`, sharded into several safetensors files. Returns (path, torch model, tokenizer)."""
    import torch
    import transformers

    spec = FAMILIES[family]
    tokenizer = make_tokenizer(family)
    values = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=1024, rms_norm_eps=1e-6,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    values.update(spec["hf"])
    values.update(overrides)
    torch.manual_seed(seed)
    config = getattr(transformers, spec["config"])(**values)
    model = getattr(transformers, spec["model"])(config).eval()
    if "stops" in spec:  # an instruct model's generation_config.json lists every end-of-turn token
        model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids(t) for t in spec["stops"]]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.mul_(SCALE)
    path = Path(path)
    model.save_pretrained(path, safe_serialization=True, max_shard_size="100KB" if shard else "10GB")
    tokenizer.save_pretrained(path)
    return path, model, tokenizer


def _llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's LlamaModel.permute (convert_hf_to_gguf.py): Q/K rows for its interleaved RoPE."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama3_rope_factors(hf) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.generate_extra_tensors: the `rope_freqs.weight` divisors."""
    rope = hf.rope_parameters
    base, dim = rope["rope_theta"], hf.head_dim
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old = rope["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old / low, old / high
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, np.float32)


def write_gguf(family: str, model, tokenizer, path: Path, dtype: str = "f32") -> Path:
    """The model and tokenizer as llama.cpp's converter writes this family (f32 or f16 matrices)."""
    import gguf

    spec = FAMILIES[family]
    arch = spec["gguf_arch"]
    hf = model.config
    heads, kv = hf.num_attention_heads, hf.num_key_value_heads
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // heads
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(f"tiny-{family}")
    writer.add_context_length(hf.max_position_embeddings)
    writer.add_embedding_length(hf.hidden_size)
    writer.add_block_count(hf.num_hidden_layers)
    writer.add_feed_forward_length(hf.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv)
    writer.add_rope_freq_base(float(hf.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(hf.rms_norm_eps)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    if head_dim != hf.hidden_size // heads:  # the converter writes these when config.json has head_dim
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if arch == "llama":
        writer.add_vocab_size(hf.vocab_size)
        writer.add_rope_dimension_count(head_dim)
    # tokenizer: gpt2 (byte-level BPE), its pre-tokenizer name, merges, control tokens
    vocab = tokenizer.get_vocab()
    tokens = [None] * len(vocab)
    for token, index in vocab.items():
        tokens[index] = token
    specials = set(spec["specials"])
    merges = [" ".join(m) if isinstance(m, (list, tuple)) else m
              for m in __import__("json").loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(spec["pre"])
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges(merges)
    if spec["bos"] is not None:
        writer.add_bos_token_id(vocab[spec["bos"]])
    writer.add_eos_token_id(vocab[spec["eos"]])
    writer.add_add_bos_token(spec["add_bos"])
    writer.add_chat_template(spec["template"])

    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}

    def add(name: str, w: np.ndarray):
        matrix = w.ndim == 2
        writer.add_tensor(name, w.astype(np.float16 if matrix and dtype == "f16" else np.float32))

    if getattr(hf, "rope_parameters", {}).get("rope_type") == "llama3":
        add("rope_freqs.weight", _llama3_rope_factors(hf))
    add("token_embd.weight", state["model.embed_tokens.weight"])
    add("output_norm.weight", state["model.norm.weight"])
    if not hf.tie_word_embeddings:
        add("output.weight", state["lm_head.weight"])
    for i in range(hf.num_hidden_layers):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        q, k = state[p + "self_attn.q_proj.weight"], state[p + "self_attn.k_proj.weight"]
        if arch == "llama":
            q, k = _llama_permute(q, heads), _llama_permute(k, kv)
        add(b + "attn_norm.weight", state[p + "input_layernorm.weight"])
        add(b + "attn_q.weight", q)
        add(b + "attn_k.weight", k)
        add(b + "attn_v.weight", state[p + "self_attn.v_proj.weight"])
        add(b + "attn_output.weight", state[p + "self_attn.o_proj.weight"])
        if arch == "qwen2":
            for x in "qkv":
                add(b + f"attn_{x}.bias", state[p + f"self_attn.{x}_proj.bias"])
        if arch == "qwen3":
            add(b + "attn_q_norm.weight", state[p + "self_attn.q_norm.weight"])
            add(b + "attn_k_norm.weight", state[p + "self_attn.k_norm.weight"])
        add(b + "ffn_norm.weight", state[p + "post_attention_layernorm.weight"])
        add(b + "ffn_gate.weight", state[p + "mlp.gate_proj.weight"])
        add(b + "ffn_up.weight", state[p + "mlp.up_proj.weight"])
        add(b + "ffn_down.weight", state[p + "mlp.down_proj.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)
