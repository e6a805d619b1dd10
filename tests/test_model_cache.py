"""The float32 cache of GGUF models: a second load reads it (not the GGUF) and gets the same model; an
entry that is incomplete, damaged or turned off is never read."""
from __future__ import annotations

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from _no_torch_worker import describe
from pass_jax import loading
from pass_jax.loading import gguf as gguf_loading  # where load_gguf looks up read_gguf and gguf_tokenizer

STRINGS = ["The capital of France is", "café 😀 東京", "<|im_start|>user\nHi<|im_end|>", "def f(x):\n    return x\n"]
MESSAGES = [{"role": "user", "content": "Hi"}]


class ReadGGUF(Exception):
    """Raised instead of reading the GGUF file: the load did not come from the cache."""


def refuse_gguf(*_):
    raise ReadGGUF


def assert_same_model(a, b):
    assert a.config == b.config and a.identity == b.identity and a.source == b.source
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a.params, b.params)
    assert describe(a.tokenizer, STRINGS, MESSAGES) == describe(b.tokenizer, STRINGS, MESSAGES)


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("pass_jax_cache")


@pytest.fixture
def cached(cache_root, monkeypatch):
    """The bundled model loaded once from its GGUF with an empty cache (writing the entry)."""
    monkeypatch.setenv("PASS_JAX_CACHE", str(cache_root))
    monkeypatch.delenv(loading.MODEL_CACHE_ENV, raising=False)
    entry = loading.gguf_cache_entry(loading.bundled_gguf_path())
    if not entry.is_dir():
        # What a killed writer and an older version of the file leave behind.
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout.strip()
        prefix = entry.name.rsplit("-", 1)[0]
        for leftover in (entry.parent / f".{prefix}.{dead}.abc", entry.parent / f"{prefix}-0123456789ab"):
            (leftover / "params").mkdir(parents=True)
            (leftover / "pass_jax.json").write_text("{}")
        loading.load_model("smollm2-135m")
        assert sorted(p.name for p in entry.parent.iterdir()) == [entry.name]  # leftovers removed
    return entry


def test_second_load_reads_the_cache_and_equals_the_gguf_load(cached, smollm2, monkeypatch):
    meta = json.loads((cached / "pass_jax.json").read_text())
    assert meta["format"] == loading.MODEL_CACHE_FORMAT and meta["identity"] == loading.DEFAULT_MODEL
    monkeypatch.setattr(gguf_loading, "read_gguf", refuse_gguf)
    assert_same_model(loading.load_model("smollm2-135m"), smollm2)


def test_cache_off_reads_the_gguf(cached, monkeypatch):
    monkeypatch.setenv(loading.MODEL_CACHE_ENV, "0")
    monkeypatch.setattr(gguf_loading, "read_gguf", refuse_gguf)
    with pytest.raises(ReadGGUF):
        loading.load_model("smollm2-135m")


def test_a_changed_file_gets_a_new_entry(cached, tmp_path):
    copy = tmp_path / "model.gguf"
    copy.write_bytes(b"GGUF")
    first = loading.gguf_cache_entry(copy)
    copy.write_bytes(b"GGUF, changed")
    assert loading.gguf_cache_entry(copy) != first
    assert first.parent == cached.parent


def test_a_damaged_entry_is_dropped_not_read(cached, monkeypatch, capsys):
    layer = sorted((cached / "params").glob("layer_3.*"))[0]
    saved = layer.read_bytes()
    layer.write_bytes(saved[:len(saved) // 2])  # truncated, as by a full disk
    monkeypatch.setattr(gguf_loading, "read_gguf", refuse_gguf)
    with pytest.raises(ReadGGUF):  # it fell back to the GGUF file
        loading.load_model("smollm2-135m")
    assert "the model cache " in (err := capsys.readouterr().err) and "rebuilding it" in err
    assert not cached.exists()


def test_a_failed_load_leaves_no_entry(cache_root, monkeypatch):
    monkeypatch.setenv("PASS_JAX_CACHE", str(cache_root / "failed"))

    def fail(*_):
        raise RuntimeError("killed while building the tokenizer")

    monkeypatch.setattr(gguf_loading, "gguf_tokenizer", fail)
    with pytest.raises(RuntimeError, match="killed"):
        loading.load_model("smollm2-135m")
    assert list((cache_root / "failed" / "models").iterdir()) == []  # neither an entry nor its temporary copy
