"""PaSS decoding: exactness (greedy and sampled), ragged batches, invariants, recompilation."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pass_jax import lookahead as lookahead_lib
from pass_jax import sampling as sampling_lib
from pass_jax.config import load_preset
from pass_jax.decoding import DecodeSpec, decode_jit
from pass_jax.generate import Generator, bucket_width
from pass_jax.loading import LoadedModel
from pass_jax.model import causal_mask, forward, init_params
from pass_jax.sampling import GREEDY, SamplingConfig


@pytest.fixture(scope="module")
def tiny_lm():
    config = load_preset("tiny")
    return config, init_params(config, jax.random.key(1))


def run(config, params, lookahead, prompts, mode, num_lookahead, max_new, sampling=GREEDY, seed=0, eos=()):
    width = bucket_width(max(len(p) for p in prompts), config.max_seq_len)
    tokens = np.zeros((len(prompts), width), np.int32)
    for row, p in enumerate(prompts):
        tokens[row, :len(p)] = p
    lengths = jnp.asarray([len(p) for p in prompts], jnp.int32)
    if lookahead is None:  # autoregressive: the loop never reads it
        lookahead = jnp.zeros((1, config.hidden_size))
    spec = DecodeSpec(config, mode=mode, num_lookahead=num_lookahead, max_new_tokens=max_new,
                      sampling=sampling, eos_ids=eos)
    state = decode_jit(params, lookahead, jnp.asarray(tokens), lengths, jax.random.key(seed), spec=spec)
    out = [np.asarray(state.tokens[r, len(p):int(state.lengths[r])]) for r, p in enumerate(prompts)]
    return out, jax.device_get(state.stats)


PROMPTS = [[5, 17, 3], [9, 1, 44, 2, 7, 100, 12], list(range(20, 40))]


@pytest.mark.parametrize("num_lookahead", [1, 5])
def test_greedy_pass_equals_ar_tiny(tiny_lm, num_lookahead):
    config, params = tiny_lm
    ar, ar_stats = run(config, params, None, PROMPTS, "ar", 1, 40)
    assert all(len(row) == 40 for row in ar)
    assert (ar_stats.model_calls == 40).all() and (ar_stats.new_tokens == 40).all()
    untrained = lookahead_lib.init_untrained(params, num_lookahead, jax.random.key(2))
    random = lookahead_lib.init_random(config, num_lookahead, jax.random.key(3), scale=1.0)
    for vectors in (untrained, random):  # drafts change the speed, never the tokens
        pss, _ = run(config, params, vectors, PROMPTS, "pass", num_lookahead, 40)
        for a, b in zip(ar, pss):
            np.testing.assert_array_equal(b, a)


def test_greedy_pass_accepts_good_drafts(tiny_lm):
    """A draft that is always right (p == q) must be accepted: check acceptance moves with the drafts."""
    config, params = tiny_lm
    la = lookahead_lib.init_untrained(params, 4, jax.random.key(2))
    _, stats = run(config, params, la, [PROMPTS[0]], "pass", 4, 40)
    # untrained drafts on a random model are mostly rejected, yet each iteration commits >= 2 tokens
    iterations = stats.accepted_hist[0].sum()
    assert stats.model_calls[0] == 2 * iterations + 1


def test_ragged_batch_rows_equal_unbatched(tiny_lm):
    config, params = tiny_lm
    la = lookahead_lib.init_random(config, 4, jax.random.key(4), scale=1.0)
    batched, _ = run(config, params, la, PROMPTS, "pass", 4, 30)
    for prompt, row in zip(PROMPTS, batched):
        single, _ = run(config, params, la, [prompt], "pass", 4, 30)
        np.testing.assert_array_equal(row, single[0])


def test_pass_invariants_and_eos(tiny_lm):
    config, params = tiny_lm
    la = lookahead_lib.init_random(config, 3, jax.random.key(5), scale=1.0)
    sampling = SamplingConfig(temperature=1.0, top_k=None)
    out, stats = run(config, params, la, PROMPTS, "pass", 3, 50, sampling=sampling, seed=7)
    for row in range(len(PROMPTS)):
        hist = stats.accepted_hist[row]
        iterations = hist.sum()
        untruncated = 1 + int((hist * (np.arange(len(hist)) + 2)).sum())  # prefill token + (A + 2) per iteration
        assert stats.model_calls[row] == 2 * iterations + 1
        assert untruncated >= stats.model_calls[row]  # never less than one token per call
        assert stats.new_tokens[row] == min(50, untruncated) == len(out[row])
        assert (stats.position_accepted[row] <= stats.position_reached[row]).all()
    # EOS: a row stops right after the first EOS it commits
    eos = int(out[0][5])
    out_eos, _ = run(config, params, la, PROMPTS[:1], "pass", 3, 50, sampling=sampling, seed=7, eos=(eos,))
    first = int(np.argmax(out[0] == eos))
    np.testing.assert_array_equal(out_eos[0], out[0][:first + 1])


def test_greedy_pass_equals_ar_smollm2(smollm2):
    prompts = ["The capital of France is", "def fibonacci(n):\n    ", "In 1905, Albert Einstein published"]
    ids = [list(smollm2.tokenizer(p)["input_ids"]) for p in prompts]
    la = lookahead_lib.init_untrained(smollm2.params, 4, jax.random.key(0))
    ar, _ = run(smollm2.config, smollm2.params, None, ids, "ar", 1, 24)
    pss, stats = run(smollm2.config, smollm2.params, la, ids, "pass", 4, 24)
    for a, b in zip(ar, pss):
        np.testing.assert_array_equal(a, b)
    assert stats.model_calls.max() < 24 * 2


# --- the rejection rule -------------------------------------------------------------------------

def test_acceptance_and_residual_by_exact_enumeration():
    """sum_d q(d) [alpha(d) 1{x=d} + (1 - alpha(d)) r(x)] == p(x), for random p, q incl. zeros."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = rng.dirichlet(np.ones(6) * 0.5)
        q = rng.dirichlet(np.ones(6) * 0.5)
        p[rng.integers(6)] = 0
        q[rng.integers(6)] = 0
        p, q = p / p.sum(), q / q.sum()
        alpha = np.asarray(sampling_lib.acceptance_probability(jnp.asarray(p), jnp.asarray(q)))
        residual = np.asarray(sampling_lib.residual_distribution(jnp.asarray(p), jnp.asarray(q)))
        out = q * alpha + np.sum(q * (1 - alpha)) * residual
        np.testing.assert_allclose(out, p, atol=1e-6)
    same = jnp.asarray([0.2, 0.8])  # p == q: no rejection mass, residual falls back to p
    np.testing.assert_allclose(sampling_lib.residual_distribution(same, same), same)


def test_verify_edge_cases():
    key = jax.random.key(0)
    p = jnp.asarray([[[0.0, 1.0, 0.0]] * 3])  # target always says token 1
    drafts_right = jnp.asarray([[1, 1]])
    accepted, nxt, flags = sampling_lib.verify(key, drafts_right, jax.nn.one_hot(drafts_right, 3), p)
    assert int(accepted[0]) == 2 and int(nxt[0]) == 1 and flags.all()
    drafts_wrong = jnp.asarray([[2, 1]])
    accepted, nxt, flags = sampling_lib.verify(key, drafts_wrong, jax.nn.one_hot(drafts_wrong, 3), p)
    assert int(accepted[0]) == 0 and int(nxt[0]) == 1 and not flags.any()


# --- sampled exactness: the joint law of the first 3 new tokens ---------------------------------

SMALL_VOCAB = 8
NUM_SAMPLES = 12_000  # measured: correct samplers give chi2 ~150-180 (df 185), always-accept ~43,000
SAMPLED = SamplingConfig(temperature=1.0, top_k=6)


@pytest.fixture(scope="module")
def small_vocab_lm():
    config = load_preset("tiny").replace(vocab_size=SMALL_VOCAB)
    params = init_params(config, jax.random.key(11))
    # sharpen the random model so the target law is far from uniform
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x * 8 if "lm_head" in jax.tree_util.keystr(path) else x, params)
    return config, params


def exact_joint(config, params, prompt, sampling):
    """p(t1, t2, t3 | prompt) by enumerating every prefix with full forwards."""
    v = config.vocab_size
    def next_probs(prefixes):
        tokens = jnp.asarray(prefixes, jnp.int32)
        b, t = tokens.shape
        logits, _ = forward(params, config, tokens, jnp.broadcast_to(jnp.arange(t), (b, t)),
                            causal_mask(jnp.zeros(b, jnp.int32), t, t))
        return np.asarray(sampling_lib.probabilities(logits[:, -1], sampling), np.float64)
    p1 = next_probs([prompt])[0]
    p2 = next_probs([prompt + [a] for a in range(v)])
    p3 = next_probs([prompt + [a, b] for a in range(v) for b in range(v)]).reshape(v, v, v)
    return p1[:, None, None] * p2[:, :, None] * p3


def sampled_joint(config, params, lookahead, prompt, mode):
    counts = np.zeros((SMALL_VOCAB,) * 3)
    per_run = NUM_SAMPLES // 4
    for seed in range(4):
        out, _ = run(config, params, lookahead, [prompt] * per_run, mode, 2, 3, sampling=SAMPLED, seed=seed)
        arr = np.stack(out)
        np.add.at(counts, (arr[:, 0], arr[:, 1], arr[:, 2]), 1)
    return counts


def chi_square(counts, probs):
    """Pearson statistic over cells with expected count >= 5 (others pooled), and its df."""
    expected = probs.ravel() * counts.sum()
    observed = counts.ravel()
    big = expected >= 5
    stat = np.sum((observed[big] - expected[big]) ** 2 / expected[big])
    rest_e, rest_o = expected[~big].sum(), observed[~big].sum()
    if rest_e > 0:
        stat += (rest_o - rest_e) ** 2 / rest_e
    return stat, int(big.sum()) + (rest_e > 0) - 1


def chi_square_threshold(df):
    # mean df, sd sqrt(2 df): 6 sd above the mean is a false alarm rate far below 1e-6
    return df + 6 * np.sqrt(2 * df)


def test_sampled_pass_matches_exact_law(small_vocab_lm):
    config, params = small_vocab_lm
    prompt = [1, 2, 3]
    la = lookahead_lib.init_random(config, 2, jax.random.key(8), scale=1.0)
    probs = exact_joint(config, params, prompt, SAMPLED)
    for mode in ("ar", "pass"):
        stat, df = chi_square(sampled_joint(config, params, la, prompt, mode), probs)
        assert stat < chi_square_threshold(df), (mode, stat, df)


def test_sampled_test_rejects_always_accept(small_vocab_lm, monkeypatch):
    """Negative control: a sampler that accepts every draft samples q, and the test must see it."""
    config, params = small_vocab_lm
    prompt = [1, 2, 3]
    la = lookahead_lib.init_random(config, 2, jax.random.key(8), scale=1.0)
    probs = exact_joint(config, params, prompt, SAMPLED)
    monkeypatch.setattr(sampling_lib, "acceptance_probability", lambda p, q: jnp.ones_like(p))
    jax.clear_caches()
    try:
        stat, df = chi_square(sampled_joint(config, params, la, prompt, "pass"), probs)
    finally:
        monkeypatch.undo()
        jax.clear_caches()
    assert stat > chi_square_threshold(df), (stat, df)


# --- recompilation ------------------------------------------------------------------------------

class _ByteTokenizer:
    eos_token_id = None


def test_prompts_in_one_bucket_compile_once(tiny_lm):
    config, params = tiny_lm
    generator = Generator(LoadedModel(config, params, _ByteTokenizer(), "tiny"), mode="pass", num_lookahead=3,
                          lookahead=lookahead_lib.init_random(config, 3, jax.random.key(0)), max_new_tokens=8)
    compiles = []
    listener = lambda event, duration, **_: compiles.append(event) if "backend_compile" in event else None  # noqa: E731
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        for length in range(33, 53):  # 20 lengths, all in the 64 bucket
            generator.generate_ids([list(range(1, length + 1))], seed=length)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    decode_compiles = len(generator._compiled)
    assert decode_compiles == 1
    assert len(compiles) <= 3, compiles  # the decode loop plus at most a couple of tiny helper ops


@pytest.mark.parametrize("mode", ["ar", "pass"])
def test_stop_ids_end_a_row_at_that_token(tiny_lm, mode):
    """A stop token ends the row where it first appears, inclusive, as EOS does; the tokens before it
    are those of the run without stops (greedy)."""
    config, params = tiny_lm
    model = LoadedModel(config, params, _ByteTokenizer(), "tiny")
    settings = dict(mode=mode, num_lookahead=3, lookahead=lookahead_lib.init_random(config, 3, jax.random.key(0)),
                    max_new_tokens=24, sampling=GREEDY)
    prompt = [list(range(1, 20))]
    state, _ = Generator(model, **settings).generate_ids(prompt)
    free = [int(t) for t in state.tokens[0, 19:int(state.lengths[0])]]
    stop = free[5]
    state, _ = Generator(model, **settings, stop_ids=(stop,)).generate_ids(prompt)
    stopped = [int(t) for t in state.tokens[0, 19:int(state.lengths[0])]]
    assert stopped == free[:free.index(stop) + 1] and len(stopped) < len(free)
