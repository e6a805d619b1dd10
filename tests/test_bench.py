"""`pass-jax bench` end to end on a tiny random LLaMA (pass-jax and transformers load the same dir)."""
import json
import math

import jax

import pytest

from pass_jax import bench, loading
from pass_jax.bench import AR, HF_GREEDY, HF_LOOKUP, HF_SAMPLE, PASS, BenchSettings
from pass_jax.bench.rows import row_iteration
from pass_jax.cli import main
from pass_jax.iteration import Iteration
from pass_jax.sampling import SamplingConfig

ROW_KEYS = {"domain", "method", "backend", "decoding", "num_lookahead", "lookahead_source", "batch_size", "prompts",
            "rounds", "new_tokens", "wall_s", "tokens_per_s", "tokens_per_s_min", "tokens_per_s_max",
            "tokens_per_s_rounds", "ratio_vs_ar", "ratio_vs_transformers_greedy", "tokens_per_call",
            "calls_per_token", "mean_accepted", "predicted_ratio_vs_ar", "predicted_ratio_equal_call_cost",
            "position_acceptance", "tokens_per_iteration_hist", "compile_s",
            "peak_host_mb", "peak_device_mb", "calls", "draft_tree", "setting", "auto"}
MACHINE_KEYS = {"cpu", "cores", "jax", "jaxlib", "transformers", "torch", "backend", "device_kind"}
PROMPTS = {"text": ["the quick brown fox jumps over", "parallel speculative sampling drafts several"],
           "code": ["jax flax llama cache mesh shard tensor"]}
SETTINGS = BenchSettings(num_lookahead=(3,), calls=(2, 1), draft_trees=((2, 1),), auto=False, max_new_tokens=8,
                         sampling=SamplingConfig(temperature=0.8, top_k=10), rounds=2, lookahead="none")
PASS_SETTINGS = ["L=3, 2 calls", "L=3, 1 call", "tree 2,1, 2 calls", "tree 2,1, 1 call"]


@pytest.fixture(scope="module")
def hf_dir(make_hf_llama, tmp_path_factory):
    path, _ = make_hf_llama(tmp_path_factory.mktemp("bench_llama"))
    return path


@pytest.fixture(scope="module")
def tiny_model(hf_dir):
    from pass_jax.loading import load_model

    return load_model(hf_dir)


@pytest.fixture(scope="module")
def report(tiny_model):
    return bench.run_bench(tiny_model, PROMPTS, SETTINGS)


def _row(report, domain, method, setting="–"):
    return next(r for r in report["runs"] if (r["domain"], r["method"], r["setting"]) == (domain, method, setting))


def test_report_has_every_method_and_field(report):
    assert MACHINE_KEYS <= set(report["machine"])
    assert report["settings"]["num_lookahead"] == [3] and report["settings"]["rounds"] == 2
    expected = {(d, m, n) for d in PROMPTS for m, n in
                [(AR, "–"), *[(PASS, label) for label in PASS_SETTINGS], (HF_GREEDY, "–"), (HF_SAMPLE, "–"),
                 (HF_LOOKUP, "–")]}
    assert {(r["domain"], r["method"], r["setting"]) for r in report["runs"]} == expected
    for row in report["runs"]:
        assert set(row) >= ROW_KEYS, ROW_KEYS - set(row)
        assert row["rounds"] == 2 and len(row["tokens_per_s_rounds"]) == 2
        assert row["tokens_per_s_min"] <= row["tokens_per_s"] <= row["tokens_per_s_max"]
        assert row["new_tokens"] > 0 and row["peak_host_mb"] > 0
    json.dumps(report)  # serialisable as is


def test_ratios_match_own_tokens_per_s(report):
    for row in report["runs"]:
        ar = _row(report, row["domain"], AR)["tokens_per_s"]
        hf = _row(report, row["domain"], HF_GREEDY)["tokens_per_s"]
        assert math.isclose(row["ratio_vs_ar"], row["tokens_per_s"] / ar)
        assert math.isclose(row["ratio_vs_transformers_greedy"], row["tokens_per_s"] / hf)
    assert _row(report, "text", AR)["ratio_vs_ar"] == 1.0


def test_pass_jax_statistics(report):
    ar = _row(report, "text", AR)
    assert ar["calls_per_token"] == pytest.approx(1.0) and ar["mean_accepted"] == 0.0
    for label in PASS_SETTINGS:
        row = _row(report, "text", PASS, label)
        num_lookahead, calls = row["num_lookahead"], row["calls"]
        assert len(row["position_acceptance"]) == num_lookahead == len(row["draft_tree"])
        assert all(0.0 <= a <= 1.0 for a in row["position_acceptance"])
        assert set(row["tokens_per_iteration_hist"]) == {str(a + calls) for a in range(num_lookahead + 1)}
        assert 0.0 <= row["mean_accepted"] <= num_lookahead
        assert row["tokens_per_call"] == pytest.approx(1 / row["calls_per_token"])
        assert row["compile_s"] > 0 and row["lookahead_source"].startswith("untrained")
    hf = _row(report, "text", HF_LOOKUP)
    assert hf["tokens_per_call"] is None and hf["batch_size"] == 1
    assert "| text | pass-jax-pass | L=3, 1 call |" in bench.markdown_table(report["runs"])


def test_plots_are_written(report, tmp_path):
    paths = bench.write_plots(report, tmp_path / "plots")
    assert [p.name for p in paths] == list(bench.PLOT_FILES)
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_without_transformers(hf_dir, tmp_path, monkeypatch, capsys):
    """The whole command without the torch extra: transformers rows skipped with a note, JSON and plots written."""
    monkeypatch.setattr(bench.run, "transformers_unavailable_reason", lambda: "torch is not installed (simulated)")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in PROMPTS["text"]))
    out = tmp_path / "bench.json"
    code = main(["bench", "--model", str(hf_dir), "--prompts", str(prompts), "--num-lookahead", "2",
                 "--calls", "1", "--draft-tree", "none",
                 "--max-new-tokens", "6", "--rounds", "1", "--lookahead", "none", "--temperature", "0",
                 "--json", str(out), "--plot", str(tmp_path / "plots")])
    captured = capsys.readouterr()
    assert code == 0
    assert "transformers+torch rows skipped: torch is not installed (simulated)" in captured.err
    report = json.loads(out.read_text())
    assert {r["method"] for r in report["runs"]} == {AR, PASS}
    assert all(r["ratio_vs_transformers_greedy"] is None and r["decoding"] == "greedy" for r in report["runs"])
    assert any("skipped" in note for note in report["notes"])
    assert "| custom | pass-jax-ar |" in captured.out
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(bench.PLOT_FILES)


@pytest.mark.parametrize("argv, message", [
    (["--num-lookahead", "0,2"], "must be >= 1"),
    (["--num-lookahead", "two"], "comma list of integers"),
    (["--rounds", "0"], "--rounds must be >= 1"),
    (["--calls", "3"], "calls must be 1"),
    (["--draft-tree", "2,0"], ">= 1 candidate per depth"),
    (["--draft-tree", "2,x"], "comma-separated candidate counts"),
    (["--top-k", "0"], "top-k must be >= 1"),
    (["--prompts", "missing.jsonl"], "not found"),
])
def test_bad_input_is_one_line_error_before_loading(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("loaded the model"))
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_prefix_prompts_fit_the_token_budget(sp_tokenizer, monkeypatch):
    from pass_jax import corpora

    docs = [corpora.Document("short", "short", "the fox"),
            corpora.Document("long", "long", " ".join(["parallel speculative sampling drafts tokens"] * 20))]
    monkeypatch.setattr(corpora, "held_out_documents", lambda source, **_: docs)
    prompts = bench.corpus_prompts(sp_tokenizer, "text", 2, prompt_tokens=12)
    assert len(prompts) == 1 and docs[1].text.startswith(prompts[0])  # the short document is skipped
    assert len(sp_tokenizer(prompts[0])["input_ids"]) <= 12


def test_count_new_tokens_stops_at_eos():
    assert bench.count_new_tokens([5, 6, 2, 0, 0], eos_id=2) == 3
    assert bench.count_new_tokens([5, 6, 7], eos_id=2) == 3


def test_roofline_relates_ar_step_to_bandwidth(report, tiny_model):
    r = report["roofline"]
    ar = _row(report, "text", AR)
    assert r["weight_bytes"] == sum(x.nbytes for x in jax.tree.leaves(tiny_model.params))
    assert r["reduction_gb_s"] > 0 and r["matvec_gb_s"] > 0
    assert r["ar_step_ms"] == pytest.approx(1000 / ar["tokens_per_s"])
    assert r["ar_step_over_roofline"] == pytest.approx(
        r["ar_step_ms"] / (r["weight_bytes"] / max(r["reduction_gb_s"], r["matvec_gb_s"]) / 1e6))


def test_call_costs_predict_pass_from_its_acceptance(report):
    """Every call shape is timed; each PaSS row's prediction is its tokens per iteration over the
    iteration's cost in ar steps."""
    from pass_jax.iteration import Iteration

    costs = report["call_costs"]
    # ar; two calls: [x_n, LA..] and the tree (widths 4, and 3 + 5 for tree 2,1: 1 + 2 + 2 nodes);
    # one call: nodes x (1 + L) wide with nodes + L positions projected
    assert set(costs["ms"]) == {"1", "4", "5", "3", "16/7", "15/7"}
    assert all(ms > 0 for ms in costs["ms"].values()) and costs["relative"]["1"] == pytest.approx(1.0)
    for row in report["runs"]:
        if row["method"] == PASS:
            shapes = Iteration(row["calls"], tuple(row["draft_tree"])).call_shapes()
            cost = sum(costs["relative"][bench.cost_key(shape)] for shape in shapes)
            assert row["predicted_ratio_vs_ar"] == pytest.approx(row["tokens_per_call"] * row["calls"] / cost)
            assert row["predicted_ratio_equal_call_cost"] == row["tokens_per_call"]
        else:
            assert row["predicted_ratio_vs_ar"] is None
    table = bench.call_cost_table(report)
    assert table.count("\n| text |") == len(PASS_SETTINGS) and table.count("\n| code |") == len(PASS_SETTINGS)


def test_auto_row_is_the_best_predicted_setting(tiny_model, tmp_path):
    """With acceptance metadata beside the vectors, the bench adds the row `-L auto` picks."""
    from pass_jax import autotune, lookahead

    acceptance = {"1": [0.9, 0.9], "2": [0.95, 0.9], "3": [0.97, 0.9], "4": [0.98, 0.9]}
    path = tmp_path / "la.npz"
    lookahead.save(path, lookahead.init_random(tiny_model.config, 2, jax.random.key(0)),
                   {"acceptance": {"sampled": acceptance, "greedy": acceptance}})
    settings = BenchSettings(num_lookahead=(1,), calls=(2,), draft_trees=(), auto=True, max_new_tokens=6,
                             sampling=SamplingConfig(temperature=0.8, top_k=10), rounds=1, lookahead=str(path),
                             transformers=False, roofline=False)
    report = bench.run_bench(tiny_model, {"text": PROMPTS["text"][:1]}, settings)
    auto = [r for r in report["runs"] if r["auto"]]
    assert len(auto) == 1 and auto[0]["setting"].endswith("(auto)")
    relative = {tuple(int(x) for x in k.split("/")) if "/" in k else (int(k), int(k)): v
                for k, v in report["call_costs"]["relative"].items()}
    # the faster timed loop of the best TIMED_CANDIDATES predictions (on a CPU among its narrow calls)
    rows = autotune.choose(autotune.candidate_iterations(max_width=autotune.CPU_MAX_WIDTH), acceptance, relative)
    timed = {(it.calls, it.draft_tree) for it, _ in rows[:autotune.TIMED_CANDIDATES]}
    assert (auto[0]["calls"], tuple(auto[0]["draft_tree"])) in timed


def test_settings_compare_each_proposer_set():
    """Repeated --drafts: every chain and tree runs with each proposer set (`parse_drafts`)."""
    settings = BenchSettings(num_lookahead=(2,), calls=(1,), draft_trees=(), auto=False,
                             drafts=("lookahead", "lookahead,context:2:4,recycle:3"))
    assert [i.label() for i in settings.iterations()] == ["L=2, 1 call", "L=2, 1 call, context 2 n<=4, recycle 3"]
    row = {"calls": 1, "draft_tree": [1, 1], "context": 2, "ngram": 4, "recycle": 3}
    assert row_iteration(row) == settings.iterations()[1]
    assert row_iteration({"calls": 1, "draft_tree": [1, 1], "context": 2}) == Iteration(1, (1, 1), 2)  # older rows
