"""Every bad input through the real CLI: exit 2, one `error:` line, no traceback; files and output
paths are checked before a model is loaded (issues 13 and 15)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pass_jax import cli, loading

GEN = ["generate", "--prompt", "hi", "--max-new-tokens", "4"]


@pytest.fixture(scope="module")
def bad(tmp_path_factory, make_hf_llama):
    """A directory of broken inputs, plus a tiny model that is not the bundled one."""
    root = tmp_path_factory.mktemp("bad")
    (root / "truncated.gguf").write_bytes(loading.bundled_gguf_path().read_bytes()[:1_000_000])
    (root / "empty").mkdir()
    (root / "bad.jsonl").write_text('{"prompt": "hi"}\n{bad\n')
    np.savez(root / "wrong.npz", lookahead=np.zeros((8, 100), np.float32))
    np.savez(root / "nan.npz", lookahead=np.full((8, 576), np.nan, np.float32))
    (root / "hf_badcfg").mkdir()
    (root / "hf_badcfg" / "config.json").write_text("{not json")
    (root / "conv_badmeta").mkdir()
    (root / "conv_badmeta" / "pass_jax.json").write_text("{bad")
    (root / "notnpz.npz").write_bytes(b"garbage bytes, not a zip")
    (root / "notorbax").mkdir()
    (root / "notorbax" / "junk.txt").write_text("hello")
    (root / "nonutf8.jsonl").write_bytes(b'{"prompt": "\xff\xfe hi"}\n')
    (root / "afile").write_text("a file")
    (root / "problems.jsonl").write_text("{bad\n")
    (root / "good_problems.jsonl").write_text(json.dumps({"task_id": "t/0", "prompt": "def f():\n", "test": "",
                                                           "entry_point": "f"}) + "\n")
    (root / "long.jsonl").write_text(json.dumps({"prompt": "hello " * 8100}) + "\n")
    (root / "prompts.jsonl").write_text('{"prompt": "hi"}\n')
    (root / "existing.json").write_text('{"keep": true}')
    make_hf_llama(root / "tiny_hf")
    return root


EVAL = ["eval", "humaneval", "--problems", "{bad}/good_problems.jsonl"]
BENCH = ["bench", "--num-prompts", "1", "--rounds", "1", "-L", "1", "--calls", "2", "--draft-tree", "none",
         "--no-transformers", "--max-new-tokens", "4"]

# (name, argv with {bad} for the inputs directory, message, whether a model may be loaded first)
CASES = [
    ("max-new-tokens 0", ["generate", "--prompt", "hi", "--max-new-tokens", "0"], "max_new_tokens must be >= 1", False),
    ("max-new-tokens -5", ["generate", "--prompt", "hi", "--max-new-tokens", "-5"], "max_new_tokens must be >= 1",
     False),
    ("truncated gguf", GEN + ["--model", "{bad}/truncated.gguf"], "not a readable GGUF file", True),
    ("empty model dir", GEN + ["--model", "{bad}/empty"], "has no config.json", True),
    ("malformed JSONL", ["generate", "--prompts", "{bad}/bad.jsonl"], "bad.jsonl:2: not a JSON object", False),
    ("prompts not UTF-8", ["generate", "--prompts", "{bad}/nonutf8.jsonl"], "is not UTF-8 text", False),
    ("prompts a directory", ["generate", "--prompts", "{bad}/empty"], "is a directory", False),
    ("wrong-shaped npz", GEN + ["--lookahead", "{bad}/wrong.npz"], "d_emb = 576", True),
    ("npz of NaN", GEN + ["--lookahead", "{bad}/nan.npz"], "4608 non-finite values", False),
    ("lookahead not an npz", GEN + ["--lookahead", "{bad}/notnpz.npz"], "not a .npz file", False),
    ("lookahead not .npz", GEN + ["--lookahead", "{bad}/afile"], "a look-ahead file must be .npz", False),
    ("lookahead dir not Orbax", GEN + ["--lookahead", "{bad}/notorbax"], "not a look-ahead Orbax checkpoint", False),
    ("lookahead missing", GEN + ["--lookahead", "{bad}/missing.npz"], "not found", False),
    ("shipped vectors, other model", GEN + ["--model", "{bad}/tiny_hf", "--lookahead", "text"],
     "shipped look-ahead parameters exist only for the bundled", True),
    ("batch-size 0", GEN + ["--batch-size", "0"], "--batch-size must be >= 1", False),
    ("-L 100", GEN + ["-L", "100"], "hold 8 look-ahead steps; 100 were asked for", True),
    ("top-p 0", GEN + ["--top-p", "0"], "top-p must be in (0, 1]", False),
    ("top-k -1", GEN + ["--top-k", "-1"], "top-k must be >= 1", False),
    ("temperature nan", GEN + ["--temperature", "nan"], "temperature must be 0 (greedy) or a finite number >= 0.01",
     False),
    ("temperature 1e-40", GEN + ["--temperature", "1e-40"], "finite number >= 0.01, got 1e-40", False),
    ("temperature inf", GEN + ["--temperature", "inf"], "finite number >= 0.01, got inf", False),
    ("temperature -1", GEN + ["--temperature", "-1"], "finite number >= 0.01, got -1", False),
    ("calls 3", GEN + ["--calls", "3"], "argument --calls: invalid choice: 3", False),
    ("draft-tree 0,1", GEN + ["--draft-tree", "0,1"], ">= 1 candidate per depth", False),
    ("draft-tree a,b", GEN + ["--draft-tree", "a,b"], "comma-separated candidate counts", False),
    ("drafts unknown", GEN + ["--drafts", "lookahead,suffix"], "--drafts takes proposer names from", False),
    ("bench drafts unknown", BENCH + ["--drafts", "ngram"], "--drafts takes proposer names from", False),
    ("drafts with -L auto", GEN + ["-L", "auto", "--drafts", "lookahead,context"], "-L auto predicts look-ahead drafts",
     False),
    ("drafts recycle with -L auto", GEN + ["-L", "auto", "--drafts", "lookahead,recycle"],
     "-L auto predicts look-ahead drafts", False),
    ("drafts ngram 0", GEN + ["--drafts", "lookahead,context:4:0"], "--drafts context:M:N needs a value in 1..16", False),
    ("bench drafts ngram 99", BENCH + ["--drafts", "lookahead,context:4:99"], "context:M:N needs a value in 1..16",
     False),
    ("drafts recycle x", GEN + ["--drafts", "lookahead,recycle:x"], "--drafts recycle:R takes a whole number", False),
    ("seed too large", GEN + ["--seed", "99999999999999999999"], "argument --seed: must be in 0..4294967295", False),
    ("seed negative", GEN + ["--seed", "-1"], "argument --seed: must be in 0..4294967295", False),
    ("prompt longer than context", ["generate", "--prompts", "{bad}/long.jsonl"],
     "exceeds the model's context of 8192 tokens", True),
    ("corrupt config.json", GEN + ["--model", "{bad}/hf_badcfg"], "config.json: not valid JSON", True),
    ("corrupt pass_jax.json", GEN + ["--model", "{bad}/conv_badmeta"], "pass_jax.json: not valid JSON", True),
    ("train.nope=1", ["train", "--config", "tiny_overfit", "train.nope=1"], "unknown config key(s) train.nope", False),
    ("train.lr=-1", ["train", "--config", "tiny_overfit", "train.lr=-1"], "train.lr must be finite and positive", False),
    ("train.clip=-1", ["train", "--config", "tiny_overfit", "train.clip=-1"], "train.clip must be finite and positive",
     False),
    ("train.warmup=-1", ["train", "--config", "tiny_overfit", "train.warmup=-1"], "train.warmup must be finite and >= 0",
     False),
    ("train.weight_decay=-0.1", ["train", "--config", "tiny_overfit", "train.weight_decay=-0.1"],
     "train.weight_decay must be finite and >= 0", False),
    ("train output.dir a file", ["train", "--config", "tiny_overfit", "output.dir={bad}/afile"],
     "is a file, not a directory", False),
    ("train output.export exists", ["train", "--config", "tiny_overfit", "output.dir={bad}/new_run",
                                    "output.export={bad}/wrong.npz"], "wrong.npz already exists", False),
    ("train eval --json in a missing dir", ["train", "eval", "--config", "tiny_overfit", "--lookahead", "none",
                                            "--json", "{bad}/nope/x.json"], "nope does not exist", False),
    ("train eval --lookahead not an npz", ["train", "eval", "--config", "tiny_overfit", "--lookahead",
                                           "{bad}/notnpz.npz"], "not a .npz file", False),
    ("convert to a file", ["convert", "smollm2-135m", "{bad}/afile"], "is a file, not a directory", False),
    ("convert into a non-empty dir", ["convert", "smollm2-135m", "{bad}/notorbax"], "is not empty", False),
    ("convert under a file", ["convert", "smollm2-135m", "{bad}/afile/sub"], "afile is a file, not a directory",
     False),
    ("humaneval malformed problems", ["eval", "humaneval", "--problems", "{bad}/problems.jsonl"],
     "problems.jsonl:1: not a JSON object", False),
    ("humaneval --json in a missing dir", EVAL + ["--json", "{bad}/nope/r.json"],
     "nope does not exist", False),
    ("humaneval --json existing file", EVAL + ["--json", "{bad}/existing.json"],
     "already exists; add --overwrite", False),
    ("humaneval --seed huge", EVAL + ["--seed", "99999999999999999999"], "argument --seed", False),
    ("bench --json in a missing dir", BENCH + ["--json", "{bad}/nope/b.json"], "nope does not exist", False),
    ("bench --json existing file", BENCH + ["--json", "{bad}/existing.json"], "already exists; add --overwrite",
     False),
    ("bench --json a directory", BENCH + ["--json", "{bad}/empty"], "is a directory", False),
    ("bench --plot a file", BENCH + ["--plot", "{bad}/afile"], "is a file, not a directory", False),
    ("bench --lookahead NaN", BENCH + ["--lookahead", "{bad}/nan.npz"], "non-finite values", False),
]


@pytest.mark.parametrize("name, argv, message, loads", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_error_line(name, argv, message, loads, bad, smollm2, monkeypatch, capsys):
    real_load = loading.load_model

    def load(source, *args, **kwargs):
        if not loads:
            pytest.fail("loaded a model before checking the input")
        return smollm2 if source == loading.DEFAULT_MODEL else real_load(source, *args, **kwargs)

    monkeypatch.setattr("pass_jax.loading.load_model", load)  # every command loads through it
    if not loads:
        monkeypatch.setattr("pass_jax.train.loop.load_base_model", load)
    try:
        code = cli.main([word.replace("{bad}", str(bad)) for word in argv])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and "Traceback" not in err, err
    assert len(errors) == 1 and message in errors[0], err


def test_debug_shows_the_traceback(capsys, monkeypatch):
    argv = ["generate", "--prompt", "hi", "--temperature", "nan"]
    assert cli.main(["--debug", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("pass-jax generate: error: temperature")
    monkeypatch.setenv("PASS_JAX_DEBUG", "1")
    assert cli.main(argv) == 2
    assert "Traceback" in capsys.readouterr().err


def test_damaged_checkpoint_is_one_line_without_orbax_noise(bad, tmp_path):
    """Orbax abandons its other reads when one fails; uncaught, they spill asyncio tracebacks at exit."""
    import subprocess
    import sys

    from pass_jax.loading import load_model, save_converted

    save_converted(load_model(bad / "tiny_hf"), tmp_path / "converted")
    for chunk in (tmp_path / "converted" / "params").glob("ocdbt.process_*/d/*"):
        chunk.write_bytes(chunk.read_bytes()[:10])
    done = subprocess.run([sys.executable, "-m", "pass_jax.cli", "generate", "--model", str(tmp_path / "converted"),
                           "--prompt", "the quick", "--mode", "ar"], capture_output=True, text=True, timeout=600)
    lines = done.stderr.splitlines()
    assert done.returncode == 2 and len(lines) == 2 and lines[0].startswith("loading "), done.stderr
    assert "params/ is damaged or does not match its config (OUT_OF_RANGE" in lines[1]


def test_abandoned_reads_are_quiet_after_a_failed_restore(monkeypatch):
    """The reports that abandoned Orbax reads make after the error line are dropped once a restore failed;
    other unraisable exceptions and asyncio records still get through (the subprocess test above
    failed in about 1 run of 3 before the asyncio records were covered)."""
    import logging
    import sys
    import types

    from pass_jax.errors import quiet_abandoned_reads

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: seen.append(str(unraisable.exc_value)))
    asyncio_log = logging.getLogger("asyncio")
    filters = list(asyncio_log.filters)
    with pytest.raises(ValueError):
        with quiet_abandoned_reads():
            raise ValueError("a read failed")
    for message in ("Event loop is closed", "Encountered error while reading array index: (slice(0, 4, 1),)",
                    "something else"):
        sys.unraisablehook(types.SimpleNamespace(exc_value=RuntimeError(message)))
    assert seen == ["something else"]
    record = lambda msg: logging.LogRecord("asyncio", logging.ERROR, __file__, 1, msg, None, None)
    assert not asyncio_log.filter(record("Future exception was never retrieved"))
    assert asyncio_log.filter(record("Executing <Task> took 0.2 seconds"))
    asyncio_log.filters[:] = filters
    with quiet_abandoned_reads():  # a restore that succeeds leaves nothing behind
        pass
    assert asyncio_log.filters == filters
