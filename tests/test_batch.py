"""Generation over a data set: `Generator.results` (buckets, rows refilled between chunks) and
`pass-jax generate --output` (written as prompts finish, resumed after a kill)."""
import json
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import SP_WORDS

from pass_jax import cli, results_file
from pass_jax.cli_args import iteration_from_args

from pass_jax import generate as generate_lib
from pass_jax import lookahead as lookahead_lib
from pass_jax.config import load_preset
from pass_jax.decoding import start_row, start_row_jit
from pass_jax.generate import Generator, row_stats
from pass_jax.iteration import Iteration
from pass_jax.loading import LoadedModel
from pass_jax.model import init_params
from pass_jax.sampling import GREEDY, PAPER

VARIANTS = {"ar": ("ar", {}), "calls2": ("pass", dict(calls=2)), "calls1": ("pass", dict(calls=1)),
            "calls2-tree": ("pass", dict(calls=2, draft_tree=(3, 2))),
            "calls1-tree": ("pass", dict(calls=1, draft_tree=(2, 2))),
            # the recycle proposer's successor table is per row: a refilled row starts an empty one
            "calls1-ctx-rec": ("pass", dict(calls=1, draft_tree=(2, 2), drafts="lookahead,context:2,recycle:3"))}


class WordTokenizer:
    """Token ids written as numbers: "5 17 3" is [5, 17, 3]."""
    eos_token_id = None

    def __call__(self, text):
        return {"input_ids": [int(word) for word in text.split()]}

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


@pytest.fixture(scope="module")
def tiny_lm():
    config = load_preset("tiny")
    return config, init_params(config, jax.random.key(1))


# Lengths 3..9 share bucket 16; the 20-token prompt has bucket 32 to itself.
PROMPTS = ["5 17 3", "9 1 44 2", "100 7", "3 3 3 3 3 3 3 3 3", "64 65 66", "12 90 4 4 8",
           " ".join(str(i) for i in range(20)), "31 30 29"]


def _generator(tiny_lm, variant, batch_size, stop=(), sampling=GREEDY):
    config, params = tiny_lm
    mode, options = VARIANTS[variant]
    iteration = Iteration.from_options(mode, None, **options)
    lookahead = (lookahead_lib.init_random(config, iteration.num_lookahead, jax.random.key(4), scale=1.0)
                 if mode == "pass" else None)
    return Generator(LoadedModel(config, params, WordTokenizer(), "test"), iteration, lookahead=lookahead,
                     max_new_tokens=24, batch_size=batch_size, stop_ids=stop, sampling=sampling)


def _alone(generator, prompt, prompt_id=1):
    """The prompt decoded alone, in a batch of one, with its id's key: (new tokens, statistics)."""
    ids = WordTokenizer()(prompt)["input_ids"]
    state, _ = generator.generate_ids([ids], ids=[prompt_id])
    return state.tokens[0, len(ids):int(state.lengths[0])].tolist(), row_stats(state.stats, 0, len(ids))


def _varied_stop(generator):
    """A stop token that ends rows at varied lengths: prompt 0's 5th new token (decoded without it)."""
    return generator.generate_ids([WordTokenizer()(PROMPTS[0])["input_ids"]])[0].tokens[0, 3 + 4]


@pytest.mark.parametrize("sampling", [GREEDY, PAPER], ids=["greedy", "sampled"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_row_of_a_refilled_batch_equals_its_prompt_decoded_alone(tiny_lm, variant, sampling, monkeypatch):
    """Rows end at a stop token at different times and are refilled between chunks (one loop iteration
    a chunk): every result, tokens and statistics, equals that prompt decoded alone in a batch of one
    (sampled: with the same per-prompt key, that of its id)."""
    stop = (int(_varied_stop(_generator(tiny_lm, variant, 1, sampling=sampling))),)
    generator = _generator(tiny_lm, variant, 3, stop=stop, sampling=sampling)
    want = {prompt: _alone(generator, prompt, number) for number, prompt in enumerate(PROMPTS, 1)}
    assert len({len(tokens) for tokens, _ in want.values()}) > 1  # rows really end at different times
    monkeypatch.setattr(generate_lib, "CHUNK_INTERVAL_S", 0.0)
    refills = []
    monkeypatch.setattr(generate_lib, "start_row_jit",
                        lambda *args: refills.append(args[-1]) or start_row_jit(*args))
    results = list(generator.results(PROMPTS))
    assert len(refills) >= 3  # finished rows were refilled
    assert sorted(r.id for r in results) == list(range(1, len(PROMPTS) + 1))
    for result in results:
        tokens, stats = want[result.prompt]
        assert result.tokens == tokens, (variant, result.id)
        assert {k: result.stats[k] for k in stats} == stats
    assert generator.occupancy.useful <= generator.occupancy.row_steps


def test_a_refill_that_keeps_the_old_rows_cache_is_caught(tiny_lm, monkeypatch):
    """The test above fails on a broken refill: one that resets lengths and tokens but leaves the
    finished row's KV cache (the next prompt then attends to the old prompt's keys)."""
    monkeypatch.setattr(generate_lib, "CHUNK_INTERVAL_S", 0.0)

    def keeps_cache(state, fresh, *args):
        refilled, lengths = start_row(state, fresh, *args)  # unjitted: the old cache is not donated
        return refilled._replace(cache=state.cache), lengths

    monkeypatch.setattr(generate_lib, "start_row_jit", keeps_cache)
    generator = _generator(tiny_lm, "ar", 3, stop=(int(_varied_stop(_generator(tiny_lm, "ar", 1))),))
    wrong = sum(result.tokens != _alone(generator, result.prompt)[0] for result in generator.results(PROMPTS))
    assert wrong


def test_a_refill_that_keeps_the_old_rows_key_is_caught(tiny_lm, monkeypatch):
    """The sampled refill test fails on a refill that writes the new prompt's row but leaves the
    finished row's PRNG key (the prompt then draws from the key of the row it landed in)."""
    monkeypatch.setattr(generate_lib, "CHUNK_INTERVAL_S", 0.0)

    def keeps_key(state, fresh, *args):
        refilled, lengths = start_row(state, fresh, *args)  # unjitted: the old key is not donated
        return refilled._replace(key=state.key), lengths

    monkeypatch.setattr(generate_lib, "start_row_jit", keeps_key)
    stop = (int(_varied_stop(_generator(tiny_lm, "ar", 1, sampling=PAPER))),)
    generator = _generator(tiny_lm, "ar", 3, stop=stop, sampling=PAPER)
    results = list(generator.results(PROMPTS))
    assert sum(result.tokens != _alone(generator, result.prompt, result.id)[0] for result in results)


def test_results_read_prompts_lazily_and_tell_occupancy(tiny_lm):
    """At most `window` prompts are read ahead of the decode; ids are given ones or positions."""
    generator = _generator(tiny_lm, "ar", 2)
    read = []

    def prompts():
        for number, text in enumerate(PROMPTS[:6]):
            read.append(number)
            yield (f"p{number}", text)

    stream = generator.results(prompts(), window=3)
    first = next(stream)
    assert len(read) <= 3 + 2  # the window, and what refilled the rows
    rest = list(stream)
    assert sorted(r.id for r in [first] + rest) == [f"p{i}" for i in range(6)]
    assert 0 < generator.occupancy.fraction <= 1


# --- pass-jax generate --output ------------------------------------------------------------------------

CLI = [sys.executable, "-m", "pass_jax.cli"]


def _prompts_file(path: Path, count: int) -> Path:
    rng = random.Random(0)
    lines = [json.dumps({"id": f"q{i}", "prompt": " ".join(rng.choice(SP_WORDS) for _ in range(rng.randint(2, 30)))})
             for i in range(count)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _results(path: Path) -> dict:
    """id -> tokens of a results file, checking every line is whole JSON and no id repeats."""
    lines = path.read_text().splitlines()
    assert path.read_text().endswith("\n") and "pass_jax_results" in json.loads(lines[0])
    records = [json.loads(line) for line in lines[1:]]
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), ids
    return {r["id"]: r["tokens"] for r in records}


@pytest.mark.parametrize("sampling", [["--temperature", "0"], ["--temperature", "0.8", "--top-k", "10", "--seed", "3"]],
                         ids=["greedy", "sampled"])
def test_sigkill_mid_run_then_rerun_equals_an_uninterrupted_run(make_hf_llama, tmp_path, sampling):
    """A real `pass-jax generate --output` subprocess is SIGKILLed once results are on disk; the same
    command then resumes: the union holds every prompt once, equal to an uninterrupted run's (sampled
    too: the resumed run batches the prompts differently, and each samples from its own key)."""
    model, _ = make_hf_llama(tmp_path / "hf")
    prompts = _prompts_file(tmp_path / "p.jsonl", 40)
    argv = ["generate", "--model", str(model), "--prompts", str(prompts), "--mode", "ar", *sampling,
            "--max-new-tokens", "120", "--batch-size", "2", "--no-chat"]
    killed = tmp_path / "killed.jsonl"
    process = subprocess.Popen(CLI + argv + ["--output", str(killed)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    threading.Thread(target=lambda: seen.extend(process.stderr), daemon=True).start()
    deadline = time.monotonic() + 600
    while process.poll() is None and time.monotonic() < deadline:
        if killed.exists() and killed.read_text().count("\n") >= 1 + 3:  # the header and 3 results
            break
        time.sleep(0.02)
    assert process.poll() is None, "".join(seen)  # still decoding: the kill lands mid-run
    process.send_signal(signal.SIGKILL)
    process.wait()
    partial = _results(killed)
    assert 3 <= len(partial) < 40
    rerun = subprocess.run(CLI + argv + ["--output", str(killed)], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(partial)} prompts done already, {40 - len(partial)} to go" in rerun.stderr
    whole = tmp_path / "whole.jsonl"
    assert cli.main(argv + ["--output", str(whole)]) == 0
    assert _results(killed) == _results(whole) and len(_results(whole)) == 40


def test_a_torn_last_line_is_cut_and_redone(tmp_path):
    path = tmp_path / "out.jsonl"
    settings = {"seed": 0}
    with results_file.ResultsWriter(path, settings, overwrite=False) as writer:
        writer.write({"id": 1, "text": "a"})
        writer.write({"id": 2, "text": "b"})
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"id": 3, "te')  # a kill in the middle of a line
    with results_file.ResultsWriter(path, settings, overwrite=False) as writer:
        assert writer.done == {"1", "2"}
        writer.write({"id": 3, "text": "c"})
    assert path.read_bytes() == whole + b'{"id": 3, "text": "c"}\n'


BAD_INPUT = [
    ('{"prompt": "one"}\n{"id": 7}\n', [], 'p.jsonl:2: each line needs a string "prompt" key'),
    ('{"prompt": "one"}\n{"prompt": "  "}\n', [], "p.jsonl:2: empty prompt"),
    ('{"id": 7, "prompt": "one"}\n{"prompt": "two"}\n{"id": 7, "prompt": "three"}\n', [],
     "p.jsonl:3: duplicate id 7: each prompt needs its own id"),
    ('{"prompt": "one"}\n', ["--temperature", "0.5"],
     "holds results of other settings (temperature 0.0 there, 0.5 now)"),
    ('{"prompt": "one"}\n', ["--batch-size", "2"], "holds results of other settings (batch_size 1 there, 2 now)"),
]


@pytest.mark.parametrize("lines, extra, message", BAD_INPUT)
def test_bad_input_is_one_line_and_loses_nothing(tmp_path, capsys, lines, extra, message):
    """Refused before the model loads, in one line; the results file is untouched."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(lines)
    output = tmp_path / "out.jsonl"
    args = cli.build_parser("generate").parse_args(["generate", "--prompt", "x", "--temperature", "0"])
    settings = cli._output_settings(args, iteration_from_args(args, args.mode, auto=True))  # as generate records them
    with results_file.ResultsWriter(output, settings, overwrite=False) as writer:
        writer.write({"id": 1, "text": "kept"})
    before = output.read_bytes()
    code = cli.main(["generate", "--prompts", str(prompts), "--output", str(output), "--temperature", "0", *extra])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "loading" not in err, err
    assert err.strip().splitlines() == [f"pass-jax generate: error: {err.split('error: ', 1)[1].strip()}"]
    assert message in err, err
    assert output.read_bytes() == before


def test_an_output_that_is_not_a_results_file_is_refused(tmp_path, capsys):
    prompts = _prompts_file(tmp_path / "p.jsonl", 2)
    output = tmp_path / "notes.jsonl"
    output.write_text('{"my": "notes"}\n')
    assert cli.main(["generate", "--prompts", str(prompts), "--output", str(output)]) == 2
    assert "is not a pass-jax results file; add --overwrite" in capsys.readouterr().err
    assert output.read_text() == '{"my": "notes"}\n'
