"""The ceiling diagnostic (pass_jax.train.diagnostic) against brute force on the tiny random model: full
forwards without a cache, dense distributions, every continuation enumerated."""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pass_jax import lookahead as lookahead_lib
from pass_jax.draft_tree import DraftTree
from pass_jax.model import forward
from pass_jax.sampling import SamplingConfig, probabilities, sample, verify
from pass_jax.train import diagnostic

L = 3
T = 20
WIDTH = T + L + 4
SAMPLING = SamplingConfig(temperature=0.8, top_k=3)


@pytest.fixture(scope="module")
def setup(tiny):
    config, params = tiny
    sharp = jax.tree.map(lambda w: 2 * w if w.ndim == 2 else w, params)  # varied distributions
    lookahead = lookahead_lib.init("deep", sharp, config, L, jax.random.key(1))
    # small per-layer vectors: they matter, and drafts are still accepted at every position
    lookahead["layers"] = 0.05 * jax.random.normal(jax.random.key(2), lookahead["layers"].shape)
    tokens = np.asarray(jax.random.randint(jax.random.key(3), (2, T), 1, config.vocab_size), np.int32)
    anchors = np.array([[6, 19], [11, 14]], np.int32)
    return config, sharp, lookahead, tokens, anchors


def brute_force(config, params, lookahead, tokens, anchors, max_k):
    @jax.jit
    def logits_of(ids, steps):  # one plain causal forward of a padded sequence
        logits, _ = forward(params, config, ids[None], jnp.arange(WIDTH)[None],
                            jnp.tril(jnp.ones((WIDTH, WIDTH), bool))[None],
                            lookahead=lookahead_lib.forward_inputs(lookahead, steps[None]))
        return logits[0]

    def padded(seq, steps=()):
        ids, st = np.zeros(WIDTH, np.int32), np.zeros(WIDTH, np.int32)
        ids[:len(seq)] = seq
        st[len(seq):len(seq) + len(steps)] = steps
        return jnp.asarray(ids), jnp.asarray(st)

    def raw(seq):
        return np.asarray(logits_of(*padded(seq)))[len(seq) - 1]

    def dense(seq):
        return np.asarray(probabilities(jnp.asarray(raw(seq)), SAMPLING))

    def accept(p, q):  # K i.i.d. drafts, recursive rejection, from first principles: [K], [K, V]
        alphas, masses, reach, mass = [], [], 1.0, np.zeros_like(p)
        for _ in range(max_k):
            overlap = np.minimum(p, q)
            mass = mass + reach * overlap
            reach *= 1 - overlap.sum()
            alphas.append(1 - reach)
            masses.append(mass.copy())
            residual = np.maximum(p - q, 0)
            p = residual / residual.sum() if residual.sum() > 0 else p
        return np.array(alphas), np.array(masses)

    def lp_optimum(weights, dists):  # max_q sum_c w_c sum_z min(p_c(z), q(z)) as a linear program
        from scipy.optimize import linprog
        support = sorted({int(z) for p in dists for z in np.flatnonzero(p)})
        pairs = [(c, z) for c, p in enumerate(dists) for z in support]
        n_q = len(support)
        cost = np.concatenate([np.zeros(n_q), [-weights[c] for c, _ in pairs]])
        rows, bounds = [], []
        for j, (c, z) in enumerate(pairs):  # t_cz <= q_z
            row = np.zeros(n_q + len(pairs))
            row[n_q + j], row[support.index(z)] = 1, -1
            rows.append(row)
        a_eq = np.concatenate([np.ones(n_q), np.zeros(len(pairs))])[None]
        bounds = [(0, None)] * n_q + [(0, dists[c][z]) for c, z in pairs]
        return -linprog(cost, A_ub=np.array(rows), b_ub=np.zeros(len(rows)), A_eq=a_eq, b_eq=[1.0],
                        bounds=bounds).fun

    out = {name: [] for name in ("mixture1", "mixture2", "optimum1", "optimum2", "model_path2", "reach",
                                 "greedy_reach", "agree")}
    for row, anchor in ((r, a) for r in range(len(tokens)) for a in anchors[r]):
        prefix = list(tokens[row, :anchor + 1])
        draft_logits = np.asarray(logits_of(*padded(prefix, range(1, L + 1))))[len(prefix):len(prefix) + L]
        q = np.asarray(probabilities(jnp.asarray(draft_logits), SAMPLING))
        p0 = dense(prefix)
        children = np.flatnonzero(p0)
        p1 = {y: dense(prefix + [y]) for y in children}
        p2 = {(y, z): dense(prefix + [y, z]) for y in children for z in np.flatnonzero(p1[y])}
        mix1 = sum(p0[y] * p1[y] for y in children)
        out["mixture1"].append(sum(p0[y] * np.minimum(p1[y], mix1).sum() for y in children))
        out["optimum1"].append(lp_optimum([p0[y] for y in children], [p1[y] for y in children]))
        weights2 = {(y, z): p0[y] * p1[y][z] for (y, z) in p2}
        mix2 = sum(w * p2[n] for n, w in weights2.items())
        out["mixture2"].append(sum(w * np.minimum(p2[n], mix2).sum() for n, w in weights2.items()))
        out["optimum2"].append(lp_optimum(list(weights2.values()), list(p2.values())))
        out["model_path2"].append(sum(w * np.minimum(p2[n], q[1]).sum() for n, w in weights2.items()))
        # P(positions 1..i accepted) with K candidates each, every accepted prefix enumerated.
        reach = np.zeros((L, max_k))
        for y in children:
            alpha1, mass1 = accept(p1[y], q[0])
            reach[0] += p0[y] * alpha1
            for z in np.flatnonzero(p1[y]):
                alpha2, mass2 = accept(p2[y, z], q[1])
                reach[1] += p0[y] * mass1[:, z] * alpha2
                for w in np.flatnonzero(p2[y, z]):
                    alpha3, _ = accept(dense(prefix + [y, z, w]), q[2])
                    reach[2] += p0[y] * mass1[:, z] * mass2[:, w] * alpha3
        out["reach"].append(reach)
        greedy = [int(np.argmax(raw(prefix)))]
        for _ in range(L):
            greedy.append(int(np.argmax(raw(prefix + greedy))))
        hits = np.array([[np.sum(draft_logits[i] > draft_logits[i, greedy[i + 1]]) < k for k in range(1, max_k + 1)]
                         for i in range(L)])
        out["greedy_reach"].append(np.cumprod(hits, axis=0))
        out["agree"].append(hits[:, 0])
    return {k: np.array(v) for k, v in out.items()}


def test_diagnostic_matches_brute_force(setup):
    pytest.importorskip("scipy")
    config, params, lookahead, tokens, anchors = setup
    spec = diagnostic.DiagnosticSpec(num_lookahead=L, sampling=SAMPLING, max_candidates=3, paths=400, batch=1)
    got = diagnostic.diagnose(params, config, lookahead, tokens, anchors, spec, progress=False)
    want = brute_force(config, params, lookahead, tokens, anchors, spec.max_candidates)

    assert got["anchors"] == 4
    np.testing.assert_allclose(got["ceiling"]["mixture"], [want["mixture1"].mean(), want["mixture2"].mean()],
                               rtol=1e-4)
    np.testing.assert_allclose(got["ceiling"]["optimum"], [want["optimum1"].mean(), want["optimum2"].mean()],
                               rtol=1e-4)
    # The optimum is a real ceiling: never below the mixture, and above it somewhere.
    assert np.all(want["optimum1"] >= want["mixture1"] - 1e-6) and np.any(want["optimum1"] > want["mixture1"] + 1e-3)
    reach = want["reach"].sum(0)  # pooled over anchors, [L, K]
    np.testing.assert_allclose(got["model_path"], [reach[0, 0] / 4, want["model_path2"].mean()], rtol=1e-4)
    for k in range(spec.max_candidates):
        exact = [reach[0, k] / 4, reach[1, k] / reach[0, k], reach[2, k] / reach[1, k]]
        sampled = got["acceptance"]["sampled"][str(k + 1)]
        np.testing.assert_allclose(sampled[:2], exact[:2], rtol=1e-4)
        # position 3 comes from sampled accepted prefixes (4 anchors x 400 paths)
        assert abs(sampled[2] - exact[2]) < 0.03, (k, sampled, exact)
        greedy = want["greedy_reach"].sum(0)[:, k]
        want_greedy = [greedy[0] / 4] + [g / d if d else None for g, d in zip(greedy[1:], greedy[:-1])]
        assert got["acceptance"]["greedy"][str(k + 1)] == pytest.approx(want_greedy)
    assert got["greedy_agreement"] == pytest.approx(want["agree"].mean(0).tolist())
    # more candidates never accept less (up to float32 rounding: a third candidate that adds nothing
    # came out 3e-8 below two on an AVX-512 CPU)
    for mode in ("sampled", "greedy"):
        first = [got["acceptance"][mode][str(k)][0] for k in (1, 2, 3)]
        assert all(more >= fewer - 1e-6 for fewer, more in zip(first, first[1:])) and first[-1] > first[0], first


def test_candidates_match_the_decoders_multi_candidate_rule():
    """P(one of K accepted) from `candidates` equals the acceptance frequency of
    `pass_jax.sampling.verify` on a draft tree of K siblings (fixed seed, 20,000 trials)."""
    rows, vocab = 20_000, 12
    p = jax.nn.softmax(jax.random.normal(jax.random.key(0), (vocab,)) * 2)
    q = jax.nn.softmax(jax.random.normal(jax.random.key(1), (vocab,)) * 2)
    alpha, mass = diagnostic.candidates(p, q, 3)
    for k in (1, 2, 3):
        tree = DraftTree((k,))
        drafts = sample(jax.random.key(2 + k), jnp.broadcast_to(q, (rows, k, vocab)))
        p_nodes = jnp.broadcast_to(p, (rows, k + 1, vocab))
        accepted, path, _, _ = verify(jax.random.key(10 + k), tree, drafts, q=jnp.broadcast_to(q, (rows, 1, vocab)),
                                      p=p_nodes)
        assert abs(float(accepted.mean()) - float(alpha[k - 1])) < 0.012
        token = jnp.take_along_axis(drafts, jnp.maximum(path[:, 0] - 1, 0)[:, None], axis=1)[:, 0]
        freq = np.bincount(np.asarray(token)[np.asarray(accepted) > 0], minlength=vocab) / rows
        np.testing.assert_allclose(freq, mass[k - 1], atol=0.012)


def test_optimum_beats_the_mixture_on_a_hand_example():
    # Two children, each sure of a different token: the mixture accepts 0.6^2 + 0.4^2 = 0.52, while
    # always drafting the likelier child's token accepts 0.6.
    weights = np.array([0.6, 0.4])
    probs = np.array([[1.0], [1.0]])
    index = np.array([[5], [7]])
    assert diagnostic.optimum_acceptance(weights, probs, index) == pytest.approx(0.6)
    mixture = diagnostic.mixture_acceptance(jnp.asarray(weights)[None], jnp.asarray(probs)[None],
                                            jnp.asarray(index)[None], 10)
    assert float(mixture[0]) == pytest.approx(0.52)
