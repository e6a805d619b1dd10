"""What a benchmark run compares: the method names of its rows and `BenchSettings`."""
from __future__ import annotations

import dataclasses

from ..decoding import check_budget
from ..defaults import BENCH_TREES
from ..errors import PassJaxError
from ..iteration import Iteration, parse_drafts
from ..sampling import PAPER, SamplingConfig

# The `method` of a report row.
AR = "pass-jax-ar"
PASS = "pass-jax-pass"
HF_GREEDY = "transformers-greedy"
HF_SAMPLE = "transformers-sample"
HF_LOOKUP = "transformers-prompt-lookup"


class BenchError(PassJaxError):
    """Benchmark settings or prompts that cannot run."""


@dataclasses.dataclass(frozen=True)
class BenchSettings:
    """Everything a benchmark run needs besides the model and the prompts."""

    num_lookahead: tuple[int, ...] = (1, 2, 4, 6)
    calls: tuple[int, ...] = (2, 1)  # PaSS calls per iteration to compare (--calls)
    draft_trees: tuple[tuple[int, ...], ...] = BENCH_TREES  # trees beside the chains
    drafts: tuple[str, ...] = ("lookahead",)  # the proposer sets to compare (--drafts, `parse_drafts`)
    auto: bool = True  # add the row `-L auto` picks (when the look-ahead parameters carry acceptance metadata)
    max_new_tokens: int = 128
    sampling: SamplingConfig = PAPER  # top-k 10, temperature 0.8, as in the paper
    batch_size: int = 1
    rounds: int = 3
    lookahead: str = "default"
    seed: int = 0
    transformers: bool = True
    prompt_lookup_num_tokens: int = 10
    roofline: bool = True  # measure bandwidth after the runs and relate the AR step to it
    call_costs: bool = True  # time one decode call per width, to predict PaSS from its acceptance

    def __post_init__(self):
        if not self.num_lookahead:
            raise BenchError("--num-lookahead needs at least one value")
        check_budget(self.max_new_tokens)
        self.iterations()  # each is checked as it is built
        if self.rounds < 1:
            raise BenchError(f"--rounds must be >= 1, got {self.rounds}")
        if self.batch_size < 1:
            raise BenchError(f"--batch-size must be >= 1, got {self.batch_size}")

    def iterations(self) -> list[Iteration]:
        """The PaSS rows: a chain of each L and each tree, with each number of calls and each proposer set."""
        shapes = [(1,) * value for value in self.num_lookahead] + [tuple(t) for t in self.draft_trees]
        chains = [parse_drafts(text) for text in self.drafts]
        return [Iteration(calls, shape, **c) for shape in shapes for calls in self.calls for c in chains]
