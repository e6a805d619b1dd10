"""`pass-jax generate`: the main job's output format, and one-line errors for bad input."""
import json

import numpy as np
import pytest

from pass_jax import cli, loading
from pass_jax import lookahead as lookahead_lib


@pytest.fixture
def cli_model(smollm2, monkeypatch):
    """The CLI loads the session's SmolLM2 instead of re-reading the GGUF for each test."""
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: smollm2)
    return smollm2


def run_cli(capsys, *argv):
    code = cli.main(["generate", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, message):
    """Exit code 2 and one `error:` line (progress lines may precede it), never a traceback."""
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and "Traceback" not in err
    assert len(errors) == 1 and message in errors[0], err


def test_generate_json_output(cli_model, capsys):
    code, out, err = run_cli(capsys, "--prompt", "The capital of France is", "--prompt", "def add(a, b):",
                             "--max-new-tokens", "12", "--temperature", "0", "--num-lookahead", "3",
                             "--lookahead", "none", "--json")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 3
    for record in lines[:2]:
        assert set(record) == {"prompt", "text", "tokens", "stats"}
        assert set(record["stats"]) == {"model_calls", "new_tokens", "tokens_per_call", "mean_accepted",
                                        "wall_s", "tokens_per_s"}
        assert 1 <= record["stats"]["new_tokens"] == len(record["tokens"]) <= 12
        assert record["stats"]["tokens_per_call"] >= 0.5
    assert "Paris" in lines[0]["text"]
    summary = lines[2]["summary"]
    assert summary["prompts"] == 2 and summary["compile_s"] > 0 and summary["wall_s"] > 0
    assert summary["new_tokens"] == sum(r["stats"]["new_tokens"] for r in lines[:2])


def test_ar_and_pass_agree_through_cli(cli_model, capsys, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Once upon a time"}\n\n{"prompt": "import numpy as np\\n"}\n')
    outputs = {}
    for mode in ("ar", "pass"):
        code, out, err = run_cli(capsys, "--prompts", str(prompts), "--mode", mode, "--temperature", "0",
                                 "--max-new-tokens", "10", "--batch-size", "2", "--json")
        assert code == 0, err
        outputs[mode] = [json.loads(line)["tokens"] for line in out.splitlines()[:2]]
    assert outputs["ar"] == outputs["pass"]


@pytest.mark.parametrize("argv, message", [
    (["--prompt", "   "], "empty prompt"),
    ([], "no prompt"),
    (["--prompt", "hi", "--num-lookahead", "0"], "at least one look-ahead step"),
    (["--prompt", "hi", "--top-k", "0"], "top-k must be >= 1"),
    (["--prompt", "hi", "--top-p", "0"], "top-p must be in (0, 1]"),
    (["--prompt", "hi", "--top-p", "1.5"], "top-p must be in (0, 1]"),
    (["--prompt", "hi", "--temperature", "-1"], "temperature must be 0 (greedy) or a finite number"),
    (["--prompts", "/nonexistent/p.jsonl"], "not found"),
    (["--prompt", "hi", "--max-new-tokens", "9000"], "exceeds the model's context of 8192"),
])
def test_bad_input_one_line_errors(cli_model, capsys, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, message)


def test_bad_model_path_is_one_line(capsys):
    code, _, err = run_cli(capsys, "--prompt", "hi", "--model", "/nonexistent/model")
    assert_one_line_error(code, err, "not found")


def test_lookahead_dimension_mismatch(cli_model, capsys, tmp_path):
    path = tmp_path / "wrong.npz"
    lookahead_lib.save(path, np.zeros((8, 100), np.float32))
    code, _, err = run_cli(capsys, "--prompt", "hi", "--lookahead", str(path))
    assert_one_line_error(code, err, "d_emb = 576")


def test_help_teaches(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for option in ("--prompt", "--prompts", "--mode", "--num-lookahead", "--lookahead", "--max-new-tokens",
                   "--temperature", "--top-k", "--top-p", "--seed", "--batch-size", "--model", "--json", "examples:"):
        assert option in out


@pytest.mark.parametrize("argv", [["--help"], ["generate", "--help"], ["bench", "--help"],
                                  ["eval", "humaneval", "--help"], ["plan", "--help"], ["train", "--help"]])
def test_help_imports_no_jax(argv):
    """The parser stays fast: `pass-jax --help` (and a command's) imports neither JAX nor other commands' code."""
    import subprocess
    import sys

    code = ("import sys\nfrom pass_jax import cli\ntry:\n    cli.main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m == 'jax' or m.startswith(('pass_jax.bench.', 'pass_jax.loading', "
            "'pass_jax.train.loop', 'pass_jax.train.run_config', 'pass_jax.train.checkpoints'))))")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    imported = done.stdout.strip().splitlines()[-1]
    expected = "['pass_jax.bench.command']" if argv[0] == "bench" else "[]"
    assert imported == expected, done.stdout
