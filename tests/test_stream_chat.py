"""Streaming and chat prompts: a streamed run prints exactly what the unstreamed run returns, and chat
mode feeds the model its chat template around the user's text."""
from __future__ import annotations

import importlib
import json
import sys

import pytest

from pass_jax import cli, loading
from pass_jax.generate import BUNDLED_SYSTEM_PROMPT, GenerationError, Generator, TextStream, resolve_chat
from pass_jax.sampling import GREEDY, PAPER

# The module (pass_jax.generate, the attribute, is the one-call function).
generate_lib = importlib.import_module("pass_jax.generate")
PROMPTS = ["The capital of France is", "Write one line about 東京 with an emoji."]


@pytest.fixture
def cli_model(smollm2, monkeypatch):
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: smollm2)
    monkeypatch.setenv("PASS_JAX_COMPILATION_CACHE", "0")  # the session's JAX settings stay as they are
    return smollm2


def run_cli(capsys, *argv):
    code = cli.main(["generate", *argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


@pytest.mark.parametrize("sampling", [GREEDY, PAPER], ids=["greedy", "sampled"])
def test_streamed_equals_unstreamed(smollm2, sampling, monkeypatch):
    monkeypatch.setattr(generate_lib, "CHUNK_INTERVAL_S", 0.0)  # read after every iteration, however fast
    generator = Generator(smollm2, mode="pass", calls=1, draft_tree=(4, 2), num_lookahead=2, max_new_tokens=40,
                          sampling=sampling, chat=True)
    plain, plain_summary = generator.generate(PROMPTS, seed=7)
    pieces: list[tuple[int, str]] = []
    streamed, summary = generator.generate(PROMPTS, seed=7, stream=lambda i, text: pieces.append((i, text)))
    assert [r.tokens for r in streamed] == [r.tokens for r in plain]
    assert [r.text for r in streamed] == [r.text for r in plain]
    assert [r.stats["model_calls"] for r in streamed] == [r.stats["model_calls"] for r in plain]
    # Prompts in order, each streamed in several pieces that join to its text.
    assert [i for i, _ in pieces] == sorted(i for i, _ in pieces)
    for index, result in enumerate(plain):
        own = [text for i, text in pieces if i == index]
        assert len(own) > 3 and "".join(own) == result.text
        assert "\ufffd" not in result.text
    assert summary["new_tokens"] == plain_summary["new_tokens"]


def test_text_stream_holds_back_split_characters(smollm2):
    """Byte-level BPE splits emoji and CJK into several tokens: fed one token at a time, no piece may
    carry a half character, and the pieces join to the whole decode."""
    tokenizer = smollm2.tokenizer
    text = "Paris 😀 東京, naïve café 🇫🇷 done."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text.split())  # some characters take several tokens
    stream = TextStream(tokenizer)
    pieces = [stream.push(ids[:n]) for n in range(1, len(ids) + 1)]
    assert all("\ufffd" not in piece for piece in pieces)
    assert any(piece == "" for piece in pieces)  # something was held back
    assert "".join(pieces) + stream.finish(text) == text


def test_chat_prompt_is_the_template_around_the_users_text(smollm2):
    generator = Generator(smollm2, mode="ar", max_new_tokens=8, chat="auto")
    assert generator.chat and generator.system == BUNDLED_SYSTEM_PROMPT
    messages = [{"role": "system", "content": BUNDLED_SYSTEM_PROMPT}, {"role": "user", "content": PROMPTS[0]}]
    expected = smollm2.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    expected = expected["input_ids"] if hasattr(expected, "keys") else expected
    assert generator.encode(PROMPTS[0]) == list(expected)
    own = Generator(smollm2, mode="ar", max_new_tokens=8, chat=True, system="Answer in French.")
    assert "Answer in French." in smollm2.tokenizer.decode(own.encode(PROMPTS[0]))
    raw = Generator(smollm2, mode="ar", max_new_tokens=8)  # the Python API's default is raw text
    assert not raw.chat and raw.encode(PROMPTS[0]) == smollm2.tokenizer(PROMPTS[0])["input_ids"]


def test_chat_needs_a_template():
    class NoTemplate:
        chat_template = None

    assert resolve_chat(NoTemplate(), "auto") is False
    with pytest.raises(GenerationError, match="has none"):
        resolve_chat(NoTemplate(), True)
    with pytest.raises(GenerationError, match="True, False or 'auto'"):
        resolve_chat(NoTemplate(), "yes")


def test_cli_stream_prints_what_the_unstreamed_run_prints(cli_model, capsys):
    argv = ["--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--max-new-tokens", "24", "--seed", "3"]
    streamed = run_cli(capsys, *argv, "--stream")
    plain = run_cli(capsys, *argv, "--no-stream")
    assert streamed == plain
    # Chat output quotes the user's prompt, never the template around it.
    assert streamed.startswith(f"> {PROMPTS[0]}\n") and "<|im_start|>" not in streamed
    raw = run_cli(capsys, *argv, "--no-chat", "--stream")
    assert raw.startswith(PROMPTS[0]) and raw != streamed


def test_cli_json_is_never_streamed(cli_model, capsys, monkeypatch):
    argv = ["--prompt", PROMPTS[0], "--max-new-tokens", "16", "--temperature", "0", "--json"]
    piped = run_cli(capsys, *argv)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)  # a terminal would stream text
    on_terminal = run_cli(capsys, *argv)
    records = [[json.loads(line) for line in out.splitlines()] for out in (piped, on_terminal)]
    for lines in records:
        assert len(lines) == 2 and lines[0]["prompt"] == PROMPTS[0] and "summary" in lines[1]
    assert records[0][0]["tokens"] == records[1][0]["tokens"] and records[0][0]["text"] == records[1][0]["text"]
    assert "Paris" in records[0][0]["text"]


@pytest.mark.parametrize("argv, message", [
    (["--stream", "--json"], "choose one"),
    (["--stream", "--batch-size", "2"], "one prompt at a time"),
    (["--system", "Be brief.", "--no-chat"], "--system needs the chat template"),
])
def test_conflicting_output_options_are_one_line_errors(cli_model, capsys, argv, message):
    code = cli.main(["generate", "--prompt", "hi", *argv])
    _, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and "Traceback" not in err and len(errors) == 1 and message in errors[0], err
