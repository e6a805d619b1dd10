"""Training data pipeline: documents -> tokens -> packed, resumable batches.

Documents come from one entry point, :func:`load_documents`, with two kinds of
source behind it:

* local corpora (``wiki``, ``python`` or a user path, see :mod:`pass_jax.corpora`)
  written by a local TFDS builder to ``array_record`` files and read back
  with ``as_data_source()`` (random access, no TensorFlow needed);
* the paper's real sources (English Wikipedia, The Stack Python) through
  ``tfds.data_source``, for machines with internet or a prepared TFDS data dir.

Both have a ``train`` and a ``test`` split made the same way: a document is
held out when a hash of its id falls in the first 5% of buckets, so the split
is stable across runs, hosts and corpus growth (:func:`pass_jax.corpora.split_documents`,
which ``pass-jax bench`` reads its held-out prompts through without this pipeline).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import logging
import os
import shutil
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import tensorflow_datasets as tfds
from tqdm import tqdm

from pass_jax.corpora import (
    LOCAL_SOURCES,
    SPLITS,
    CorpusError,
    Document,
    default_cache_dir,
    is_test_id,
    local_fingerprint,
    source_documents,
    split_documents,
)


@dataclasses.dataclass(frozen=True)
class RemoteSource:
    """A real TFDS dataset: its name, builder kwargs and which fields to read.

    Only its ``train`` split is read; the train/test split is re-made by id
    hash like for local corpora.
    """

    tfds_name: str
    text_key: str
    id_key: str
    builder_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)


# The paper's sources. Edit these to pick another dump or language.
REMOTE_SOURCES: dict[str, RemoteSource] = {
    "wikipedia": RemoteSource("wikipedia/20230601.en", text_key="text", id_key="title"),
    # The Stack is gated on the hub: accept its terms and set HUGGING_FACE_HUB_TOKEN.
    "the-stack-python": RemoteSource(
        "huggingface:bigcode__the_stack", text_key="content", id_key="hexsha",
        builder_kwargs={"data_files": {"train": "data/python/*.parquet"}}),
}


class Tokenizer(Protocol):
    """What the pipeline needs of a tokenizer (any HF tokenizer fits)."""

    eos_token_id: int | None
    bos_token_id: int | None

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


# --------------------------------------------------------------------------
# Local corpora as a TFDS dataset (array_record)
# --------------------------------------------------------------------------

@dataclasses.dataclass
class CorpusConfig(tfds.core.BuilderConfig):
    """Builder config; ``path`` is set only for a user's local corpus."""

    path: str = ""


# skip_registration: we instantiate the class directly, and registering would
# fail if this module were imported twice under different names.
class PassLocalCorpus(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Offline corpora (Wikipedia sample, Python stdlib, user files) for TFDS."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [
        CorpusConfig(name="wiki", description="Wikipedia articles from the exllamav2 calibration data"),
        CorpusConfig(name="python", description="CPython standard library, non-test .py files"),
    ]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> None:
        """No code path: it only locates download checksums, and we download nothing.

        TFDS 4.9's default imports ``importlib_resources``, which its wheel
        only requires on Python < 3.9, so it fails for a builder in a package.
        """
        return None

    def __init__(self, *, corpus_cache: str | os.PathLike | None = None, **kwargs: Any):
        """``corpus_cache`` is where the raw wiki text is cached (see corpora)."""
        self._corpus_cache = corpus_cache
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Documents for training PaSS look-ahead vectors.",
            features=tfds.features.FeaturesDict({"id": tfds.features.Text(), "text": tfds.features.Text()}),
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[int, dict[str, str]]]]:
        splits = split_documents(source_documents(self.builder_config.path or self.builder_config.name,
                                                  self._corpus_cache))
        return {name: self._generate_examples(docs) for name, docs in splits.items()}

    def _generate_examples(self, docs: list[Document]) -> Iterator[tuple[int, dict[str, str]]]:
        # Keys are positions, not ids: user .jsonl ids need not be unique.
        for i, doc in enumerate(docs):
            yield i, {"id": doc.id, "text": doc.text}


def local_builder(source: str, data_dir: str | os.PathLike | None = None,
                  cache_dir: str | os.PathLike | None = None) -> PassLocalCorpus:
    """Build (once; later calls reuse it) and return the TFDS builder for a local source.

    ``source`` is ``wiki``, ``python`` or a corpus path. ``data_dir`` defaults
    to ``<corpora cache>/tfds``.
    """
    cache = default_cache_dir(cache_dir)
    if source in LOCAL_SOURCES:
        config: str | CorpusConfig = source
    else:
        path = Path(source).expanduser().resolve()
        # The fingerprint in the name rebuilds the dataset when the files change.
        config = CorpusConfig(name=f"local_{local_fingerprint(path)}", path=str(path),
                              description=f"user corpus at {path}")
    root = Path(data_dir or cache / "tfds")
    with _quiet_tfds():
        builder = PassLocalCorpus(config=config, data_dir=str(root), file_format="array_record", corpus_cache=cache)
    if not Path(builder.data_dir).is_dir():
        print(f"preparing the corpus {source} (once: later runs read {builder.data_dir})", file=sys.stderr, flush=True)
    try:
        with _quiet_tfds():
            # No GCS lookup: the dataset is ours, and this machine may be offline.
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    except BaseException:
        _remove_empty_parents(Path(builder.data_dir).parent, root)  # a refused corpus leaves no empty local_*
        raise
    return builder


@contextlib.contextmanager
def _quiet_tfds() -> Iterator[None]:
    """TFDS says "Downloading and preparing dataset" (on stdout, which carries `train`'s result) and
    warns of a "custom data configuration" for every local corpus: neither is news here."""
    absl = logging.getLogger("absl")

    def keep(record: logging.LogRecord) -> bool:
        return "Using custom data configuration" not in record.getMessage()

    absl.addFilter(keep)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        absl.removeFilter(keep)


def _remove_empty_parents(directory: Path, root: Path) -> None:
    """Remove `directory` and its parents below `root` while they hold nothing but empty directories."""
    while directory != root and root in directory.parents:
        if directory.is_dir() and any(p.is_file() for p in directory.rglob("*")):
            return
        shutil.rmtree(directory, ignore_errors=True)
        directory = directory.parent


# What array_record / Riegeli raise on a truncated or overwritten file.
DAMAGED_RECORDS = ("Riegeli", "ArrayRecord file", "corrupted", "Corrupted")


def _reason(err: BaseException) -> str:
    """Riegeli's message up to its first ';' (the rest is where it was reading)."""
    return str(err).splitlines()[0].split(";")[0][:200]


def _is_damaged(err: BaseException) -> bool:
    return isinstance(err, (RuntimeError, OSError, ValueError)) and any(m in str(err) for m in DAMAGED_RECORDS)


def _checked_source(builder: PassLocalCorpus, split: str):
    """The split's data source, its first and last record read once: that opens every reader, and a
    truncated file fails there (its footer is gone), before anything is tokenized."""
    source = builder.as_data_source(split=split)
    if len(source):
        source[0]
        source[len(source) - 1]
    return source


def _local_source(source: str, split: str, data_dir, cache_dir):
    """A local corpus's split from its cache, rebuilt once (with one line) when the cache is damaged."""
    builder = local_builder(source, data_dir, cache_dir)
    try:
        return _checked_source(builder, split), builder.data_dir
    except Exception as err:
        if not _is_damaged(err):
            raise
        print(f"pass-jax: the corpus cache {builder.data_dir} is damaged ({_reason(err)}); "
              "rebuilding it", file=sys.stderr, flush=True)
        shutil.rmtree(builder.data_dir, ignore_errors=True)
    builder = local_builder(source, data_dir, cache_dir)
    try:
        return _checked_source(builder, split), builder.data_dir
    except Exception as err:
        if _is_damaged(err):
            raise CorpusError(f"the corpus cache {builder.data_dir} is damaged and rebuilding it did not help "
                              f"({_reason(err)}); delete it and check the disk") from None
        raise


def _checked_records(source, id_key: str, text_key: str, where: str) -> Iterator[dict[str, str]]:
    """`_records`, with damage found mid-file (a record whose hash does not match) as one line."""
    try:
        yield from _records(source, id_key, text_key)
    except Exception as err:
        if _is_damaged(err):
            raise CorpusError(f"the corpus cache {where} is damaged ({_reason(err)}): delete that "
                              "directory and run again to rebuild it") from None
        raise


# --------------------------------------------------------------------------
# One entry point for documents
# --------------------------------------------------------------------------

def _as_str(value: Any) -> str:
    """TFDS Text features decode to bytes in data sources; we want str."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _records(source: Sequence[Mapping[str, Any]], id_key: str, text_key: str) -> Iterator[dict[str, str]]:
    """Yield ``{"id", "text"}`` dicts from a random-access TFDS data source."""
    for i in range(len(source)):
        record = source[i]
        yield {"id": _as_str(record[id_key]), "text": _as_str(record[text_key])}


def _remote_documents(name: str, split: str, data_dir: str | os.PathLike | None) -> Iterator[dict[str, str]]:
    """Open a real TFDS dataset and filter its train split by id hash."""
    spec = REMOTE_SOURCES[name]
    try:
        source = tfds.data_source(spec.tfds_name, split="train", data_dir=data_dir,
                                  builder_kwargs=dict(spec.builder_kwargs))
    except Exception as e:  # any failure here is environment, not our bug: say what is needed
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CorpusError(f"cannot open TFDS dataset {spec.tfds_name!r} for source {name!r}: needs internet / "
                          f"TFDS data dir (prepare it with `tfds build` or pass data_dir): {reason}") from None
    want_test = split == "test"
    return (r for r in _records(source, spec.id_key, spec.text_key) if is_test_id(r["id"]) == want_test)


def _looks_like_path(source: str) -> bool:
    """A source names a path if it exists, has a separator or a file suffix."""
    return os.path.exists(source) or "/" in source or os.sep in source or bool(Path(source).suffix)


def load_documents(source: str, split: str = "train", max_documents: int | None = None,
                   data_dir: str | os.PathLike | None = None,
                   cache_dir: str | os.PathLike | None = None) -> Iterator[dict[str, str]]:
    """Documents ``{"id", "text"}`` of one split of a source.

    ``source``: ``wiki`` or ``python`` (offline), ``wikipedia`` or
    ``the-stack-python`` (real TFDS datasets), or a local corpus path.
    ``data_dir`` is the TFDS data dir; ``cache_dir`` the corpora cache.
    Errors in the arguments or the corpus raise :class:`CorpusError` here,
    not later while iterating.
    """
    if split not in SPLITS:
        raise CorpusError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    if max_documents is not None and max_documents < 1:
        raise CorpusError(f"max_documents must be positive, got {max_documents}")
    if source in REMOTE_SOURCES:
        docs = _remote_documents(source, split, data_dir)
    elif source in LOCAL_SOURCES or _looks_like_path(source):
        data, where = _local_source(source, split, data_dir, cache_dir)
        docs = _checked_records(data, "id", "text", where)
    else:
        known = ", ".join([*LOCAL_SOURCES, *REMOTE_SOURCES])
        raise CorpusError(f"unknown data source {source!r}: expected one of {known}, or a local corpus path")
    return itertools.islice(docs, max_documents)


# --------------------------------------------------------------------------
# Tokenization and packing
# --------------------------------------------------------------------------

def tokenize_documents(documents: Iterable[Mapping[str, str]], tokenizer: Tokenizer, *,
                 add_bos: bool = False, max_tokens: int | None = None) -> Iterator[np.ndarray]:
    """Yield each document's token ids, followed by EOS, as int32 arrays.

    EOS marks document boundaries in the packed stream. With ``add_bos`` each
    document also starts with BOS. Stops once ``max_tokens`` ids were yielded
    (the last document cut short).
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise CorpusError("the tokenizer has no eos_token_id, needed to separate packed documents")
    if max_tokens is not None and max_tokens < 1:
        raise CorpusError(f"max_tokens must be positive, got {max_tokens}")
    bos = tokenizer.bos_token_id
    if add_bos and bos is None:
        raise CorpusError("add_bos=True but the tokenizer has no bos_token_id")
    budget = max_tokens
    for doc in documents:
        ids = tokenizer.encode(doc["text"], add_special_tokens=False)
        chunk = np.asarray(([bos] if add_bos else []) + list(ids) + [eos], dtype=np.int32)
        if budget is not None:
            chunk = chunk[:budget]
            budget -= len(chunk)
        yield chunk
        if budget == 0:
            return


def pack_sequences(token_stream: Iterable[Sequence[int] | np.ndarray], seq_len: int) -> np.ndarray:
    """Concatenate token chunks in order and cut them into rows of ``seq_len``.

    Returns int32 ``[N, seq_len]``; the last partial row is dropped.
    """
    if seq_len < 1:
        raise CorpusError(f"seq_len must be positive, got {seq_len}")
    chunks = [np.asarray(c, dtype=np.int32) for c in token_stream]
    tokens = np.concatenate(chunks) if chunks else np.zeros(0, np.int32)
    n = len(tokens) // seq_len
    if n == 0:
        raise CorpusError(f"only {len(tokens)} tokens, fewer than one sequence of seq_len={seq_len}")
    return tokens[: n * seq_len].reshape(n, seq_len)


class PackedDataset:
    """Packed sequences with a deterministic, resumable batch order.

    The data position is just the step number: batch ``k`` of seed ``s`` is a
    pure function of ``(sequences, batch_size, s, k)``, so a run restarted at
    step ``k`` sees exactly what an uninterrupted run would.
    """

    def __init__(self, sequences: np.ndarray):
        """``sequences``: int ``[N, seq_len]``, e.g. from :func:`pack_sequences`."""
        if sequences.ndim != 2 or len(sequences) == 0:
            raise CorpusError(f"expected a non-empty [N, seq_len] array, got shape {sequences.shape}")
        self.sequences = sequences

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def seq_len(self) -> int:
        return self.sequences.shape[1]

    def shard(self, process_index: int, process_count: int) -> PackedDataset:
        """This host's share (every ``process_count``-th row) for multi-host loading.

        All shards get the same number of rows (the remainder is dropped) so
        every host runs the same number of steps per epoch.
        """
        if not 0 <= process_index < process_count:
            raise CorpusError(f"process_index {process_index} not in [0, {process_count})")
        per_host = len(self) // process_count
        if per_host == 0:
            raise CorpusError(f"{len(self)} sequences cannot be shared by {process_count} hosts")
        return PackedDataset(self.sequences[process_index::process_count][:per_host])

    def steps_per_epoch(self, batch_size: int) -> int:
        """Full batches per pass over the data (the last partial batch is dropped)."""
        if not 1 <= batch_size <= len(self):
            raise CorpusError(f"batch_size must be in [1, {len(self)}] (the number of sequences), got {batch_size}")
        return len(self) // batch_size

    def _permutation(self, seed: int, epoch: int) -> np.ndarray:
        """The row order of one epoch; a new shuffle every epoch."""
        return np.random.default_rng([seed, epoch]).permutation(len(self))

    def batches(self, batch_size: int, start_step: int = 0, seed: int = 0,
                num_steps: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(step, int32 [batch_size, seq_len])`` from ``start_step`` on.

        Endless unless ``num_steps`` is given; epochs follow each other.
        """
        if start_step < 0:
            raise CorpusError(f"start_step must be >= 0, got {start_step}")
        per_epoch = self.steps_per_epoch(batch_size)
        stop = None if num_steps is None else start_step + num_steps
        epoch, perm = -1, None
        for step in itertools.count(start_step):
            if stop is not None and step >= stop:
                return
            if step // per_epoch != epoch:
                epoch = step // per_epoch
                perm = self._permutation(seed, epoch)
            first = (step % per_epoch) * batch_size
            yield step, self.sequences[perm[first:first + batch_size]]


def build_packed_dataset(source: str, tokenizer: Tokenizer, seq_len: int, *, split: str = "train",
                         max_documents: int | None = None, max_tokens: int | None = None,
                         add_bos: bool = False, data_dir: str | os.PathLike | None = None,
                         cache_dir: str | os.PathLike | None = None) -> PackedDataset:
    """Load, tokenize and pack one split of a source (see :func:`load_documents`).

    ``max_documents`` / ``max_tokens`` cap the work so a CPU run takes minutes.
    """
    docs = load_documents(source, split, max_documents, data_dir, cache_dir)
    docs = tqdm(docs, desc=f"tokenizing {source} ({split})", unit=" docs", delay=2)
    return PackedDataset(pack_sequences(tokenize_documents(docs, tokenizer, add_bos=add_bos, max_tokens=max_tokens),
                                        seq_len))
