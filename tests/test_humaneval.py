"""HumanEval harness: canonical solutions pass, wrong/hanging/exiting completions fail, pass@k is exact."""
import json

import numpy as np
import pytest

from pass_jax import humaneval as he
from pass_jax import loading
from pass_jax.cli import main
from pass_jax.iteration import Iteration

TIMEOUT = 30.0  # generous: a loaded 2-core machine can take seconds to start an interpreter


@pytest.fixture(scope="module")
def problems():
    return he.load_problems(limit=4)


def test_canonical_solutions_pass_and_wrong_ones_fail(problems):
    canonical = he.check_all([(p, p["canonical_solution"]) for p in problems], TIMEOUT, workers=2)
    assert [r.status for r in canonical] == ["passed"] * len(problems)
    # Each problem with the next problem's solution, and with a body that returns None.
    swapped = [(p, q["canonical_solution"]) for p, q in zip(problems, problems[1:] + problems[:1])]
    wrong = he.check_all(swapped + [(p, "    return None\n") for p in problems], TIMEOUT, workers=2)
    assert not any(r.passed for r in wrong)
    assert all(r.status == "failed" and "exit code" in r.output for r in wrong)


def test_infinite_loop_times_out(problems):
    result = he.check_completion(problems[0], "    while True:\n        pass\n", timeout=2.0)
    assert result.status == "timeout" and not result.passed


@pytest.mark.parametrize("completion", [
    "    import sys\n    sys.exit(0)\n",  # inside the function: exits when check() calls it
    "    import os\n    os._exit(0)\n",
    "    return 0\nimport sys\nsys.exit(0)\n",  # at top level, before the tests run
    "    return 0\nimport os\nos._exit(0)\n",
    "    return 0\nprint('pass-jax-humaneval-passed-0000000000000000')\nimport os\nos._exit(0)\n",  # a guessed sentinel
    "    raise SystemExit(0)\n",
])
def test_exiting_early_counts_as_failed(problems, completion):
    result = he.check_completion(problems[0], completion, TIMEOUT)
    assert not result.passed and result.status == "failed"


def test_forked_child_does_not_hang_the_harness(problems):
    completion = ("    return 0\nimport os, time\nif os.fork() == 0:\n    time.sleep(300)\n    os._exit(0)\n")
    result = he.check_completion(problems[0], completion, TIMEOUT)  # returns: the group is killed
    assert not result.passed


def test_network_and_environment_are_restricted():
    program = he.PREAMBLE + (
        "import os, socket\n"
        "try:\n    socket.socket().connect(('127.0.0.1', 9))\nexcept OSError as err:\n    print('connect:', err)\n"
        "print('proxy:', os.environ['https_proxy'], 'keys:', sorted(os.environ))\n")
    result = he.run_program(program, TIMEOUT, sentinel="never printed")
    assert result.status == "failed"
    assert "connect: network access is disabled" in result.output
    assert "proxy: http://127.0.0.1:9" in result.output and "PYTHONPATH" not in result.output


def test_truncate_completion():
    assert he.truncate_completion("    return 1\n\ndef helper():\n    pass") == "    return 1\n"
    assert he.truncate_completion("    x = 1\n    # inner comment\n    return x\n# trailing") == \
        "    x = 1\n    # inner comment\n    return x"
    assert he.truncate_completion("    return 2\nif __name__ == '__main__':\n") == "    return 2"
    assert he.truncate_completion("    return 3\n") == "    return 3\n"


@pytest.mark.parametrize("n, c, k, expected", [
    (5, 0, 1, 0.0), (5, 5, 1, 1.0), (5, 2, 1, 0.4),
    (5, 2, 2, 0.7),    # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (10, 1, 5, 0.5),   # 1 - C(9,5)/C(10,5) = 1 - 126/252
    (4, 3, 2, 1.0),    # n - c < k: every draw of 2 holds a correct sample
    (6, 2, 3, 0.8),    # 1 - C(4,3)/C(6,3) = 1 - 4/20
])
def test_pass_at_k(n, c, k, expected):
    assert he.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_rejects_bad_counts():
    with pytest.raises(he.HumanEvalError):
        he.pass_at_k(3, 1, 4)


def test_statistics():
    assert he.sign_test(5, 0) == pytest.approx(2 / 32)
    assert he.sign_test(0, 0) == 1.0 and he.sign_test(3, 3) == 1.0
    assert he.bootstrap_ci([0.5] * 10) == (0.5, 0.5)
    a = np.array([[1, 0], [0, 0], [1, 1], [0, 1]], bool)
    b = np.array([[1, 1], [1, 0], [1, 1], [0, 0]], bool)
    comparison = he.paired_comparison(a, b)
    assert comparison["pass_at_1_difference"] == pytest.approx((0.5 + 0.5 + 0 - 0.5) / 4)
    assert (comparison["problems_b_better"], comparison["problems_a_better"], comparison["problems_tied"]) == (2, 1, 1)
    assert comparison["ci_low"] <= comparison["pass_at_1_difference"] <= comparison["ci_high"]
    scores = he.score(a, ks=(1, 2))
    assert scores["1"]["estimate"] == pytest.approx(0.5) and scores["2"]["estimate"] == pytest.approx(0.75)


def test_cli_end_to_end_with_stub_generation(tmp_path, monkeypatch, capsys):
    """Everything but the model: pass gets canonical solutions, ar wrong ones."""
    def fake_sample(model, problems, mode, settings, progress=False, found=None):
        body = (lambda p: p["canonical_solution"]) if mode == "pass" else (lambda p: "    return None\n# done")
        summary = {"tokens_per_s": 1.0, "tokens_per_call": 1.0}
        return [[body(p)] * settings.num_samples for p in problems], summary

    monkeypatch.setattr(he.evaluation, "sample_completions", fake_sample)
    monkeypatch.setattr(loading, "load_model", lambda name: object())
    out = tmp_path / "humaneval.json"
    assert main(["eval", "humaneval", "--limit", "3", "--num-samples", "2", "--k", "1,2", "--timeout", str(TIMEOUT),
                 "--calls", "2", "--draft-tree", "3,1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["problems"] == 3 and report["settings"]["ks"] == [1, 2]
    # the iteration, as generate reads it
    assert report["settings"]["iteration"] == {"calls": 2, "draft_tree": [3, 1], "context": 0, "ngram": 3, "recycle": 0}
    assert report["modes"]["pass"]["pass_at_k"]["1"]["estimate"] == 1.0
    assert report["modes"]["ar"]["pass_at_k"]["2"]["estimate"] == 0.0
    assert report["comparison"]["pass_at_1_difference"] == 1.0 and report["comparison"]["problems_b_better"] == 3
    assert len(report["samples"]) == 2 * 3 * 2 and all(s["completion"] == "    return None"
                                                       for s in report["samples"] if s["mode"] == "ar")
    printed = capsys.readouterr().out
    assert "| pass | 1.000 [1.000, 1.000] |" in printed and "pass better on 3" in printed


@pytest.mark.parametrize("argv, message", [
    (["--modes", "ar,beam"], "--modes takes a comma list"),
    (["--num-samples", "2", "--k", "1,5"], "--k values must be in 1..--num-samples"),
    (["--limit", "0"], "--limit must be >= 1"),
    (["--problems", "missing.jsonl"], "not found"),
    (["--num-lookahead", "0"], "at least one look-ahead step"),
    (["--draft-tree", "2,2", "-L", "3"], "has 2 depths but --num-lookahead is 3"),
])
def test_bad_input_is_one_line_error(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("loaded the model"))
    assert main(["eval", "humaneval", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_sample_completions_with_a_tiny_model(make_hf_llama, tmp_path):
    """The generation path for real: one Generator per mode, num_samples completions per problem."""
    from pass_jax.loading import load_model

    path, _ = make_hf_llama(tmp_path / "llama")
    settings = he.EvalSettings(modes=("pass",), iteration=Iteration.chain(1), lookahead="none", num_samples=2,
                               max_new_tokens=4, batch_size=2)
    short = [{"task_id": f"toy/{i}", "prompt": f"def the_fox_{i}(tensor):\n", "test": "", "entry_point": "f"}
             for i in range(2)]  # short prompts: the tiny model has a 256-token context
    completions, summary = he.sample_completions(load_model(path), short, "pass", settings)
    assert summary["iteration"] == "L=1, 1 call"
    assert len(completions) == 2 and all(len(texts) == 2 for texts in completions)
    assert all(isinstance(text, str) for texts in completions for text in texts)
    assert summary["new_tokens"] > 0 and summary["lookahead_source"].startswith("untrained")


def test_chat_style_prompt_and_truncation(problems):
    """A chat reply (imports, a helper, the function, then prose) runs after the prompt and passes."""
    class Template:
        chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert not tokenize and add_generation_prompt
            return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    problem = problems[0]
    prompt = he.model_prompt(problem, "chat", Template())
    assert prompt.startswith("<user>" + he.CHAT_INSTRUCTION) and problem["prompt"] in prompt
    assert prompt.endswith("<assistant>" + he.CODE_FENCE)
    assert he.model_prompt(problem, "raw") == problem["prompt"]
    body = problem["canonical_solution"]
    reply = (f"import math\n\n\ndef helper():\n    return 1\n\n\n{problem['prompt']}{body}```\n\n"
             "This function checks every pair.\n```python\nprint(1)\n```")
    completion = he.truncate_completion(reply, "chat")
    assert completion.endswith(body) and "```" not in completion
    assert he.check_completion(problem, completion, timeout=TIMEOUT).passed
    # the raw stop sequences would have cut the reply before the function
    assert not he.check_completion(problem, he.truncate_completion(reply, "raw"), timeout=TIMEOUT).passed
    assert he.truncate_completion("    return 2\nif __name__ == '__main__':\n    f()", "chat") == "    return 2"


def test_prompt_style_resolution():
    class WithTemplate:
        chat_template = "{{ messages }}"

    assert he.resolve_prompt_style(WithTemplate(), "auto") == "chat"
    assert he.resolve_prompt_style(object(), "auto") == "raw"
    assert he.resolve_prompt_style(WithTemplate(), "raw") == "raw"
    with pytest.raises(he.HumanEvalError, match="no chat template"):
        he.resolve_prompt_style(object(), "chat")
