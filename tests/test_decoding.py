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
from pass_jax.draft_tree import DraftTree
from pass_jax.generate import Generator, bucket_width
from pass_jax.loading import LoadedModel
from pass_jax.model import causal_mask, forward, init_params
from pass_jax.sampling import GREEDY, SamplingConfig


@pytest.fixture(scope="module")
def tiny_lm():
    config = load_preset("tiny")
    return config, init_params(config, jax.random.key(1))


# Every PaSS variant: the paper's two calls, single-call, and draft trees with each (L = len(tree)).
VARIANTS = {"calls2": dict(calls=2), "calls1": dict(calls=1), "calls2-tree": dict(calls=2, draft_tree=(3, 2)),
            "calls1-tree": dict(calls=1, draft_tree=(2, 2))}


def run(config, params, lookahead, prompts, mode, num_lookahead, max_new, sampling=GREEDY, seed=0, eos=(),
        **variant):
    width = bucket_width(max(len(p) for p in prompts), config.max_seq_len)
    tokens = np.zeros((len(prompts), width), np.int32)
    for row, p in enumerate(prompts):
        tokens[row, :len(p)] = p
    lengths = jnp.asarray([len(p) for p in prompts], jnp.int32)
    if lookahead is None:  # autoregressive: the loop never reads it
        lookahead = jnp.zeros((1, config.hidden_size))
    spec = DecodeSpec(config, mode=mode, num_lookahead=num_lookahead, max_new_tokens=max_new,
                      sampling=sampling, eos_ids=eos, **variant)
    state = decode_jit(params, lookahead, jnp.asarray(tokens), lengths, jax.random.key(seed), spec=spec)
    out = [np.asarray(state.tokens[r, len(p):int(state.lengths[r])]) for r, p in enumerate(prompts)]
    return out, jax.device_get(state.stats)


PROMPTS = [[5, 17, 3], [9, 1, 44, 2, 7, 100, 12], list(range(20, 40))]


@pytest.mark.parametrize("num_lookahead, variant", [(1, "calls2"), (5, "calls2"), (1, "calls1"), (4, "calls1"),
                                                    (2, "calls2-tree"), (2, "calls1-tree")])
def test_greedy_pass_equals_ar_tiny(tiny_lm, num_lookahead, variant):
    config, params = tiny_lm
    ar, ar_stats = run(config, params, None, PROMPTS, "ar", 1, 40)
    assert all(len(row) == 40 for row in ar)
    assert (ar_stats.model_calls == 40).all() and (ar_stats.new_tokens == 40).all()
    untrained = lookahead_lib.init_untrained(params, num_lookahead, jax.random.key(2))
    random = lookahead_lib.init_random(config, num_lookahead, jax.random.key(3), scale=1.0)
    for vectors in (untrained, random):  # drafts change the speed, never the tokens
        pss, _ = run(config, params, vectors, PROMPTS, "pass", num_lookahead, 40, **VARIANTS[variant])
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


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_ragged_batch_rows_equal_unbatched(tiny_lm, variant):
    config, params = tiny_lm
    num_l = len(VARIANTS[variant].get("draft_tree", (1,) * 4))
    la = lookahead_lib.init_random(config, num_l, jax.random.key(4), scale=1.0)
    batched, _ = run(config, params, la, PROMPTS, "pass", num_l, 30, **VARIANTS[variant])
    for prompt, row in zip(PROMPTS, batched):
        single, _ = run(config, params, la, [prompt], "pass", num_l, 30, **VARIANTS[variant])
        np.testing.assert_array_equal(row, single[0])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_pass_invariants_and_eos(tiny_lm, variant):
    settings = VARIANTS[variant]
    calls = settings["calls"]
    num_l = len(settings.get("draft_tree", (1,) * 3))
    config, params = tiny_lm
    la = lookahead_lib.init_random(config, num_l, jax.random.key(5), scale=1.0)
    sampling = SamplingConfig(temperature=1.0, top_k=None)
    out, stats = run(config, params, la, PROMPTS, "pass", num_l, 50, sampling=sampling, seed=7, **settings)
    for row in range(len(PROMPTS)):
        hist = stats.accepted_hist[row]
        iterations = hist.sum()
        # the prefill token, then A + 2 tokens per two-call iteration or A + 1 per single call
        untruncated = 1 + int((hist * (np.arange(len(hist)) + calls)).sum())
        assert stats.model_calls[row] == calls * iterations + 1
        assert untruncated >= stats.model_calls[row]  # never less than one token per call
        assert stats.new_tokens[row] == min(50, untruncated) == len(out[row])
        assert (stats.position_accepted[row] <= stats.position_reached[row]).all()
    # EOS: a row stops right after the first EOS it commits
    eos = int(out[0][5])
    out_eos, _ = run(config, params, la, PROMPTS[:1], "pass", num_l, 50, sampling=sampling, seed=7, eos=(eos,),
                     **settings)
    first = int(np.argmax(out[0] == eos))
    np.testing.assert_array_equal(out_eos[0], out[0][:first + 1])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_eos_and_budget_cut_where_ar_does(tiny_lm, variant):
    """EOS and the budget can fall in the middle of an iteration's tokens: the row ends where ar's does."""
    config, params = tiny_lm
    num_l = len(VARIANTS[variant].get("draft_tree", (1,) * 3))
    la = lookahead_lib.init_untrained(params, num_l, jax.random.key(2))
    free, _ = run(config, params, None, PROMPTS, "ar", 1, 40)
    eos = tuple({int(row[7]) for row in free})
    for max_new in (13, 40):
        ar, _ = run(config, params, None, PROMPTS, "ar", 1, max_new, eos=eos)
        pss, _ = run(config, params, la, PROMPTS, "pass", num_l, max_new, eos=eos, **VARIANTS[variant])
        for a, b in zip(ar, pss):
            np.testing.assert_array_equal(b, a)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_pass_equals_ar_smollm2(smollm2, variant):
    prompts = ["The capital of France is", "def fibonacci(n):\n    ", "In 1905, Albert Einstein published"]
    ids = [list(smollm2.tokenizer(p)["input_ids"]) for p in prompts]
    num_l = len(VARIANTS[variant].get("draft_tree", (1,) * 4))
    la = lookahead_lib.resolve("text", smollm2.params, smollm2.config, num_l, smollm2.identity)[0]
    ar, _ = run(smollm2.config, smollm2.params, None, ids, "ar", 1, 24)
    pss, stats = run(smollm2.config, smollm2.params, la, ids, "pass", num_l, 24, **VARIANTS[variant])
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
    chain = DraftTree((1, 1))
    p = jnp.asarray([[[0.0, 1.0, 0.0]] * 3])  # target always says token 1
    for greedy in (False, True):
        drafts_right = jnp.asarray([[1, 1]])
        accepted, path, nxt, flags = sampling_lib.verify(key, chain, drafts_right, jax.nn.one_hot(drafts_right, 3), p,
                                                         greedy=greedy)
        assert int(accepted[0]) == 2 and int(nxt[0]) == 1 and flags.all() and path.tolist() == [[1, 2]]
        drafts_wrong = jnp.asarray([[2, 1]])
        accepted, path, nxt, flags = sampling_lib.verify(key, chain, drafts_wrong, jax.nn.one_hot(drafts_wrong, 3), p,
                                                         greedy=greedy)
        assert int(accepted[0]) == 0 and int(nxt[0]) == 1 and not flags.any() and path.tolist() == [[0, 0]]


def test_verify_tree_walks_to_the_accepted_sibling():
    """Tree (3, 2): nodes 1-3 at depth 1, then two children each (4-5 under 1, 6-7 under 2, 8-9 under 3).
    The target wants token 2 then token 0: only node 2 (rank 1) and then its child 7 (rank 1) match."""
    tree = DraftTree((3, 2))
    assert tree.children[2].tolist() == [6, 7, -1] and tree.parent[7] == 2 and tree.num_nodes == 9
    nodes = jnp.asarray([[1, 2, 0, 0, 0, 1, 0, 1, 1]])  # tokens of nodes 1..9
    p = jnp.zeros((1, 10, 3)).at[0, :, 2].set(1.0).at[0, 2].set(jax.nn.one_hot(0, 3)).at[0, 7].set(
        jax.nn.one_hot(1, 3))
    q = jnp.full((1, 2, 3), 1 / 3)
    for greedy in (False, True):  # p is one-hot: the sampled rule must agree with the greedy one
        accepted, path, nxt, flags = sampling_lib.verify(jax.random.key(1), tree, nodes, q, p, greedy=greedy)
        assert int(accepted[0]) == 2 and path.tolist() == [[2, 7]] and int(nxt[0]) == 1 and flags.all()


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


def sampled_joint(config, params, lookahead, prompt, mode, **variant):
    counts = np.zeros((SMALL_VOCAB,) * 3)
    per_run = NUM_SAMPLES // 4
    for seed in range(4):
        out, _ = run(config, params, lookahead, [prompt] * per_run, mode, 2, 3, sampling=SAMPLED, seed=seed,
                     **variant)
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


@pytest.mark.parametrize("variant", ["ar"] + list(VARIANTS))
def test_sampled_pass_matches_exact_law(small_vocab_lm, variant):
    """Two calls: token 3 passes the rule. Single call: tokens 2 and 3 do (the prefill drafts them).
    Trees put 2-3 i.i.d. candidates at depth 1, so the multi-candidate residual is exercised."""
    config, params = small_vocab_lm
    prompt = [1, 2, 3]
    la = lookahead_lib.init_random(config, 2, jax.random.key(8), scale=1.0)
    probs = exact_joint(config, params, prompt, SAMPLED)
    mode, settings = ("ar", {}) if variant == "ar" else ("pass", VARIANTS[variant])
    stat, df = chi_square(sampled_joint(config, params, la, prompt, mode, **settings), probs)
    assert stat < chi_square_threshold(df), (variant, stat, df)


LOSSY_RULES = {
    "always_accept": ("acceptance_probability", lambda p, q: jnp.ones_like(p)),  # samples q, not p
    "no_residual": ("residual_distribution", lambda p, q: p),  # after a rejection, draws from p again
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("rule", list(LOSSY_RULES))
def test_sampled_test_rejects_lossy_rules(small_vocab_lm, monkeypatch, variant, rule):
    """Negative controls: the same test must fail each lossy rule, for each variant."""
    config, params = small_vocab_lm
    prompt = [1, 2, 3]
    la = lookahead_lib.init_random(config, 2, jax.random.key(8), scale=1.0)
    probs = exact_joint(config, params, prompt, SAMPLED)
    monkeypatch.setattr(sampling_lib, *LOSSY_RULES[rule])
    jax.clear_caches()
    try:
        stat, df = chi_square(sampled_joint(config, params, la, prompt, "pass", **VARIANTS[variant]), probs)
    finally:
        monkeypatch.undo()
        jax.clear_caches()
    assert stat > chi_square_threshold(df), (stat, df)


# --- recompilation ------------------------------------------------------------------------------

class _ByteTokenizer:
    eos_token_id = None


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_prompts_in_one_bucket_compile_once(tiny_lm, variant):
    config, params = tiny_lm
    num_l = len(VARIANTS[variant].get("draft_tree", (1,) * 3))
    generator = Generator(LoadedModel(config, params, _ByteTokenizer(), "tiny"), mode="pass", num_lookahead=num_l,
                          lookahead=lookahead_lib.init_random(config, num_l, jax.random.key(0)), max_new_tokens=8,
                          **VARIANTS[variant])
    generator.generate_ids([list(range(1, 34))], seed=33)  # the bucket's one compile, and any helper ops
    compiles = []
    listener = lambda event, duration, **_: compiles.append(event) if "backend_compile" in event else None  # noqa: E731
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        for length in range(34, 54):  # 20 more lengths, all in the 64 bucket
            generator.generate_ids([list(range(1, length + 1))], seed=length)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert len(generator._compiled) == 1
    assert compiles == []  # no prompt length of the bucket compiles anything again


@pytest.mark.parametrize("mode", ["ar", "pass", "pass-calls1"])
def test_stop_ids_end_a_row_at_that_token(tiny_lm, mode):
    """A stop token ends the row where it first appears, inclusive, as EOS does; the tokens before it
    are those of the run without stops (greedy)."""
    config, params = tiny_lm
    model = LoadedModel(config, params, _ByteTokenizer(), "tiny")
    settings = dict(mode=mode.split("-")[0], num_lookahead=3, max_new_tokens=24, sampling=GREEDY,
                    lookahead=lookahead_lib.init_random(config, 3, jax.random.key(0)), calls=1 if "calls1" in mode else 2)
    prompt = [list(range(1, 20))]
    state, _ = Generator(model, **settings).generate_ids(prompt)
    free = [int(t) for t in state.tokens[0, 19:int(state.lengths[0])]]
    stop = free[5]
    state, _ = Generator(model, **settings, stop_ids=(stop,)).generate_ids(prompt)
    stopped = [int(t) for t in state.tokens[0, 19:int(state.lengths[0])]]
    assert stopped == free[:free.index(stop) + 1] and len(stopped) < len(free)
