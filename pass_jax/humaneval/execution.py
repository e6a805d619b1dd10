"""Execute completions against their problem's tests, each in the subprocess sandbox (`pass_jax.sandbox`)."""
from __future__ import annotations

import concurrent.futures
import secrets
from typing import Any, Sequence

from tqdm.auto import tqdm

from ..sandbox import PREAMBLE, ExecResult, run_program


def build_program(problem: dict[str, Any], completion: str, sentinel: str) -> str:
    """The test program; it prints `sentinel` only after check() returned, so exiting early fails."""
    return (PREAMBLE + problem["prompt"] + completion + "\n\n" + problem["test"] + "\n"
            + f"check({problem['entry_point']})\nprint({sentinel!r}, flush=True)\n")


def check_completion(problem: dict[str, Any], completion: str, timeout: float = 10.0) -> ExecResult:
    """Execute one completion against its problem's tests."""
    sentinel = f"pass-jax-humaneval-passed-{secrets.token_hex(8)}"  # unguessable by the completion
    return run_program(build_program(problem, completion, sentinel), timeout, sentinel)


def check_all(jobs: Sequence[tuple[dict[str, Any], str]], timeout: float, workers: int,
              progress: bool = False) -> list[ExecResult]:
    """check_completion over (problem, completion) pairs with a thread pool (each runs a subprocess)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
        futures = [pool.submit(check_completion, problem, completion, timeout) for problem, completion in jobs]
        return [f.result() for f in tqdm(futures, desc="executing", unit="program", disable=not progress)]
