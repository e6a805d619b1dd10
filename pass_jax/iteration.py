"""`Iteration`: the static shape of one decode iteration (calls, look-ahead steps, draft tree).

It is the one representation of a decode setting: the CLI (`-L`, `--calls`, `--draft-tree`), the
Python API (`Generator`, `pass_jax.generate()`), `DecodeSpec`, `bench`, `eval humaneval`, `plan`
and `-L auto` all build it with `Iteration.from_options` (where the defaults apply, once) and print it
with `label()`. Importing it imports no JAX or numpy: the CLI parser uses it.

- `draft_tree` is the branching (K_1..K_L): K_d candidates at look-ahead depth d, so L is its length;
  the paper's chain of L drafts is (1,) * L. `()` is plain autoregressive decoding (`AR`): no drafts,
  one call of width 1 per token.
- `calls` is 2 (the paper: a drafting call, then a validation call; A+2 tokens per iteration) or 1
  (validate and draft in one wider call; A+1 tokens per iteration).
- `context` is M, the length of a chain of context drafts beside the tree (`proposers.context`: the
  continuation of the latest n-gram match, n <= `ngram`, in the row's own tokens), 0 for none.
- `recycle` is R, the length of a chain of recycled successors beside the tree (`proposers.recycle`:
  from the root, each token's likeliest successor in the row's earlier validation calls), 0 for none.
  `--drafts` names both (`parse_drafts`).
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any, ClassVar, Sequence

from .defaults import CALLS, DEFAULT_CALLS, DEFAULT_CONTEXT, DEFAULT_TREE, MODES
from .errors import PassJaxError

MAX_NODES = 256  # draft nodes one validation call may hold
PROPOSERS = ("lookahead", "context", "recycle")  # `--drafts` names
DEFAULT_CONTEXT_DRAFTS = 4  # M of `--drafts lookahead,context` without `:M`
NGRAM = 3  # N, the longest suffix the context proposer matches, without `context:M:N`
MAX_NGRAM = 16  # the matcher unrolls one comparison per n
DEFAULT_RECYCLE_DRAFTS = 4  # R of `--drafts lookahead,recycle` without `:R`


class DecodeError(PassJaxError):
    """Decoding settings that cannot run."""


def parse_tree(text: str) -> tuple[int, ...]:
    """'3,2,1' -> (3, 2, 1) (`--draft-tree`); checked as a tree."""
    try:
        branching = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise DecodeError(f"--draft-tree takes comma-separated candidate counts per depth, e.g. 3,2,1; "
                          f"got {text!r}") from None
    _check_tree(branching)
    return branching


def _check_tree(branching: tuple[int, ...], context: int = 0, recycle: int = 0) -> None:
    if not branching or any(k < 1 for k in branching):
        raise DecodeError(f"a draft tree needs at least one depth and >= 1 candidate per depth, got {branching}")
    if context < 0 or recycle < 0:
        raise DecodeError(f"the context and recycle chains need >= 0 drafts, got {context} and {recycle}")
    nodes = tree_nodes(branching) + context + recycle
    if nodes > MAX_NODES:
        extra = "".join(f" and {n} {name} drafts" for n, name in ((context, "context"), (recycle, "recycle")) if n)
        raise DecodeError(f"draft tree {branching}{extra} has {nodes} nodes; at most {MAX_NODES} are supported")


def _whole(part: str, text: str, what: str, low: int, high: int | None = None) -> int:
    """`text` (a `--drafts` field) as a whole number in [low, high], or a one-line DecodeError."""
    try:
        value = int(text)
    except ValueError:
        raise DecodeError(f"--drafts {what} takes a whole number, got {part!r}") from None
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in {low}..{high}"
        raise DecodeError(f"--drafts {what} needs a value {bound}, got {part!r}")
    return value


def parse_drafts(text: str) -> dict[str, int]:
    """`--drafts`: 'lookahead' -> no chains; 'lookahead,context' -> DEFAULT_CONTEXT_DRAFTS context drafts
    matching n <= NGRAM; 'context:6' -> 6; 'context:6:5' -> 6, n <= 5; 'recycle[:R]' -> R recycled drafts.
    Returns `Iteration`'s keyword arguments {"context": M, "ngram": N, "recycle": R}."""
    names, chains = [], {"context": 0, "ngram": NGRAM, "recycle": 0}
    for part in text.split(","):
        name, *fields = part.strip().split(":")
        if name not in PROPOSERS or name in names or len(fields) > {"lookahead": 0, "context": 2, "recycle": 1}[name]:
            raise DecodeError(f"--drafts takes proposer names from {', '.join(PROPOSERS)} (context:M:N for M context "
                              f"drafts after a match of up to N tokens, recycle:R for R recycled drafts), each once; "
                              f"got {text!r}")
        names.append(name)
        if name == "context":
            chains["context"] = _whole(part, fields[0], "context:M", 1) if fields else DEFAULT_CONTEXT_DRAFTS
            if len(fields) == 2:
                chains["ngram"] = _whole(part, fields[1], "context:M:N", 1, MAX_NGRAM)
        elif name == "recycle":
            chains["recycle"] = _whole(part, fields[0], "recycle:R", 1) if fields else DEFAULT_RECYCLE_DRAFTS
    if "lookahead" not in names:
        raise DecodeError(f"--drafts needs the lookahead proposer (it drafts the tree), got {text!r}")
    return chains


def tree_nodes(branching: Sequence[int]) -> int:
    """Draft nodes of a tree, without the root: K_1 + K_1 K_2 + ..."""
    return sum(itertools.accumulate(branching, lambda a, b: a * b))


@dataclasses.dataclass(frozen=True)
class Iteration:
    """The shape of one decode iteration; frozen and hashable (a static jit argument, a dict key)."""

    calls: int = DEFAULT_CALLS
    draft_tree: tuple[int, ...] = DEFAULT_TREE  # candidates per look-ahead depth; () is ar
    context: int = 0  # M: drafts of the context chain beside the tree (0: none)
    ngram: int = NGRAM  # N: the context proposer's longest match
    recycle: int = 0  # R: drafts of the recycled-successor chain beside the tree (0: none)

    AR: ClassVar[Iteration]

    def __post_init__(self):
        object.__setattr__(self, "draft_tree", tuple(int(k) for k in self.draft_tree))
        if not self.draft_tree:
            if self.calls != 1 or self.context or self.recycle:
                raise DecodeError(f"autoregressive decoding makes one call per token and drafts nothing, got "
                                  f"calls={self.calls}, context={self.context}, recycle={self.recycle}")
            return
        if self.calls not in CALLS:
            raise DecodeError(f"calls must be 1 (validate and draft in one call) or 2 (the paper), got {self.calls}")
        _check_tree(self.draft_tree, self.context, self.recycle)
        if not self.context:  # N means nothing without a context chain: one Iteration (and label) for it
            object.__setattr__(self, "ngram", NGRAM)
        if not 1 <= self.ngram <= MAX_NGRAM:
            raise DecodeError(f"the context proposer matches n = 1..N tokens, N in 1..{MAX_NGRAM}; got N={self.ngram}")

    # --- building --------------------------------------------------------------------------------

    @classmethod
    def chain(cls, num_lookahead: int, calls: int = DEFAULT_CALLS, context: int = 0, **chains) -> Iteration:
        """The paper's chain of L drafts (`chains`: ngram, recycle)."""
        if num_lookahead < 1:
            raise DecodeError(f"PaSS needs at least one look-ahead step (--num-lookahead >= 1), got {num_lookahead}")
        return cls(calls, (1,) * num_lookahead, context, **chains)

    @classmethod
    def from_options(cls, mode: str | None = None, num_lookahead: int | str | None = None, calls: int | None = None,
                     draft_tree: Sequence[int] | str | None = None, drafts: int | str | None = None) -> Iteration:
        """The iteration that options name, with the defaults where they are None (the one place they
        apply): `mode` "pass" (default) or "ar"; `num_lookahead` L (a chain of L drafts, or the depth
        `draft_tree` must have); `calls`; `draft_tree` (K_1..K_L, or "K1,K2,..."); `drafts` the context
        chain's length M, or `--drafts`' text (`parse_drafts`: context, ngram, recycle). Neither L nor a
        tree: the default tree,
        with `DEFAULT_CONTEXT` context drafts unless `drafts` is given.
        Strings are accepted as the CLI gives them."""
        mode = mode or "pass"
        if mode not in MODES:
            raise DecodeError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "ar":  # plain decoding: the shape options do not apply
            return cls.AR
        if isinstance(num_lookahead, str):
            try:
                num_lookahead = int(num_lookahead)
            except ValueError:
                raise DecodeError(f"--num-lookahead takes a whole number, got {num_lookahead!r}") from None
        tree = parse_tree(draft_tree) if isinstance(draft_tree, str) else tuple(draft_tree or ())
        calls = DEFAULT_CALLS if calls is None else calls
        chains = parse_drafts(drafts) if isinstance(drafts, str) else {"context": drafts or 0}
        if not tree:
            if num_lookahead is None:  # the default tree, and the default context chain unless --drafts said
                return cls(calls, DEFAULT_TREE, **({"context": DEFAULT_CONTEXT} if drafts is None else chains))
            return cls.chain(num_lookahead, calls, **chains)
        if num_lookahead is not None and num_lookahead != len(tree):
            raise DecodeError(f"draft tree {','.join(map(str, tree))} has {len(tree)} depths but --num-lookahead "
                              f"is {num_lookahead}; they must match")
        return cls(calls, tree, **chains)

    @classmethod
    def parse(cls, label: str) -> Iteration:
        """The inverse of `label()`: 'ar', 'L=4, 2 calls', 'tree 4,2, 1 call', 'tree 4,2, 1 call, context 4',
        'tree 4,2, 1 call, context 4 n<=5, recycle 4'."""
        if label == "ar":
            return cls.AR
        try:
            shape, calls, *extras = label.split(", ")
            calls, chains = int(calls.split()[0]), {}
            for extra in extras:
                name, size, *ngram = extra.split(" ")
                if name not in ("context", "recycle") or name in chains or ngram[1:] or (ngram and name != "context"):
                    raise ValueError(extra)
                chains[name] = int(size)
                if ngram:
                    chains["ngram"] = int(ngram[0].removeprefix("n<="))
            if shape.startswith("L="):
                return cls.chain(int(shape[2:]), calls, **chains)
            if shape.startswith("tree "):
                return cls(calls, parse_tree(shape[5:]), **chains)
        except ValueError:
            pass
        raise DecodeError(f"not an iteration label: {label!r} (e.g. 'ar', 'L=4, 2 calls', 'tree 4,2, 1 call', "
                          f"'tree 4,2, 1 call, context 4', 'tree 4,2, 1 call, context 4 n<=5, recycle 4')")

    # --- what it is ------------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return "pass" if self.draft_tree else "ar"

    @property
    def num_lookahead(self) -> int:
        """L: look-ahead steps, the depth of the tree (0 for ar)."""
        return len(self.draft_tree)

    @property
    def is_chain(self) -> bool:
        return all(k == 1 for k in self.draft_tree)

    @property
    def num_nodes(self) -> int:
        """Draft nodes one validation call checks, without its root (0 for ar): the tree's and the chains'."""
        return tree_nodes(self.draft_tree) + self.context + self.recycle

    @property
    def depth(self) -> int:
        """The most drafts one iteration can accept: the tree's depth L, or a chain's M or R."""
        return max(self.num_lookahead, self.context, self.recycle)

    @property
    def tree(self):
        """The tree's static numpy tables (`draft_tree.DraftTree`); PaSS only."""
        from .draft_tree import DraftTree
        return DraftTree(self.draft_tree, self.context, self.recycle)

    def label(self) -> str:
        """'ar', 'L=4, 2 calls' (a chain), 'tree 4,2, 1 call', with ', context M' for a context chain (' n<=N'
        when N is not `NGRAM`) and ', recycle R' for a recycle chain (`parse` reads it back)."""
        if self.mode == "ar":
            return "ar"
        shape = f"L={self.num_lookahead}" if self.is_chain else "tree " + ",".join(map(str, self.draft_tree))
        ngram = f" n<={self.ngram}" if self.ngram != NGRAM else ""
        context = f", context {self.context}{ngram}" if self.context else ""
        recycle = f", recycle {self.recycle}" if self.recycle else ""
        return f"{shape}, {self.calls} call{'s' if self.calls == 2 else ''}{context}{recycle}"

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "num_lookahead": self.num_lookahead, "calls": self.calls,
                "draft_tree": list(self.draft_tree), "context": self.context, "ngram": self.ngram,
                "recycle": self.recycle, "label": self.label()}

    # --- its calls -------------------------------------------------------------------------------

    def call_shapes(self) -> list[tuple[int, int]]:
        """(input width, positions projected onto the vocabulary) of each call of one iteration."""
        if self.mode == "ar":
            return [(1, 1)]
        num_l, nodes = self.num_lookahead, self.num_nodes + 1
        if self.calls == 2:  # drafting [x_n, LA_1..LA_L], then validation [d_1, the tree]
            return [(num_l + 1, num_l + 1), (nodes, nodes)]
        return [(nodes * (num_l + 1), nodes + num_l)]  # the tree with a look-ahead group after every node

    @property
    def width(self) -> int:
        """The widest decode call."""
        return max(width for width, _ in self.call_shapes())

    @property
    def projected(self) -> int:
        """The most positions one decode call projects onto the vocabulary."""
        return max(projected for _, projected in self.call_shapes())

    @property
    def overshoot(self) -> int:
        """Cache slots a decode call may write past the budget's last token: a call of `width` positions
        starts at the last committed token and writes up to `width` + 1 slots past it."""
        return self.width + 1

    def buffer_length(self, tokens: int) -> int:
        """KV buffer slots for `tokens` (prompt + new tokens) decoded with this iteration."""
        return tokens + self.overshoot


Iteration.AR = Iteration(1, ())
DEFAULT_ITERATION = Iteration(context=DEFAULT_CONTEXT)
