"""Guards against silently wrong output (issue 15): NaN in masked cache slots, non-finite look-ahead
parameters, the context limit's stated numbers (and its check for direct callers), the batch never larger than the prompts, and the
bundled model's identity surviving `convert`."""
from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pass_jax import decoding
from pass_jax import lookahead as lookahead_lib
from pass_jax.decoding import DecodeSpec
from pass_jax.iteration import Iteration
from pass_jax.generate import GenerationError, Generator
from pass_jax.loading import DEFAULT_MODEL, LoadedModel, load_model, save_converted
from pass_jax.sampling import GREEDY, PAPER


class WordTokenizer:
    """One token per word (ids 3..), enough for `Generator` on the tiny preset."""

    eos_token_id = None
    chat_template = None

    def __call__(self, text):
        return {"input_ids": [3 + len(word) % 100 for word in text.split()]}

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


@pytest.mark.parametrize("mode, sampling", [("ar", GREEDY), ("pass", PAPER)])
def test_nan_in_stale_cache_slots_changes_no_token(tiny, monkeypatch, mode, sampling):
    """Masked slots get probability 0, and 0 * NaN = NaN: the attention must not multiply them in."""
    config, params = tiny
    spec = DecodeSpec(config, Iteration.from_options(mode, 3, calls=2), max_new_tokens=12, sampling=sampling)
    prompts = jnp.asarray([[5, 6, 7, 8, 0, 0, 0, 0], [9, 10, 11, 12, 13, 14, 15, 16]], jnp.int32)
    lengths = jnp.asarray([4, 8], jnp.int32)
    lookahead = lookahead_lib.init_random(config, 3, jax.random.key(1))

    def tokens():  # a fresh function each time, so the patched cache is traced in
        run = jax.jit(lambda *args: decoding.decode(*args, spec=spec))
        state = run(params, lookahead, prompts, lengths, jax.random.key(0))
        return np.asarray(state.tokens), np.asarray(state.lengths)

    clean = tokens()
    filled = []

    def nan_cache(*args, **kwargs):  # every slot holds NaN until the decode writes it
        filled.append(True)
        return jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), decoding_init_cache(*args, **kwargs))

    decoding_init_cache = decoding.init_cache
    monkeypatch.setattr(decoding, "init_cache", nan_cache)
    poisoned = tokens()
    assert filled
    np.testing.assert_array_equal(poisoned[1], clean[1])
    for row, length in enumerate(clean[1]):
        np.testing.assert_array_equal(poisoned[0][row, :length], clean[0][row, :length])


def test_non_finite_lookahead_is_never_saved(tmp_path):
    vectors = np.zeros((2, 64), np.float32)
    vectors[1, 3] = np.inf
    with pytest.raises(lookahead_lib.LookaheadError, match="refusing to save .* 1 non-finite values"):
        lookahead_lib.save(tmp_path / "x.npz", vectors, {"note": "diverged"})
    assert list(tmp_path.iterdir()) == []


def test_context_error_states_the_real_limit(tiny):
    config, params = tiny
    model = LoadedModel(config.replace(max_seq_len=64), params, WordTokenizer(), "tiny")
    generator = Generator(model, mode="pass", num_lookahead=3, calls=2, max_new_tokens=20)
    margin = generator.iteration.width + 1  # the drafting call [x_n, LA_1..LA_3]: width 4
    room = 64 - 20 - margin
    assert len(generator.encode("w " * room)) == room  # the stated room fits exactly
    with pytest.raises(GenerationError) as error:
        generator.encode("w " * (room + 1))
    numbers = [int(n) for n in re.findall(r"\d+", str(error.value))]
    prompt, budget, stated_margin, total, limit, stated_room = numbers
    assert (prompt, budget, stated_margin, limit, stated_room) == (room + 1, 20, margin, 64, room)
    assert prompt + budget + stated_margin == total > limit


def test_direct_callers_get_the_context_check(tiny):
    """generate_ids and decode_jit, called without encode, refuse a prompt that leaves no room in the
    context (they used to decode past it without a word); one that fits runs."""
    config, params = tiny
    model = LoadedModel(config.replace(max_seq_len=64), params, WordTokenizer(), "tiny")
    generator = Generator(model, mode="ar", max_new_tokens=20)
    room = 64 - 20 - generator.iteration.overshoot
    with pytest.raises(GenerationError, match=f"prompt of {room + 1} tokens .* exceeds the model's context of 64"):
        generator.generate_ids([[5] * 3, [5] * (room + 1)])
    tokens = np.full((1, room + 1), 5, np.int32)
    with pytest.raises(decoding.DecodeError, match=f"leave room for {room} prompt tokens"):
        decoding.decode_jit(params, None, tokens, np.asarray([room + 1], np.int32), jax.random.key(0),
                            generator.spec)
    state, _ = generator.generate_ids([[5] * room])
    assert int(state.lengths[0]) == room + 20


def test_batch_is_never_larger_than_the_prompts(tiny):
    config, params = tiny
    generator = Generator(LoadedModel(config, params, WordTokenizer(), "tiny"), mode="ar", max_new_tokens=3,
                          batch_size=4)
    results, _ = generator.generate(["one two three"])
    assert len(results) == 1 and len(results[0].tokens) == 3
    assert [batch for batch, _ in generator._compiled] == [1]


def test_converted_bundled_model_keeps_its_shipped_vectors(smollm2, make_hf_llama, tmp_path):
    """The identity comes from the GGUF metadata, survives `convert`, and picks the shipped vectors."""
    assert smollm2.identity == DEFAULT_MODEL
    hf_dir, _ = make_hf_llama(tmp_path / "hf")
    other = load_model(hf_dir)
    assert other.identity is None and lookahead_lib.resolve_path("default", other.identity) is None
    as_bundled = dataclasses.replace(other, identity=DEFAULT_MODEL)  # a small stand-in for a copy of SmolLM2
    save_converted(as_bundled, tmp_path / "converted")
    copy = load_model(tmp_path / "converted")
    assert copy.identity == DEFAULT_MODEL
    assert lookahead_lib.resolve_path("default", copy.identity) == lookahead_lib.bundled_path("text")
