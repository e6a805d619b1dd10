"""PaSS decoding: exactness (greedy and sampled), ragged batches, invariants, recompilation."""
import collections
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _chain_lm import train_chain_lm
from pass_jax import decoding
from pass_jax import lookahead as lookahead_lib
from pass_jax import sampling as sampling_lib
from pass_jax.config import load_preset
from pass_jax.decoding import DecodeSpec, decode_jit
from pass_jax.iteration import Iteration
from pass_jax.draft_tree import DraftTree
from pass_jax.generate import Generator, bucket_width, prompt_keys
from pass_jax.loading import LoadedModel
from pass_jax.model import causal_mask, forward, init_params
from pass_jax.sampling import GREEDY, SamplingConfig, sample


@pytest.fixture(scope="module")
def tiny_lm():
    config = load_preset("tiny")
    return config, init_params(config, jax.random.key(1))


# Every PaSS variant: the paper's two calls, single-call, and draft trees with each (L = len(tree)).
# The context variants add a chain of context drafts (`proposers.context`) beside the look-ahead drafts;
# calls2-ctx's chain (3) is deeper than the sampled tests' L = 2, so walks pass the look-ahead depth.
# The recycle variants add a chain of recycled successors (`proposers.recycle`), alone or after a context chain.
VARIANTS = {"calls2": dict(calls=2), "calls1": dict(calls=1), "calls2-tree": dict(calls=2, draft_tree=(3, 2)),
            "calls1-tree": dict(calls=1, draft_tree=(2, 2)), "calls2-ctx": dict(calls=2, drafts=3),
            "calls1-ctx": dict(calls=1, draft_tree=(2, 2), drafts=2),
            "calls2-rec": dict(calls=2, drafts="lookahead,recycle:3"),
            "calls1-ctx-rec": dict(calls=1, draft_tree=(2, 2), drafts="lookahead,context:2,recycle:3")}


def num_lookahead(variant, chain):
    """L of a variant: its tree's depth, or `chain` for the chains."""
    return len(VARIANTS[variant].get("draft_tree", (1,) * chain))


@pytest.fixture(scope="module")
def chain_lm():
    """A 1-layer model and 4 look-ahead vectors trained on the chain x -> x+1 (0.9) | x+2 (0.1) over
    8 tokens (tests/_chain_lm.py): drafts are accepted deep, greedy and sampled."""
    config = load_preset("tiny").replace(vocab_size=8, num_layers=1)
    params, vectors = train_chain_lm(config, 4, eps=0.1)
    return config, params, vectors


class _ByteTokenizer:
    eos_token_id = None


# One Generator (and its compiled programs) per setting, as a user's process keeps it; only the latest few,
# since each holds its executables' memory mappings until it goes (see conftest._free_compiled_programs).
_GENERATORS: collections.OrderedDict = collections.OrderedDict()
KEPT_GENERATORS = 8


def _generator(config, params, lookahead, iteration, max_new, sampling, eos):
    """The `Generator` of these settings: the path `pass-jax generate` ships (prefill, then the loop in chunks)."""
    la_key = None if lookahead is None else hash(np.asarray(jax.device_get(lookahead)).tobytes())
    key = (id(params), config, la_key, iteration, max_new, sampling, tuple(eos))
    if key in _GENERATORS:
        _GENERATORS.move_to_end(key)
    else:
        model = LoadedModel(config, params, _ByteTokenizer(), "test")
        _GENERATORS[key] = Generator(model, iteration, lookahead=lookahead, max_new_tokens=max_new,
                                     sampling=sampling, stop_ids=eos)
        while len(_GENERATORS) > KEPT_GENERATORS:
            _GENERATORS.popitem(last=False)
    return _GENERATORS[key]


def run(config, params, lookahead, prompts, mode, num_lookahead, max_new, sampling=GREEDY, seed=0, eos=(),
        **variant):
    """Decode `prompts` as `Generator.generate_ids` does: (new tokens per row, the statistics)."""
    iteration = Iteration.from_options(mode, num_lookahead, **variant)
    generator = _generator(config, params, lookahead, iteration, max_new, sampling, eos)
    state, _ = generator.generate_ids(prompts, seed=seed)
    out = [np.asarray(state.tokens[r, len(p):int(state.lengths[r])]) for r, p in enumerate(prompts)]
    return out, jax.device_get(state.stats)


def run_one_shot(config, params, lookahead, prompts, iteration, max_new, sampling, seed, eos=()):
    """`decoding.decode_jit`: the same loop as `run`, in one piece, with the same per-prompt keys: the
    final state on host."""
    width = bucket_width(max(len(p) for p in prompts), config.max_seq_len)
    tokens = np.zeros((len(prompts), width), np.int32)
    for row, p in enumerate(prompts):
        tokens[row, :len(p)] = p
    lengths = jnp.asarray([len(p) for p in prompts], jnp.int32)
    spec = DecodeSpec(config, iteration, max_new_tokens=max_new, sampling=sampling, eos_ids=tuple(sorted(eos)))
    keys = prompt_keys(seed, range(1, len(prompts) + 1))
    state = decode_jit(params, lookahead, jnp.asarray(tokens), lengths, keys, spec=spec)
    return jax.device_get(state._replace(cache=None, key=None))


PROMPTS = [[5, 17, 3], [9, 1, 44, 2, 7, 100, 12], list(range(20, 40))]


@pytest.mark.parametrize("num_lookahead, variant", [(1, "calls2"), (5, "calls2"), (1, "calls1"), (4, "calls1"),
                                                    (2, "calls2-tree"), (2, "calls1-tree"), (2, "calls2-ctx"),
                                                    (2, "calls1-ctx"), (2, "calls2-rec"), (2, "calls1-ctx-rec")])
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


# Ragged walks of the chain; greedy continues each with x+1, x+2, ...
CHAIN_PROMPTS = [[5, 6, 7], [1, 2, 3, 4, 6, 7, 0], [0, 2, 3, 5, 6, 7, 1, 2, 3, 4, 6, 7, 0, 1, 2, 3, 5, 6, 7, 0]]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_pass_accepts_good_drafts(chain_lm, variant):
    """Trained drafts are accepted deep: whole chains and tree paths commit (A = L, then the bonus
    token), in a ragged batch, and the tokens are still exactly ar's. Random or untrained vectors
    never get past A = 1 (issue 15), so only this test checks the commit and cache logic for A >= 2."""
    config, params, vectors = chain_lm
    num_l = num_lookahead(variant, 4)
    ar, _ = run(config, params, None, CHAIN_PROMPTS, "ar", 1, 40)
    pss, stats = run(config, params, vectors[:num_l], CHAIN_PROMPTS, "pass", num_l, 40, **VARIANTS[variant])
    for a, b in zip(ar, pss):
        np.testing.assert_array_equal(b, a)
    hist = stats.accepted_hist
    print(variant, "accepted_hist", hist.tolist())
    # Every row commits whole trees, several times. Measured (rows: the three prompts; A = 0..L):
    #   calls2 [[0,0,0,0,7], [0,0,3,0,5], [0,0,2,1,5]]   calls1 [[0,0,5,0,5], [0,0,3,0,6], [0,0,3,0,6]]
    #   calls2-tree [[0,0,10]] * 3                        calls1-tree [[0,0,13]] * 3
    #   calls2-ctx [[0,0,0,0,7], [0,0,1,1,5], [0,0,1,1,5]]  calls1-ctx [[0,0,13]] * 3 (with the greedy walk's deepest
    #   path; trying children in order, calls2-ctx stopped at the context chain's depth 3: [[0,0,0,7,1], ...])
    assert (hist[:, num_l] >= 3).all(), hist
    assert (stats.new_tokens == 40).all()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_eos_at_first_token_beside_a_row_to_the_budget(chain_lm, variant):
    """One row's first new token is EOS; the other never meets EOS and is cut by the budget in the
    middle of a deep iteration. Each row gets exactly what it gets alone, and what ar gives."""
    config, params, vectors = chain_lm
    num_l = num_lookahead(variant, 4)
    eos, budget = (0,), 7
    prompts = [[5, 6, 7], [4, 5, 6, 7, 0]]  # greedy: 0 (EOS) at once; 1, 2, ..., 7 (EOS 8 tokens away)
    ar, _ = run(config, params, None, prompts, "ar", 1, budget, eos=eos)
    assert [row.tolist() for row in ar] == [[0], [1, 2, 3, 4, 5, 6, 7]]
    batched, stats = run(config, params, vectors[:num_l], prompts, "pass", num_l, budget, eos=eos,
                         **VARIANTS[variant])
    print(variant, "accepted_hist", stats.accepted_hist.tolist())
    assert stats.accepted_hist[1, 2:].sum() >= 1  # the budget row accepted two drafts or more at once
    for prompt, row, expected in zip(prompts, batched, ar):
        alone, _ = run(config, params, vectors[:num_l], [prompt], "pass", num_l, budget, eos=eos,
                       **VARIANTS[variant])
        np.testing.assert_array_equal(row, alone[0])
        np.testing.assert_array_equal(row, expected)


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


# Accepted drafts in the three rows, half of those measured: the histograms (A = 0..L, summed over rows)
# were calls2 [26,6,0,0,0], calls1 [46,12,0,0,0], calls2-tree [17,12,0], calls1-tree [37,15,1],
# calls2-rec [17,8,3,0,0], calls1-ctx-rec [31,8,8,0].
SMOLLM2_MIN_ACCEPTED = {"calls2": 3, "calls1": 6, "calls2-tree": 6, "calls1-tree": 8, "calls2-ctx": 3, "calls1-ctx": 8,
                        "calls2-rec": 7, "calls1-ctx-rec": 12}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_pass_equals_ar_smollm2(smollm2, variant):
    prompts = ["The capital of France is", "def fibonacci(n):\n    ", "In 1905, Albert Einstein published"]
    ids = [list(smollm2.tokenizer(p)["input_ids"]) for p in prompts]
    num_l = len(VARIANTS[variant].get("draft_tree", (1,) * 4))
    la = lookahead_lib.resolve("text", smollm2.params, smollm2.config, smollm2.identity).prepare(smollm2.config, num_l)
    ar, _ = run(smollm2.config, smollm2.params, None, ids, "ar", 1, 24)
    pss, stats = run(smollm2.config, smollm2.params, la, ids, "pass", num_l, 24, **VARIANTS[variant])
    for a, b in zip(ar, pss):
        np.testing.assert_array_equal(a, b)
    # the shipped vectors' drafts are accepted: fewer calls than ar's 24 per row
    accepted = int((stats.accepted_hist * np.arange(stats.accepted_hist.shape[1])).sum())
    print(variant, "accepted_hist", stats.accepted_hist.sum(0).tolist(), "calls", stats.model_calls.tolist())
    assert accepted >= SMOLLM2_MIN_ACCEPTED[variant] and stats.model_calls.sum() < 3 * 24, stats.accepted_hist


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


# --- sampled exactness: the law of the first 7 new tokens -----------------------------------------
# The chain model (drafts accepted often, q close to p but not equal) with top-k 2: every prefix has
# two possible next tokens, so the law of the first 7 new tokens is enumerable (2^7 sequences). With
# L = 2, 7 tokens hold, for every variant: draft positions 1 and 2, the bonus token after A = 2, and a
# second iteration (the prefill's token, then at most 4 tokens per iteration).

NUM_NEW = 7
NUM_SAMPLES = 20_000  # 4 seeds x 5,000 rows
SAMPLED = SamplingConfig(temperature=2.0, top_k=2)  # T = 2 flattens p (about 0.9 / 0.1 at T = 1): more power
SAMPLED_L = 2
CHAIN_PROMPT = [1, 2, 3]
# The context variants' prompt: its suffix 2,3 recurs (continued by 4,5,6, what the chain favours) and
# the jumps 3,5,7 make other matches propose what the chain rarely does, so context drafts are accepted
# and rejected
CONTEXT_PROMPT = [1, 2, 3, 4, 5, 6, 3, 5, 7, 1, 2, 3]
_forward_jit = jax.jit(forward, static_argnums=1)


def exact_law(config, params, prompt, sampling, num_new):
    """{sequence of the first num_new tokens: probability}, expanding every prefix in p's support with
    a full forward (no cache), one padded batch per length."""
    width, batch = len(prompt) + num_new - 1, 2 ** (num_new - 1)
    positions = jnp.broadcast_to(jnp.arange(width), (batch, width))
    mask = causal_mask(jnp.zeros(batch, jnp.int32), width, width)
    law = {(): 1.0}
    for step in range(num_new):
        prefixes = list(law)
        assert len(prefixes) <= batch, "a top-k tie widened the support"
        tokens = np.zeros((batch, width), np.int32)
        tokens[:len(prefixes), :len(prompt) + step] = [prompt + list(seq) for seq in prefixes]
        logits, _ = _forward_jit(params, config, tokens, positions, mask,
                                 logits_index=jnp.full((batch,), len(prompt) + step - 1))
        probs = np.asarray(sampling_lib.probabilities(logits, sampling), np.float64)
        law = {seq + (t,): law[seq] * row[t] for seq, row in zip(prefixes, probs) for t in np.flatnonzero(row)}
    return law


def sampled_law(config, params, vectors, mode, prompt, **variant):
    """(Counter of the sampled sequences, accepted_hist [rows, D+1] of every run, accepted drafts of the context
    and recycle chains)."""
    counts, hists, from_chains = collections.Counter(), [], np.zeros(2, int)
    for seed in range(4):
        out, stats = run(config, params, vectors, [prompt] * (NUM_SAMPLES // 4), mode, SAMPLED_L, NUM_NEW,
                         sampling=SAMPLED, seed=seed, **variant)
        counts.update(tuple(int(t) for t in row) for row in out)
        hists.append(stats.accepted_hist)
        from_chains += [int(stats.context_accepted.sum()), int(stats.recycle_accepted.sum())]
    return counts, np.concatenate(hists), from_chains


def chi_square(counts, law):
    """Pearson statistic of sampled sequences against the exact law, and its df: cells with an
    expected count >= 5, the rest pooled; a sequence outside the law's support makes it infinite."""
    if set(counts) - set(law):
        return np.inf, len(law) - 1
    expected = np.asarray(list(law.values())) * sum(counts.values())
    observed = np.asarray([counts[seq] for seq in law])
    big = expected >= 5
    stat = np.sum((observed[big] - expected[big]) ** 2 / expected[big])
    rest_e, rest_o = expected[~big].sum(), observed[~big].sum()
    if rest_e > 0:
        stat += (rest_o - rest_e) ** 2 / rest_e
    return stat, int(big.sum()) + (rest_e > 0) - 1


def chi_square_threshold(df):
    # mean df, sd sqrt(2 df): 6 sd above the mean is a false alarm rate far below 1e-6
    return df + 6 * np.sqrt(2 * df)


@pytest.fixture(scope="module")
def chain_law(chain_lm):
    """{variant kind: (prompt, its exact law)}: the context variants decode CONTEXT_PROMPT, the others CHAIN_PROMPT."""
    config, params, _ = chain_lm
    return {kind: (prompt, exact_law(config, params, prompt, SAMPLED, NUM_NEW))
            for kind, prompt in (("chain", CHAIN_PROMPT), ("ctx", CONTEXT_PROMPT))}


def sampled_chi_square(chain_lm, chain_law, variant):
    """(chi2, df, accepted_hist, accepted context and recycled drafts) of `variant`'s samples against its
    prompt's law."""
    config, params, vectors = chain_lm
    mode, settings = ("ar", {}) if variant == "ar" else ("pass", VARIANTS[variant])
    prompt, law = chain_law["ctx" if "drafts" in settings else "chain"]
    counts, hist, from_chains = sampled_law(config, params, vectors[:SAMPLED_L], mode, prompt, **settings)
    return (*chi_square(counts, law), hist, from_chains)


@pytest.mark.parametrize("variant", ["ar"] + list(VARIANTS))
def test_sampled_pass_matches_exact_law(chain_lm, chain_law, variant):
    """The law of 7 tokens: draft positions 1 and 2, the bonus, and a second iteration, in every variant
    (with context drafts: their chain, deeper than L, and the look-ahead siblings after them)."""
    stat, df, hist, (from_context, from_recycle) = sampled_chi_square(chain_lm, chain_law, variant)
    print(variant, f"chi2 {stat:.1f} df {df}", "accepted_hist", hist.sum(0).tolist(), "context", from_context,
          "recycle", from_recycle)
    assert stat < chi_square_threshold(df), (variant, stat, df)
    if variant != "ar":  # the paths were reached: every row ran >= 2 iterations, and A = L is common
        assert (hist.sum(1) >= 2).all() and hist[:, SAMPLED_L:].sum() >= 0.2 * len(hist), hist.sum(0)
    if "drafts" in VARIANTS.get(variant, {}):  # chain drafts were accepted, and walks went past L
        iteration = Iteration.from_options("pass", SAMPLED_L, **VARIANTS[variant])
        assert from_context >= 0.2 * len(hist) * bool(iteration.context), from_context
        assert from_recycle >= 0.1 * len(hist) * bool(iteration.recycle), from_recycle  # calls2-rec: 0.19
        assert hist.shape[1] == SAMPLED_L + 1 or hist[:, SAMPLED_L + 1].sum() > 0


@pytest.mark.parametrize("variant", ["ar"] + list(VARIANTS))
def test_chunked_streamed_run_equals_the_one_shot_run_sampled(chain_lm, monkeypatch, variant):
    """`Generator` runs the loop in chunks (here one iteration each, streamed to `on_chunk`); under
    sampling its tokens, lengths and statistics equal `decode` run in one piece with the same keys."""
    from pass_jax import generate as generate_lib

    config, params, vectors = chain_lm
    mode, settings = ("ar", {}) if variant == "ar" else ("pass", VARIANTS[variant])
    iteration = Iteration.from_options(mode, SAMPLED_L, **settings)
    lookahead = vectors[:SAMPLED_L] if mode == "pass" else None
    prompts = [CHAIN_PROMPT, [4, 5], [0, 1, 2, 3, 4, 5, 6]] * 4
    monkeypatch.setattr(generate_lib, "CHUNK_INTERVAL_S", 0.0)  # one loop iteration per chunk
    generator = Generator(LoadedModel(config, params, _ByteTokenizer(), "test"), iteration, lookahead=lookahead,
                          max_new_tokens=20, sampling=SAMPLED, stop_ids=(0,))
    reads = []
    chunked, _ = generator.generate_ids(prompts, seed=5, on_chunk=lambda tokens, lengths: reads.append(lengths))
    one_shot = run_one_shot(config, params, generator.lookahead, prompts, iteration, 20, SAMPLED, seed=5, eos=(0,))
    assert len(reads) >= 3  # it really ran in chunks: the prefill's read, then two chunks or more
    np.testing.assert_array_equal(chunked.lengths, one_shot.lengths)
    for row in range(len(prompts)):
        end = int(one_shot.lengths[row])
        np.testing.assert_array_equal(chunked.tokens[row, :end], one_shot.tokens[row, :end])
    jax.tree.map(np.testing.assert_array_equal, chunked.stats, one_shot.stats)
    assert len({tuple(chunked.tokens[r, :int(chunked.lengths[r])]) for r in range(0, 12, 3)}) > 1  # sampled


def test_every_output_mode_runs_the_loop_in_bounded_chunks(tiny_lm, monkeypatch):
    """Without a stream (--no-stream, --json, batches) the loop still returns to Python between chunks,
    where a Ctrl-C is taken: the decode of 40 tokens is many `decode_steps` calls, not one."""
    from pass_jax import generate as generate_lib

    config, params = tiny_lm
    monkeypatch.setattr(generate_lib, "CHUNK_INTERVAL_S", 0.0)  # one loop iteration per chunk
    generator = Generator(LoadedModel(config, params, _ByteTokenizer(), "test"), Iteration.AR, max_new_tokens=40)
    prompts = [[5, 17, 3], [9, 1, 44]]
    generator.generate_ids(prompts)  # compile
    (key, (prefill, steps)), = generator._compiled.items()
    calls = []
    generator._compiled[key] = (prefill, lambda *args: calls.append(args[-1]) or steps(*args))
    state, _ = generator.generate_ids(prompts)
    assert (state.stats.new_tokens == 40).all() and len(calls) == 39 and all(int(n) == 1 for n in calls)


def _verify_with(wrap):
    """A lossy `decoding.verify`: wrap(verify's result, its arguments) -> the result."""
    real = decoding.verify

    def lossy(key, tree, node_tokens, q, p, greedy=False, **options):  # valid, support
        return wrap(functools.partial(real, **options), key, tree, node_tokens, q, p, greedy)
    return lossy


def _bonus_from_parent(real, key, tree, node_tokens, q, p, greedy):
    """When every draft is accepted, the token after them comes from p at the last draft's parent: the
    walk skips the bonus position's own p."""
    accepted, path, nxt, flags = real(key, tree, node_tokens, q, p, greedy)
    parent = jnp.asarray(tree.parent)[path[:, -1]]
    early = sample(sampling_lib.split_rows(sampling_lib.row_keys(key, len(parent)), 2)[1],
                   p[jnp.arange(len(parent)), parent])
    return accepted, path, jnp.where(accepted == tree.depth, early, nxt), flags


def _q_wrong_position(real, key, tree, node_tokens, q, p, greedy):
    """Depth d's drafts are tested against q of depth d-1 (cyclically), not the q they came from."""
    return real(key, tree, node_tokens, jnp.roll(q, 1, axis=1), p, greedy)


def _siblings_share_residual(tree):
    """No residual update between rejected siblings: each is tested against the same p', and the residual
    is taken once, after the last. `verify` calls the residual once per (depth, rank), in that order,
    while it is traced; this counts the calls."""
    last_rank = [rank == k - 1 for k in tree.branching for rank in range(k)]
    calls = itertools.count()
    real = sampling_lib.residual_distribution
    return lambda p, q: real(p, q) if last_rank[next(calls) % len(last_rank)] else p


LOSSY_RULES = {  # name -> (patch(monkeypatch, tree), for trees only)
    "always_accept": (lambda mp, tree: mp.setattr(sampling_lib, "acceptance_probability",
                                                  lambda p, q: jnp.ones_like(p)), False),  # samples q, not p
    "no_residual": (lambda mp, tree: mp.setattr(sampling_lib, "residual_distribution",
                                                lambda p, q: p), False),  # after a rejection, draws from p again
    "bonus_from_parent": (lambda mp, tree: mp.setattr(decoding, "verify", _verify_with(_bonus_from_parent)), False),
    "q_wrong_position": (lambda mp, tree: mp.setattr(decoding, "verify", _verify_with(_q_wrong_position)), False),
    "siblings_share_residual": (lambda mp, tree: mp.setattr(sampling_lib, "residual_distribution",
                                                            _siblings_share_residual(tree)), True),
}


_candidate_q = sampling_lib.candidate_q


def _context_as_lookahead(q_depth, token, deterministic):
    """A context draft tested (accepted and residual) against the look-ahead q of its depth, as if drawn from it."""
    return _candidate_q(q_depth, token, jnp.zeros_like(deterministic))


def _context_no_residual(q_depth, token, deterministic):
    """A context draft accepted with p'(c), but p' not updated after its rejection (its q taken as 0)."""
    q_token, q_node = _candidate_q(q_depth, token, deterministic)
    return q_token, jnp.where(deterministic[:, None], 0.0, q_node)


CONTEXT_RULES = {name: (lambda mp, rule=rule: mp.setattr(sampling_lib, "candidate_q", rule))
                 for name, rule in (("context_as_lookahead", _context_as_lookahead),
                                    ("context_no_residual", _context_no_residual))}
def _duplicate_counted_twice(real):
    """A lossy `verify`: a token that the root's first two children (the context and recycle chains) both
    drafted gets a second chance after its rejection, as if each copy were tried against the root's p: it
    is committed with probability 1 - (1 - p(c))^2, not p(c). Modelled exactly by handing the real walk
    that law at the root (the other tokens scaled by 1 - p(c)), for the rows where the copies agree."""
    def lossy(key, tree, node_tokens, q, p, greedy=False, valid=None, support=None):
        first, second = tree.children[0, :2] - 1  # node indices into node_tokens
        rows = jnp.arange(node_tokens.shape[0])
        c = node_tokens[:, first]
        duplicate = node_tokens[:, second] == c
        if valid is not None:
            duplicate = duplicate & valid[:, first] & valid[:, second]
        p_c = p[rows, 0, c]
        twice = (p[:, 0] * (1 - p_c)[:, None]).at[rows, c].set(1 - (1 - p_c) ** 2)
        p = p.at[:, 0].set(jnp.where(duplicate[:, None], twice, p[:, 0]))
        return real(key, tree, node_tokens, q, p, greedy, valid, support)
    return lossy


CONTROLS = [(variant, rule) for variant in VARIANTS for rule, (_, trees_only) in LOSSY_RULES.items()
            if "drafts" not in VARIANTS[variant] and (not trees_only or "draft_tree" in VARIANTS[variant])] + [
    (variant, rule) for variant in VARIANTS if "drafts" in VARIANTS[variant] for rule in CONTEXT_RULES
    # calls2-rec's recycled draft (the chain's likeliest successor) is rejected too rarely in 7 tokens for this
    # test to see a missing residual (chi2 187.1, threshold 214.3, measured); the direct verify law fails it
    if (variant, rule) != ("calls2-rec", "context_no_residual")] + [
    (variant, "duplicate_counted_twice") for variant in VARIANTS  # where the context and recycle chains both draft
    if "context" in str(VARIANTS[variant].get("drafts")) and "recycle" in str(VARIANTS[variant].get("drafts"))]


@pytest.mark.parametrize("variant, rule", CONTROLS)
def test_sampled_test_rejects_lossy_rules(chain_lm, chain_law, monkeypatch, variant, rule):
    """Negative controls: the same test must fail each lossy rule, for each variant."""
    tree = DraftTree(VARIANTS[variant].get("draft_tree", (1,) * SAMPLED_L))
    if rule in CONTEXT_RULES:
        CONTEXT_RULES[rule](monkeypatch)
    elif rule == "duplicate_counted_twice":
        monkeypatch.setattr(decoding, "verify", _duplicate_counted_twice(decoding.verify))
    else:
        LOSSY_RULES[rule][0](monkeypatch, tree)
    jax.clear_caches()
    _GENERATORS.clear()  # compile the lossy rule in
    try:
        stat, df, *_ = sampled_chi_square(chain_lm, chain_law, variant)
    finally:
        monkeypatch.undo()
        jax.clear_caches()
        _GENERATORS.clear()
    print(variant, rule, f"chi2 {stat:.1f} df {df}")
    assert stat > chi_square_threshold(df), (stat, df)


# --- verify's law, directly: many seeded (p, q) pairs over a small vocabulary --------------------

PROPERTY_PAIRS, PROPERTY_TRIALS, PROPERTY_VOCAB = 16, 20_000, 6


def random_distributions(rng, count, vocab):
    """Dirichlet(0.5) rows with one zero each, so disjoint supports and q = 0 where p > 0 occur."""
    x = rng.dirichlet(np.full(vocab, 0.5), size=count)
    x[np.arange(count), rng.integers(vocab, size=count)] = 0
    return x / x.sum(axis=1, keepdims=True)


@functools.partial(jax.jit, static_argnums=(1, 4))
def _verify_trials(key, tree, p, q, trials, chains):
    """`trials` calls of `verify` per pair on a one-depth tree whose K siblings are drawn i.i.d. from q
    (and, with `tree.context` and `tree.recycle`, deterministic drafts: the tokens chains [pairs, 2],
    context then recycle, tried first), as one batch.
    Returns (the first committed token, whether a draft was accepted), each [pairs, trials]."""
    rows = p.shape[0] * trials
    p, q = jnp.repeat(p, trials, axis=0), jnp.repeat(q, trials, axis=0)
    draft_key, verify_key = jax.random.split(key)
    drafts = sample(draft_key, jnp.broadcast_to(q[:, None], (rows, tree.lookahead_nodes, q.shape[1])))
    chain_drafts = [jnp.repeat(chains[:, i], trials)[:, None] for i, size in enumerate((tree.context, tree.recycle))
                    if size]
    drafts = jnp.concatenate([drafts, *chain_drafts], axis=1)
    targets = jnp.broadcast_to(p[:, None], (rows, tree.num_nodes + 1, p.shape[1]))  # only the root's p matters here
    accepted, path, replacement, _ = sampling_lib.verify(verify_key, tree, drafts, q[:, None], targets)
    first = jnp.where(accepted > 0, drafts[jnp.arange(rows), path[:, 0] - 1], replacement)
    return first.reshape(-1, trials), (accepted > 0).reshape(-1, trials)


def exact_acceptance(p, q, siblings, deterministic=()):
    """P(some sibling is accepted) = 1 - prod_k (1 - sum min(p_k, q)), p_k the residual after k rejections;
    each deterministic draft c, tried first in order, is accepted with p'(c), and its residual is p' without c
    (so a repeated one is never accepted)."""
    none = 1.0
    for c in deterministic:
        none, rest = none * (1 - p[c]), np.where(np.arange(len(p)) == c, 0, p)
        p = rest / rest.sum() if rest.sum() > 0 else p
    for _ in range(siblings):
        none *= 1 - np.minimum(p, q).sum()
        rest = np.maximum(p - q, 0)
        p = rest / rest.sum() if rest.sum() > 0 else p
    return 1 - none


def verify_law_statistics(tree, seed=0):
    """(chi2, df) of the first committed token against p, summed over pairs, and (chi2, df) of the
    acceptance rates against the exact rate (squared z-scores)."""
    rng = np.random.default_rng(seed)
    p = random_distributions(rng, PROPERTY_PAIRS, PROPERTY_VOCAB)
    q = random_distributions(rng, PROPERTY_PAIRS, PROPERTY_VOCAB)
    # context drafts: q's likeliest token (so the siblings often duplicate it) or any token (p = 0 occurs);
    # recycled drafts: the context draft again in half the pairs (two proposers drafted the same token), else any
    pair = np.arange(PROPERTY_PAIRS)
    context = np.where(pair % 2, q.argmax(1), rng.integers(PROPERTY_VOCAB, size=PROPERTY_PAIRS))
    recycle = np.where(pair % 4 < 2, context, rng.integers(PROPERTY_VOCAB, size=PROPERTY_PAIRS))
    first, accepted = jax.device_get(_verify_trials(jax.random.key(seed), tree, jnp.asarray(p, jnp.float32),
                                                    jnp.asarray(q, jnp.float32), PROPERTY_TRIALS,
                                                    jnp.asarray(np.stack([context, recycle], 1), jnp.int32)))
    token_stat = token_df = accept_stat = 0
    for row in range(PROPERTY_PAIRS):
        stat, df = chi_square(collections.Counter(first[row].tolist()),
                              {t: p[row, t] for t in np.flatnonzero(p[row])})
        token_stat, token_df = token_stat + stat, token_df + df
        deterministic = [context[row]] * bool(tree.context) + [recycle[row]] * bool(tree.recycle)
        rate = exact_acceptance(p[row], q[row], tree.branching[0], deterministic)
        spread = np.sqrt(max(rate * (1 - rate), 1e-12) / PROPERTY_TRIALS)
        accept_stat += ((accepted[row].mean() - rate) / spread) ** 2
    return (token_stat, token_df), (accept_stat, PROPERTY_PAIRS)


# the real rule, then each lossy rule that shows in one depth (bonus and q-position controls need two);
# with a context draft before the siblings (context 1), the real rule and the context rules; with a context
# and a recycled draft, often the same token, those and the duplicate rule
VERIFY_CASES = [(branching, (0, 0), rule) for branching in [(1,), (3,)]
                for rule in [None, "always_accept", "no_residual"] + ["siblings_share_residual"] * (branching != (1,))]
VERIFY_CASES += [(branching, (1, 0), rule) for branching in [(1,), (3,)] for rule in [None, *CONTEXT_RULES]]
VERIFY_CASES += [(branching, (1, 1), rule) for branching in [(1,), (3,)]
                 for rule in [None, *CONTEXT_RULES, "duplicate_counted_twice"]]


@pytest.mark.parametrize("branching, chains, rule", VERIFY_CASES,
                         ids=[f"{b}-{'ctx-' * c}{'rec-' * r}{rule}" for b, (c, r), rule in VERIFY_CASES])
def test_verify_commits_p_and_accepts_at_the_exact_rate(monkeypatch, branching, chains, rule):
    """The token committed after a draft (the accepted draft or the residual) is distributed as p, and
    a draft is accepted with probability sum min(p, q) (K i.i.d. siblings: the recursive residual's
    rate; deterministic drafts c first: p'(c) each, then the siblings against p' without them); each
    lossy rule fails it."""
    tree = DraftTree(branching, *chains)
    if rule in CONTEXT_RULES:
        CONTEXT_RULES[rule](monkeypatch)
    elif rule == "duplicate_counted_twice":
        monkeypatch.setattr(sampling_lib, "verify", _duplicate_counted_twice(sampling_lib.verify))
    elif rule:
        LOSSY_RULES[rule][0](monkeypatch, tree)
    _verify_trials.clear_cache()
    try:
        (token_stat, token_df), (accept_stat, accept_df) = verify_law_statistics(tree)
    finally:
        monkeypatch.undo()
        _verify_trials.clear_cache()
    print(branching, chains, rule, f"token chi2 {token_stat:.1f} df {token_df}, acceptance chi2 {accept_stat:.1f} "
          f"df {accept_df}")
    exact = token_stat < chi_square_threshold(token_df) and accept_stat < chi_square_threshold(accept_df)
    assert exact == (rule is None), (token_stat, token_df, accept_stat, accept_df)


# --- recompilation ------------------------------------------------------------------------------

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


@pytest.mark.parametrize("tie", [False, True])
def test_two_rows_are_projected_row_by_row_on_cpu_with_the_same_logits(tiny, tie):
    """On XLA:CPU 2 rows go onto the vocabulary as two 1-row products (faster there than one 2-row
    product): the same logits as one product, whatever the leading shape; 1 and 3 rows stay one product."""
    import dataclasses

    from pass_jax import model as model_lib

    config = dataclasses.replace(tiny[0], tie_embeddings=tie)
    vocab, hidden = config.vocab_size, config.hidden_size
    weight = jax.random.normal(jax.random.key(1), (vocab, hidden) if tie else (hidden, vocab))
    table = weight.T if tie else weight
    for shape in ((2, hidden), (1, 2, hidden), (1, 1, hidden), (3, hidden)):
        x = jax.random.normal(jax.random.key(sum(shape)), shape)
        project = jax.jit(lambda x: model_lib._project(x, weight, config))
        np.testing.assert_allclose(project(x), np.asarray(x) @ np.asarray(table), rtol=1e-5, atol=1e-4)
        rows = int(np.prod(shape[:-1]))
        products = project.lower(x).as_text().count("dot_general")
        assert products == (rows if 1 < rows <= model_lib.ROWWISE_PROJECTION_MAX else 1), (shape, products)
