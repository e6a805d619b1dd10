"""The on-policy data set (`pass-jax train data`, train/onpolicy.py): kill-safe resume, held-out sources kept
out of training, anchors inside the model's own answers."""
from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import numpy as np
import pytest

from pass_jax import corpora
from pass_jax.train import onpolicy

TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


@pytest.fixture(scope="module")
def chat_model(make_hf_llama, tmp_path_factory):
    """A tiny random HF LLaMA whose tokenizer has a chat template."""
    from pass_jax.loading import load_model

    path, _ = make_hf_llama(tmp_path_factory.mktemp("onpolicy_model"))
    model = load_model(str(path))
    model.tokenizer.chat_template = TEMPLATE
    return model


def _found():
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    return [onpolicy.Source("test source", "CC0", corpora.Document(f"doc{i}", f"Title {i}",
                                                                   " ".join(words[(i + j) % 10] for j in range(200))))
            for i in range(12)]


def test_killed_data_set_resumes_to_what_an_uninterrupted_run_writes(chat_model, tmp_path):
    settings = dict(domain="text", split="train", count=8, max_new_tokens=6, batch_size=4, found=_found(),
                    progress=False)
    whole = tmp_path / "whole.jsonl"
    records = onpolicy.build(chat_model, whole, **settings)
    assert [r["mode"] for r in records] == ["chat", "raw"] * 4
    assert all(r["answer_ids"] and r["text"] for r in records)

    # A kill in the middle of the second batch's write: one whole record of it and half of the next.
    lines = whole.read_bytes().splitlines(keepends=True)
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(b"".join(lines[:5]) + lines[5][:40])
    onpolicy.manifest_path(cut).write_text(onpolicy.manifest_path(whole).read_text())
    assert len(onpolicy.read_records(cut)) == 5  # the cut line is not a record
    resumed = onpolicy.build(chat_model, cut, **settings)
    assert cut.read_bytes() == whole.read_bytes()
    assert resumed == records

    with pytest.raises(onpolicy.OnPolicyError, match="other settings \\(count\\)"):
        onpolicy.build(chat_model, cut, **{**settings, "count": 12})
    stray = tmp_path / "stray.jsonl"
    stray.write_text("{}\n")
    with pytest.raises(onpolicy.OnPolicyError, match="without its"):
        onpolicy.build(chat_model, stray, **settings)


def test_training_sources_hold_no_held_out_document(smollm2):
    train_text = onpolicy.sources("text", "train")
    test_text = onpolicy.sources("text", "test")
    assert train_text and test_text
    assert not any(corpora.is_test_id(s.document.id) for s in train_text)
    assert all(corpora.is_test_id(s.document.id) for s in test_text)
    assert {s.document.id for s in train_text}.isdisjoint(s.document.id for s in test_text)

    train_code = onpolicy.sources("code", "train")
    names = {s.name for s in train_code}
    assert any(name.startswith("pypi ") for name in names)  # beyond the standard library
    assert not any(corpora.is_test_id(s.document.id) for s in train_code if s.name == "cpython stdlib")
    # Held-out code is what pass-jax installs; training wheels are none of it.
    installed = {d.metadata["Name"].lower().replace("_", "-") for d in importlib.metadata.distributions()}
    for spec in onpolicy.TRAIN_WHEELS:
        assert spec.split("==")[0] not in installed
    assert not any(package in name for name in names for package in onpolicy.HELD_OUT_PACKAGES)
    for package in onpolicy.HELD_OUT_PACKAGES:
        assert importlib.metadata.distribution(package)

    for split, ids in (("train", {s.document.id for s in train_text}), ("test", {s.document.id for s in test_text})):
        prompts = onpolicy.items(smollm2.tokenizer, "text", split, 20)
        assert {item.id.split(":")[-1] for item in prompts} <= ids
        assert [item.mode for item in prompts] == ["chat", "raw"] * 10


def test_own_contexts_put_anchors_inside_the_answers():
    records = [{"mode": "chat", "prompt_ids": [5] * 7, "answer_ids": list(range(10, 30))},
               {"mode": "raw", "prompt_ids": [6] * 3, "answer_ids": list(range(40, 45))},
               {"mode": "chat", "prompt_ids": [5] * 40, "answer_ids": list(range(10, 14))}]  # too short for 4
    tokens, anchors = onpolicy.own_contexts(records, None, 4, seed=1, pad_id=2, multiple=16)
    assert tokens.shape == (2, 32) and anchors.shape == (2, 4)
    assert list(tokens[0, :27]) == [5] * 7 + list(range(10, 30)) and (tokens[0, 27:] == 2).all()
    for row, (prompt, total) in enumerate(((7, 27), (3, 8))):
        assert (anchors[row] >= prompt - 1).all() and (anchors[row] <= total - 2).all()
        assert (np.diff(anchors[row]) > 0).all()
    chat, _ = onpolicy.own_contexts(records, "chat", 4, pad_id=2)
    assert len(chat) == 1
    with pytest.raises(onpolicy.OnPolicyError, match="no raw record"):
        onpolicy.own_contexts(records, "raw", 8)


def test_functions_finds_small_functions_and_methods():
    source = "def f(a, b=2):\n    '''Add.\n\n    More.'''\n    return a + b\n\nclass C:\n    def g(self):\n" \
             "        x = 1\n        return x\n\ndef one(): pass\n"
    found = {name: (code, signature, doc) for name, code, signature, doc in onpolicy.functions(source)}
    assert set(found) == {"f", "g"}  # `one` has a single line
    assert found["f"][1] == "f(a, b=2)" and found["f"][2] == "Add."
    assert found["g"][0].startswith("def g(self):\n    x = 1")
    assert list(onpolicy.functions("def broken(:\n")) == []


@pytest.mark.parametrize("args, message", [
    (["--out", "x.txt"], "name a .jsonl file"),
    (["--out", "x.jsonl", "--count", "0"], "--count must be positive"),
])
def test_data_command_refuses_bad_arguments_in_one_line(tmp_path, args, message):
    base = ["data", "--domain", "text", "--split", "train", "--count", "4"]
    proc = subprocess.run([sys.executable, "-m", "pass_jax.train", *base, *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())


def test_eval_refuses_an_empty_own_file(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    proc = subprocess.run([sys.executable, "-m", "pass_jax.train", "eval", "--config", "tiny_overfit", "--own",
                           str(empty), "--lookahead", "none"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "no records" in proc.stderr and "Traceback" not in proc.stderr
