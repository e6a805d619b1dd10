"""`-L auto`: the prediction from acceptance and call costs, and the call-cost timer's shapes."""
import jax
import pytest

from pass_jax import autotune
from pass_jax.iteration import Iteration

ACCEPTANCE = {"1": [0.5, 0.4, 0.3, 0.2], "2": [0.7, 0.5, 0.4, 0.3], "3": [0.8, 0.6, 0.5, 0.4]}


def test_expected_accepted_is_the_sum_of_reach_probabilities():
    assert autotune.expected_accepted(ACCEPTANCE, (1, 1, 1)) == pytest.approx(0.5 + 0.5 * 0.4 + 0.5 * 0.4 * 0.3)
    assert autotune.expected_accepted(ACCEPTANCE, (3, 1)) == pytest.approx(0.8 + 0.8 * 0.4)
    with pytest.raises(autotune.AutotuneError, match="4 candidates"):
        autotune.expected_accepted(ACCEPTANCE, (4,))
    with pytest.raises(autotune.AutotuneError, match="depth 5"):
        autotune.expected_accepted(ACCEPTANCE, (1,) * 5)
    # greedy metadata holds null where no iteration reached a depth: unreachable after a 0.0 rate,
    # an error where it can be reached (this crashed `bench --temperature 0 -L auto` on the shipped vectors)
    unreached = {"1": [0.25, 0.0, None, None], "2": [0.5, None]}
    assert autotune.expected_accepted(unreached, (1, 1, 1, 1)) == pytest.approx(0.25)
    assert autotune.predictable(Iteration(1, (1,) * 4), unreached)
    with pytest.raises(autotune.AutotuneError, match="2 candidates at depth 2"):
        autotune.expected_accepted(unreached, (2, 2))
    assert not autotune.predictable(Iteration(2, (2, 2)), unreached)


def test_call_shapes_and_prediction():
    two, one = Iteration(2, (3, 1)), Iteration(1, (3, 1))
    assert two.call_shapes() == [(3, 3), (7, 7)]  # drafting [x_n, LA_1, LA_2]; root + 3 + 3 nodes
    assert one.call_shapes() == [(21, 9)]  # 7 nodes x (1 + 2 look-ahead slots); 7 nodes + one group projected
    equal = {shape: 1.0 for shape in two.call_shapes() + one.call_shapes()}
    accepted = 0.8 + 0.8 * 0.4
    assert autotune.predict(two, ACCEPTANCE, equal) == pytest.approx(
        {"expected_accepted": accepted, "tokens_per_call": (accepted + 2) / 2, "ratio_vs_ar": (accepted + 2) / 2})
    assert autotune.predict(one, ACCEPTANCE, equal)["ratio_vs_ar"] == pytest.approx(accepted + 1)
    # a wide call that costs three ar steps makes single-call lose to two cheap calls
    costly = {**equal, (21, 9): 3.0}
    rows = autotune.choose([two, one], ACCEPTANCE, costly)
    assert [setting for setting, _ in rows] == [two, one]


def test_settings_without_acceptance_are_left_out_and_none_is_an_error():
    rows = autotune.choose(autotune.candidate_iterations(8), ACCEPTANCE,
                           {s: 1.0 for it in autotune.candidate_iterations(8) for s in it.call_shapes()})
    assert rows and all(setting.num_lookahead <= 4 and max(setting.draft_tree) <= 3 for setting, _ in rows)
    ratios = [prediction["ratio_vs_ar"] for _, prediction in rows]
    assert ratios == sorted(ratios, reverse=True)
    from pass_jax.lookahead import Resolved
    from pass_jax.sampling import PAPER
    with pytest.raises(autotune.AutotuneError, match="acceptance"):
        autotune.pick(None, Resolved(None, "given", {}), PAPER)


def test_measure_call_costs_times_every_shape(tiny):
    config, params = tiny
    model = type("Model", (), {"config": config, "params": params})()
    costs = autotune.measure_call_costs(model, [(5, 5), (21, 9)], context=16, repeats=2)
    assert set(costs) == {(1, 1), (5, 5), (21, 9)} and all(ms > 0 for ms in costs.values())
    assert autotune.relative(costs)[(1, 1)] == 1.0


def test_generate_auto_picks_a_setting_or_ar(make_hf_llama, tmp_path, capsys, monkeypatch):
    """`generate -L auto` times the shapes the metadata can predict, then runs the best setting, or ar
    (saying so) when no PaSS setting is predicted to beat it or its timed loop iterations are slower."""
    import json

    from pass_jax import lookahead
    from pass_jax.cli import main

    monkeypatch.setenv("PASS_JAX_CACHE", str(tmp_path / "cache"))
    hf_dir, _ = make_hf_llama(tmp_path / "llama")
    # calls cost 1% more per input token than ar's: a deterministic stand-in for the timer
    monkeypatch.setattr(autotune, "measure_call_costs",
                        lambda model, shapes, batch_size=1: {s: 1 + 0.01 * s[0] for s in {(1, 1), *shapes}})
    hidden = json.loads((hf_dir / "config.json").read_text())["hidden_size"]
    vectors = jax.random.normal(jax.random.key(0), (2, hidden)) * 0.02
    timed, prompts_seen, timed_sets = [], [], []  # the loop timer's ratio against ar (a stand-in), its prompts

    def timed_ratios(model, iterations, *args, prompt_ids=None, **kwargs):
        prompts_seen.append(prompt_ids)
        timed_sets.append(list(iterations))
        return [timed[0]] * len(iterations)

    monkeypatch.setattr(autotune, "timed_ratios", timed_ratios)
    reads = []  # the look-ahead file is read once per command, whatever auto picks
    real_read = lookahead.read
    monkeypatch.setattr(lookahead, "read", lambda *args, **kwargs: reads.append(1) or real_read(*args, **kwargs))
    # zero acceptance: no prediction passes 1.0x, but the context candidates are timed all the same;
    # without context candidates nothing is timed and the prediction alone chooses ar
    cases = ((0.99, 1.5, autotune.CPU_CONTEXT_CANDIDATES, "x ar from the timed decode loops; "),
             (0.99, 0.9, autotune.CPU_CONTEXT_CANDIDATES, "x ar from the timed decode loops; ar"),
             (0.0, 1.5, autotune.CPU_CONTEXT_CANDIDATES, "without its context drafts"),
             (0.0, 1.5, (), "no PaSS iteration is predicted to beat"))
    for rates, ratio, context, expect in cases:
        timed[:], reads[:], timed_sets[:] = [ratio], [], []
        monkeypatch.setattr(autotune, "CPU_CONTEXT_CANDIDATES", context)
        acceptance = {str(k): [rates, rates] for k in (1, 2, 3, 4)}
        path = tmp_path / f"la{rates}-{ratio}-{len(context)}.npz"
        lookahead.save(path, vectors, {"acceptance": {"sampled": acceptance, "greedy": acceptance}})
        code = main(["generate", "--model", str(hf_dir), "--lookahead", str(path), "-L", "auto", "--prompt", "the fox",
                     "--max-new-tokens", "4", "--json", "--retune"])  # the same parameters each case: tune again
        out, err = capsys.readouterr()
        assert code == 0 and expect in err, err
        assert len(reads) == 1, reads
        summary = json.loads(out.splitlines()[-1])["summary"]  # what it decoded with
        assert summary["mode"] == ("pass" if ratio > 1 and (rates or context) else "ar"), (summary, err)
        # one timing for all, ar shared: the two best predictions when they pass 1.0x, every context candidate
        if rates or context:
            assert len(timed_sets) == 1 and len(timed_sets[0]) == (2 if rates else 0) + len(context), timed_sets
            assert set(timed_sets[0][len(timed_sets[0]) - len(context):]) == set(context), timed_sets
        else:
            assert not timed_sets
    # the loop check decodes the user's own prompt (here raw: the tiny model has no chat template)
    from pass_jax.loading import load_model
    assert prompts_seen and prompts_seen[0] == list(load_model(str(hf_dir)).tokenizer("the fox")["input_ids"])


def test_timed_ratios_runs_the_real_loops(make_hf_llama, tmp_path):
    """The loop timer runs the real jitted decode of ar and of PaSS settings, one with a context chain,
    in shared rounds on a loaded model."""
    from pass_jax.loading import load_model
    from pass_jax.sampling import SamplingConfig

    model = load_model(str(make_hf_llama(tmp_path / "llama")[0]))
    vectors = jax.random.normal(jax.random.key(0), (2, model.config.hidden_size)) * 0.02
    ratios = autotune.timed_ratios(model, [Iteration(2, (1,)), Iteration(1, (2, 1)), Iteration(1, (1,), 2)],
                                   vectors, SamplingConfig(), new_tokens=16, rounds=2, prompt_ids=[5, 9, 2, 7])
    assert len(ratios) == 3 and all(0 < ratio < float("inf") for ratio in ratios)
