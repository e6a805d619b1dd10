"""The tuned default: `pass-jax generate` without --mode, -L, --calls or --draft-tree decodes with the
fastest lossless setting for the running machine, ar when no PaSS setting beats ar.

`autotune.pick` chooses (call costs, acceptance metadata, then the real decode loops timed against
ar's); this module runs it once per profile key and stores its choice in `cache_dir()/tuning/`. The
key is (backend, device kind and count, CPU count, model, look-ahead parameters, sampling family,
batch size): a profile tuned for other parameters, another model or another machine kind lies
under another file name and is never read, and a file whose own key differs (copied, foreign) or
that does not parse is ignored, said so in one line, and tuned again.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .defaults import cache_dir
from .iteration import Iteration

# Part of every profile's key: bump it when a change makes some decode loop faster or slower or changes the
# candidates (2: PaSS sampling among the top-k tokens; 3: context-draft candidates, 2-row projections row by
# row), so that profiles tuned before are tuned again.
VERSION = 3
# What a tuning costs on the project's 2-core CPU with SmolLM2-135M (measured: docs/BENCHMARKS.md), for
# the line that announces it; other machines take what they take.
TUNING_ESTIMATE_S = 60


@dataclasses.dataclass(frozen=True)
class Profile:
    """A tuned choice: `iteration` decodes (ar when no PaSS setting beat ar), `best` is the best PaSS one."""

    iteration: Iteration
    best: Iteration
    timed_ratio: float | None  # best's timed decode loops against ar's (None: the prediction already chose ar)
    summary: str               # autotune.Pick.summary() of the tuning
    path: Path

    def line(self, tuned_now: bool) -> str:
        """The one line naming the setting used."""
        how = "tuned now" if tuned_now else f"tuned earlier, {self.path}; --retune measures again"
        if self.iteration.mode == "ar":
            return (f"decoding with ar: no PaSS setting beat plain decoding on this machine (best: {self.best.label()}"
                    f"{'' if self.timed_ratio is None else f', {self.timed_ratio:.2f}x ar'}; {how})")
        return f"decoding with PaSS {self.iteration.label()}: {self.timed_ratio:.2f}x ar on this machine ({how})"


def _digest(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()[:16]


def profile_key(model, lookahead, sampling, batch_size: int) -> dict[str, Any]:
    """What a profile is valid for. `lookahead` is a `lookahead.Resolved`: its arrays are hashed, so
    retrained parameters under the same path get their own profile."""
    import jax

    device = jax.devices()[0]
    config = json.dumps(dataclasses.asdict(model.config), sort_keys=True, default=str).encode()
    leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(lookahead.params)]
    from . import __version__

    return {
        "version": f"{__version__}/{VERSION}",
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "devices": jax.device_count(),
        "cpus": os.cpu_count(),
        "model": f"{model.identity or model.source} {_digest(config)}",
        "lookahead": _digest(*(leaf.tobytes() for leaf in leaves), json.dumps(lookahead.metadata.get(
            "acceptance"), sort_keys=True).encode()),
        "sampling": "greedy" if sampling.greedy else "sampled",
        "batch_size": batch_size,
    }


def profile_path(key: dict[str, Any]) -> Path:
    return cache_dir() / "tuning" / f"{_digest(json.dumps(key, sort_keys=True).encode())}.json"


def read_profile(path: Path, key: dict[str, Any]) -> tuple[Profile | None, str | None]:
    """(the profile at `path`, None), or (None, why it cannot be used); (None, None) when there is none."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None, None
    except OSError as err:
        return None, f"unreadable ({err.strerror})"
    try:
        data = json.loads(text)
        if data.get("key") != key:
            return None, "foreign: tuned for another machine, model, parameters or sampling"
        ratio = data["timed_ratio"]
        return Profile(Iteration.parse(data["iteration"]), Iteration.parse(data["best"]),
                       None if ratio is None else float(ratio), str(data["summary"]), path), None
    except Exception as err:  # any damage (bad JSON, wrong types, bad labels) means: tune again
        return None, f"damaged ({type(err).__name__})"


def write_profile(profile: Profile, key: dict[str, Any]) -> None:
    """Written into a temporary sibling and renamed, so a reader sees the old file or the new one."""
    profile.path.parent.mkdir(parents=True, exist_ok=True)
    temporary = profile.path.with_name(f".{profile.path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps({"key": key, "iteration": profile.iteration.label(), "best": profile.best.label(),
                                     "timed_ratio": profile.timed_ratio, "summary": profile.summary}, indent=1))
    os.replace(temporary, profile.path)


def tuned_iteration(model, lookahead, sampling, batch_size: int = 1, prompt_ids: Sequence[int] | None = None,
                    retune: bool = False, log: Callable[[str], None] = lambda message: None) -> tuple[Profile, bool]:
    """(the profile for this machine, model, parameters and sampling, whether it was tuned now): read
    from the cache, or tuned with `autotune.pick` on `prompt_ids` (the first prompt) and stored."""
    from . import autotune

    key = profile_key(model, lookahead, sampling, batch_size)
    path = profile_path(key)
    if not retune:
        profile, problem = read_profile(path, key)
        if profile is not None:
            return profile, False
        if problem:
            log(f"the tuning profile {path} is {problem}: ignoring it and tuning again")
    log(f"tuning PaSS settings for this machine, about {TUNING_ESTIMATE_S} s, once (stored in {path.parent}) ...")
    chosen = autotune.pick(model, lookahead, sampling, batch_size, prompt_ids, log=log)
    profile = Profile(chosen.iteration, chosen.best, chosen.timed_ratio, chosen.summary(), path)
    write_profile(profile, key)
    return profile, True
