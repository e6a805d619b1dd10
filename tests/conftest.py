"""Shared session fixtures: the tiny random model, the bundled SmolLM2 (loaded once) and tiny HF checkpoints."""
from __future__ import annotations

import random
from pathlib import Path

import jax
import pytest

SP_WORDS = ("the quick brown fox jumps over a lazy dog while parallel speculative sampling drafts several "
            "tokens with look ahead embeddings and the model validates them in one call of jax flax llama "
            "cache mesh shard tensor data batch prompt greedy").split()


@pytest.fixture(scope="session")
def tiny():
    """(config, params) of the `tiny` preset with random weights."""
    from pass_jax.config import load_preset
    from pass_jax.model import init_params

    config = load_preset("tiny")
    return config, jax.jit(init_params, static_argnums=0)(config, jax.random.key(0))  # jit: 2x faster than eager


@pytest.fixture(scope="session")
def smollm2():
    """The bundled SmolLM2-135M-Instruct as a `pass_jax.loading.LoadedModel` (float32 on CPU)."""
    from pass_jax.loading import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def sp_tokenizer(tmp_path_factory):
    """A LLaMA SentencePiece tokenizer (~160 pieces) trained on the fly on generated text."""
    import sentencepiece as spm
    import transformers

    root = tmp_path_factory.mktemp("sp_tokenizer")
    rng = random.Random(0)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(SP_WORDS) for _ in range(12)) for _ in range(400)))
    (root / "model").mkdir()
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(root / "model" / "tokenizer"),
                                   vocab_size=160, model_type="bpe", character_coverage=1.0,
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    # transformers 5 converts a `tokenizer.model` SentencePiece file when loading from a directory.
    tokenizer = transformers.LlamaTokenizer.from_pretrained(root / "model")
    assert len(tokenizer) == 160 and tokenizer.bos_token_id == 1
    return tokenizer


@pytest.fixture(scope="session")
def make_hf_llama(sp_tokenizer):
    """Factory: save a random `transformers.LlamaForCausalLM` (fixed seed) plus the tokenizer into a dir.

    Returns (path, torch_model). Keyword arguments go to `transformers.LlamaConfig`.
    """
    import torch
    import transformers

    def make(path: Path, seed: int = 0, **overrides):
        values = dict(vocab_size=len(sp_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      rms_norm_eps=1e-5, initializer_range=0.1, tie_word_embeddings=False)
        values.update(overrides)
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**values)).eval()
        model.save_pretrained(path, safe_serialization=True)
        sp_tokenizer.save_pretrained(path)
        return Path(path), model

    return make
