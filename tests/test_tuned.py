"""The tuned default of `pass-jax generate`: tuned once per (machine, model, look-ahead parameters,
sampling family), stored, reused; explicit options win; damaged or foreign profiles are retuned.

`autotune.pick` is replaced by a counter that returns a fixed choice: what is under test here is
when it runs and what the command does with its answer (test_autotune runs the real timers)."""
import json

import jax
import pytest

from pass_jax import autotune, tuned
from pass_jax.iteration import Iteration

ACCEPTANCE = {str(k): [0.5, 0.4] for k in (1, 2, 3, 4)}


@pytest.fixture
def setup(make_hf_llama, tmp_path, monkeypatch, capsys):
    """(run(*argv) -> (summary, stderr), picks: the iterations the stub chose, in order, one per tuning)."""
    from pass_jax import lookahead
    from pass_jax.cli import main

    monkeypatch.setenv("PASS_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PASS_JAX_COMPILATION_CACHE", "0")
    hf_dir, _ = make_hf_llama(tmp_path / "llama")
    hidden = json.loads((hf_dir / "config.json").read_text())["hidden_size"]
    vectors = jax.random.normal(jax.random.key(0), (2, hidden)) * 0.02
    lookahead.save(tmp_path / "la.npz", vectors, {"acceptance": {"sampled": ACCEPTANCE, "greedy": ACCEPTANCE}})
    lookahead.save(tmp_path / "other.npz", vectors * 2, {"acceptance": {"sampled": ACCEPTANCE, "greedy": ACCEPTANCE}})
    lookahead.save(tmp_path / "bare.npz", vectors)
    choice, picks = [Iteration(1, (1,)), 1.3], []

    def fake_pick(model, la, sampling, batch_size=1, prompt_ids=None, costs=None, log=None):
        iteration, ratio = choice
        best = iteration if iteration.mode == "pass" else Iteration(2, (1,))
        picks.append(iteration)
        return autotune.Pick(iteration, best, {"tokens_per_call": 1.5, "ratio_vs_ar": 1.2}, ratio, [], {})

    monkeypatch.setattr(autotune, "pick", fake_pick)

    def run(*argv, lookahead_file="la.npz"):
        code = main(["generate", "--model", str(hf_dir), "--lookahead", str(tmp_path / lookahead_file),
                     "--prompt", "the fox", "--max-new-tokens", "4", "--json", *argv])
        out, err = capsys.readouterr()
        assert code == 0, err
        return json.loads(out.splitlines()[-1])["summary"], err

    return run, picks, choice


def test_tuned_once_then_reused_and_explicit_options_win(setup):
    run, picks, _ = setup
    summary, err = run()
    assert picks == [Iteration(1, (1,))] and "tuning PaSS settings for this machine, about" in err, err
    assert "decoding with PaSS L=1, 1 call: 1.30x ar on this machine (tuned now)" in err, err
    assert summary["label"] == "L=1, 1 call"
    summary, err = run()  # the stored profile: no tuning, one line naming it
    assert len(picks) == 1 and "tuning PaSS" not in err and "tuned earlier" in err, err
    assert summary["label"] == "L=1, 1 call"
    for argv, label in ((["--mode", "ar"], "ar"), (["-L", "2"], "L=2, 1 call"),
                        (["--calls", "2"], "tree 4,2, 2 calls, context 4"), (["--draft-tree", "2"], "tree 2, 1 call")):
        summary, err = run(*argv)
        assert len(picks) == 1 and "decoding with" not in err, (argv, err)
        assert summary["label"] == label, (argv, summary)
    summary, err = run("--retune")
    assert len(picks) == 2 and "tuning PaSS settings" in err and summary["label"] == "L=1, 1 call", err


def test_ar_when_nothing_beats_ar_and_mode_pass_takes_the_best_pass(setup):
    run, picks, choice = setup
    choice[:] = [Iteration.AR, 0.9]
    summary, err = run()
    assert summary["mode"] == "ar" and "decoding with ar: no PaSS setting beat plain decoding" in err, err
    assert "0.90x ar" in err
    summary, err = run("--mode", "pass")  # the profile's fastest PaSS setting, not ar
    assert len(picks) == 1 and summary["label"] == "L=1, 2 calls", err
    assert "the fastest PaSS setting on this machine (--mode pass)" in err


def test_profiles_are_per_parameters_sampling_and_machine(setup, monkeypatch):
    run, picks, _ = setup
    run()
    run("--temperature", "0")  # another sampling family: tuned apart
    run(lookahead_file="other.npz")  # other parameters: tuned apart
    assert len(picks) == 3
    run("--top-k", "20")  # the same family (sampled): the stored profile
    assert len(picks) == 3
    monkeypatch.setattr(tuned.os, "cpu_count", lambda: 64)  # another machine kind
    run()
    assert len(picks) == 4


@pytest.mark.parametrize("damage", ["not json {", json.dumps({"key": {"backend": "tpu"}, "iteration": "ar"}),
                                    "foreign-with-our-labels", ""])
def test_damaged_or_foreign_profile_is_retuned(setup, damage):
    run, picks, _ = setup
    run()
    path = next((tuned.cache_dir() / "tuning").glob("*.json"))
    if damage == "foreign-with-our-labels":  # a valid profile of another key, copied over ours
        data = json.loads(path.read_text())
        data["key"]["cpus"] = -1
        damage = json.dumps(data)
    path.write_text(damage)
    summary, err = run()
    reason = "foreign" if damage.startswith("{") else "damaged"
    assert len(picks) == 2 and f"the tuning profile {path} is {reason}" in err, err
    assert summary["label"] == "L=1, 1 call"
    assert json.loads(path.read_text())["iteration"] == "L=1, 1 call"  # rewritten whole
    _, err = run()
    assert len(picks) == 2 and "tuned earlier" in err


def test_parameters_without_acceptance_decode_with_ar(setup):
    run, picks, _ = setup
    summary, err = run(lookahead_file="bare.npz")
    assert not picks and summary["mode"] == "ar" and "carry no measured acceptance" in err, err


def test_candidates_include_narrow_calls_and_respect_the_width_cap():
    found = autotune.candidate_iterations(max_width=autotune.CPU_MAX_WIDTH)
    assert all(it.width <= autotune.CPU_MAX_WIDTH for it in found)
    # width 2-5: L=1 one call (4), and two calls with a 2- or 3-candidate first draft (2 then 3 or 4)
    for narrow in (Iteration(1, (1,)), Iteration(2, (2,)), Iteration(2, (3,)), Iteration(2, (1, 1))):
        assert narrow in found and narrow.width <= 5, narrow
    assert Iteration(1, (4, 2)) not in found  # 39 wide


@pytest.mark.parametrize("backend, context", [("cpu", autotune.CPU_CONTEXT_CANDIDATES),
                                              ("gpu", autotune.ACCELERATOR_CONTEXT_CANDIDATES)])
def test_context_candidates_are_timed_as_real_loops_and_can_win(monkeypatch, backend, context):
    """No metadata predicts context drafts, so the chooser times their decode loops even where no
    prediction passes ar: on a CPU the narrow ones, elsewhere the default iteration with its chain."""
    from pass_jax.iteration import DEFAULT_ITERATION
    from pass_jax.lookahead import Resolved
    from pass_jax.sampling import PAPER

    assert DEFAULT_ITERATION in autotune.ACCELERATOR_CONTEXT_CANDIDATES
    assert all(it.context and it.width <= 8 for it in autotune.CPU_CONTEXT_CANDIDATES)
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    # every call costs 1.3 ar steps: no prediction beats ar at this acceptance
    monkeypatch.setattr(autotune, "measure_call_costs",
                        lambda model, shapes, batch_size=1: {s: 1.0 if s == (1, 1) else 1.3 for s in {(1, 1), *shapes}})
    ratios, timed = {}, []

    def timed_ratios(model, iterations, *args, **kwargs):
        timed.append(list(iterations))
        return [ratios.get(it, 0.8) for it in iterations]

    monkeypatch.setattr(autotune, "timed_ratios", timed_ratios)
    low = Resolved(None, "given", {"acceptance": {"sampled": {str(k): [0.1, 0.1] for k in (1, 2, 3, 4)}}})
    winner = context[-1]
    ratios[winner] = 1.25
    chosen = autotune.pick(None, low, PAPER)
    assert len(timed) == 1 and set(timed[0]) == set(context)  # in one set of rounds against ar, though predicted below 1.0x
    assert chosen.iteration == winner and chosen.timed_ratio == 1.25
    assert "without its context drafts" in chosen.summary() and winner.label() in chosen.summary()
    ratios[winner] = 0.95  # none beats ar: ar, the best timed context setting named
    chosen = autotune.pick(None, low, PAPER)
    assert chosen.iteration == Iteration.AR and chosen.best in context and chosen.timed_ratio == 0.95
