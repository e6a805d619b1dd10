"""The float32 cache of GGUF models.

Dequantizing a GGUF file takes seconds (10 s for the bundled model); reading its float32 weights
back from .npy files takes about one. The entry's name holds the file's path, size and mtime, so a
changed file gets a new entry; an entry appears by one rename when complete, so a killed first
run leaves at most a hidden temporary directory, which the next writer removes. Each weight's
SHA-256 (of its float32 bytes) is kept in the entry's pass_jax.json and checked on every load, so
bytes damaged on disk are found and the entry rebuilt, never used. One process writes an entry at
a time (`outputs.locked`): another loads from the GGUF file without writing it. `gguf.load_gguf`
reads and fills it; `PASS_JAX_MODEL_CACHE=0` turns it off.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .. import config as config_lib
from ..config import LlamaConfig
from ..defaults import cache_dir
from ..sharding import make_mesh
from .common import LoadedModel, WeightRow, build_params, default_dtype, place

MODEL_CACHE_ENV = "PASS_JAX_MODEL_CACHE"
MODEL_CACHE_FORMAT = "pass-jax-gguf-f32-v1"  # bump when the GGUF conversion changes: old entries stop matching


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def gguf_cache_entry(path: Path) -> Path:
    """Where the float32 copy of this GGUF file lives (or would): keyed by its path, size and mtime."""
    path = Path(path).resolve()
    stat = path.stat()
    version = _digest(f"{MODEL_CACHE_FORMAT}\0{stat.st_size}\0{stat.st_mtime_ns}")
    return cache_dir() / "models" / f"{path.stem}-{_digest(str(path))}-{version}"


class DamagedCache(ValueError):
    """A cache entry whose files do not match what was written."""


def weight_digest(weight: np.ndarray) -> str:
    """SHA-256 of a weight's float32 bytes: about 0.3 s for the bundled model's 538 MB on one core."""
    return hashlib.sha256(np.ascontiguousarray(weight, np.float32).data).hexdigest()


def load_cache_entry(entry: Path, path: Path, mesh=None, **config_overrides) -> LoadedModel:
    import transformers

    meta = json.loads((entry / "pass_jax.json").read_text())
    digests = meta.get("sha256")
    # An entry written before checksums is rebuilt once; its name stays, so an older pass-jax reads
    # the new entry as before (the checksums are one more key to it).
    if not isinstance(digests, dict):
        raise DamagedCache("written without checksums")
    checks = {}
    # The dtype is chosen now, for this backend; the weights are stored in float32.
    config = config_lib.from_dict({**meta["config"], "dtype": default_dtype(), "param_dtype": default_dtype(),
                                   **config_overrides})

    def fetch(row: WeightRow, shape_dtype, sharding):
        name = ".".join(row.path)
        host = np.load(entry / "params" / f"{name}.npy")
        checks[name] = verifier.submit(weight_digest, host)  # hashed on another core while the next file loads
        return place(shape_dtype, sharding, read=lambda: host, name=name)

    with ThreadPoolExecutor(1) as verifier:
        params = build_params(config, mesh or make_mesh(), fetch, f"loading {path.name} (float32 cache)")
    for name, check in checks.items():
        if check.result() != digests.get(name):
            raise DamagedCache(f"params/{name}.npy does not match the SHA-256 written with it")
    # The class itself, not AutoTokenizer, which takes seconds longer to resolve it.
    tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(entry / "tokenizer")
    return LoadedModel(config, params, tokenizer, str(path), meta["identity"], tuple(meta.get("stop_ids", ())))


class CacheWriter:
    """Fills a temporary sibling of a cache entry tensor by tensor, then renames it into place.

    With no entry (caching off) it does nothing. A failure to write (a full disk, a read-only
    cache) costs the cache, never the load; a failed load removes its temporary directory. Unlike
    a user's outputs, an entry may be written by two processes at once: each writes its own
    temporary directory, and the first rename wins.
    """

    def __init__(self, entry: Path | None, nbytes: int, announce: bool = True):
        from ..outputs import OutputError, locked

        self.entry = entry
        self.tmp: Path | None = None
        self.digests: dict[str, str] = {}
        self.announce = announce
        self.lock = contextlib.ExitStack()
        if entry is None:
            return
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.lock.enter_context(locked(entry, "model cache"))
            except OutputError:  # another process is writing this entry: load without caching
                return
            self._remove_leftovers()
            if shutil.disk_usage(entry.parent).free < 2 * nbytes:
                print(f"pass-jax: not caching the float32 weights ({nbytes / 1e6:.0f} MB): too little free space "
                      f"in {entry.parent}", file=sys.stderr)
                return
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self._model_prefix()}.{os.getpid()}.", dir=entry.parent))
            (self.tmp / "params").mkdir()
        except OSError as err:
            self._give_up(err)

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, *exc) -> None:
        if self.tmp is not None:  # the load failed before `finish`
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.lock.close()

    def _model_prefix(self) -> str:
        return self.entry.name.rsplit("-", 1)[0]  # the file's name and path digest, not its version

    def _remove_leftovers(self) -> None:
        """Older entries of this file, and temporary directories whose writer is no longer running."""
        for other in self.entry.parent.glob(f"{self._model_prefix()}-*"):
            if other != self.entry:
                shutil.rmtree(other, ignore_errors=True)
        for tmp in self.entry.parent.glob(f".{self._model_prefix()}.*"):
            pid = tmp.name.rsplit(".", 2)[1]  # named .PREFIX.PID.RANDOM
            if not pid.isdigit() or not _running(int(pid)):
                shutil.rmtree(tmp, ignore_errors=True)

    def _give_up(self, err: OSError) -> None:
        print(f"pass-jax: could not write the model cache in {self.entry.parent} ({err}); loading goes on",
              file=sys.stderr)
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp = None

    def add(self, path_: tuple[str, ...], weight: np.ndarray) -> None:
        if self.tmp is not None:
            try:
                weight = np.ascontiguousarray(weight, np.float32)
                np.save(self.tmp / "params" / f"{'.'.join(path_)}.npy", weight)
                self.digests[".".join(path_)] = weight_digest(weight)
            except OSError as err:
                self._give_up(err)

    def finish(self, model: LoadedModel, config: LlamaConfig) -> None:
        if self.tmp is None:
            return
        try:
            model.tokenizer.save_pretrained(self.tmp / "tokenizer")
            meta = {"format": MODEL_CACHE_FORMAT, "source": model.source, "identity": model.identity,
                    "config": config_lib.to_dict(config), "sha256": self.digests,
                    "stop_ids": list(model.stop_ids)}
            (self.tmp / "pass_jax.json").write_text(json.dumps(meta, indent=1))
            try:
                self.tmp.rename(self.entry)
            except OSError:  # another process renamed its complete copy first
                return  # __exit__ removes ours
        except OSError as err:
            self._give_up(err)
            return
        self.tmp = None
        size = sum(f.stat().st_size for f in self.entry.rglob("*") if f.is_file())
        if self.announce:
            print(f"pass-jax: cached the float32 weights in {self.entry} ({size / 1e6:.0f} MB) for faster loads; "
                  f"{MODEL_CACHE_ENV}=0 turns this off", file=sys.stderr)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True

