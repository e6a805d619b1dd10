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
  continuation of the latest n-gram match in the row's own tokens), 0 for none. `--drafts` names it.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any, ClassVar, Sequence

from .defaults import CALLS, DEFAULT_CALLS, DEFAULT_CONTEXT, DEFAULT_TREE, MODES
from .errors import PassJaxError

MAX_NODES = 256  # draft nodes one validation call may hold
PROPOSERS = ("lookahead", "context")  # `--drafts` names
DEFAULT_CONTEXT_DRAFTS = 4  # M of `--drafts lookahead,context` without `:M`


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


def _check_tree(branching: tuple[int, ...], context: int = 0) -> None:
    if not branching or any(k < 1 for k in branching):
        raise DecodeError(f"a draft tree needs at least one depth and >= 1 candidate per depth, got {branching}")
    if context < 0:
        raise DecodeError(f"the context chain needs >= 0 drafts, got {context}")
    nodes = tree_nodes(branching) + context
    if nodes > MAX_NODES:
        extra = f" and {context} context drafts" if context else ""
        raise DecodeError(f"draft tree {branching}{extra} has {nodes} nodes; at most {MAX_NODES} are supported")


def parse_drafts(text: str) -> int:
    """'lookahead' -> 0, 'lookahead,context' -> DEFAULT_CONTEXT_DRAFTS, 'lookahead,context:6' -> 6
    (`--drafts`): the context chain's length M."""
    names, context = [], 0
    for part in text.split(","):
        name, _, size = part.strip().partition(":")
        if name not in PROPOSERS or name in names or (size and name != "context"):
            raise DecodeError(f"--drafts takes proposer names from {', '.join(PROPOSERS)} (context:M for M context "
                              f"drafts), each once; got {text!r}")
        names.append(name)
        if name == "context":
            try:
                context = int(size) if size else DEFAULT_CONTEXT_DRAFTS
            except ValueError:
                raise DecodeError(f"--drafts context:M takes a whole number M, got {part!r}") from None
            if context < 1:
                raise DecodeError(f"--drafts context:M needs M >= 1, got {part!r}")
    if "lookahead" not in names:
        raise DecodeError(f"--drafts needs the lookahead proposer (it drafts the tree), got {text!r}")
    return context


def tree_nodes(branching: Sequence[int]) -> int:
    """Draft nodes of a tree, without the root: K_1 + K_1 K_2 + ..."""
    return sum(itertools.accumulate(branching, lambda a, b: a * b))


@dataclasses.dataclass(frozen=True)
class Iteration:
    """The shape of one decode iteration; frozen and hashable (a static jit argument, a dict key)."""

    calls: int = DEFAULT_CALLS
    draft_tree: tuple[int, ...] = DEFAULT_TREE  # candidates per look-ahead depth; () is ar
    context: int = 0  # M: drafts of the context chain beside the tree (0: none)

    AR: ClassVar[Iteration]

    def __post_init__(self):
        object.__setattr__(self, "draft_tree", tuple(int(k) for k in self.draft_tree))
        if not self.draft_tree:
            if self.calls != 1 or self.context:
                raise DecodeError(f"autoregressive decoding makes one call per token and drafts nothing, got "
                                  f"calls={self.calls}, context={self.context}")
            return
        if self.calls not in CALLS:
            raise DecodeError(f"calls must be 1 (validate and draft in one call) or 2 (the paper), got {self.calls}")
        _check_tree(self.draft_tree, self.context)

    # --- building --------------------------------------------------------------------------------

    @classmethod
    def chain(cls, num_lookahead: int, calls: int = DEFAULT_CALLS, context: int = 0) -> Iteration:
        """The paper's chain of L drafts."""
        if num_lookahead < 1:
            raise DecodeError(f"PaSS needs at least one look-ahead step (--num-lookahead >= 1), got {num_lookahead}")
        return cls(calls, (1,) * num_lookahead, context)

    @classmethod
    def from_options(cls, mode: str | None = None, num_lookahead: int | str | None = None, calls: int | None = None,
                     draft_tree: Sequence[int] | str | None = None, drafts: int | str | None = None) -> Iteration:
        """The iteration that options name, with the defaults where they are None (the one place they
        apply): `mode` "pass" (default) or "ar"; `num_lookahead` L (a chain of L drafts, or the depth
        `draft_tree` must have); `calls`; `draft_tree` (K_1..K_L, or "K1,K2,..."); `drafts` the context
        chain's length M (or `--drafts`' text, `parse_drafts`). Neither L nor a tree: the default tree,
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
        context = parse_drafts(drafts) if isinstance(drafts, str) else (drafts or 0)
        if not tree:
            if num_lookahead is None:  # the default tree, and the default context chain unless --drafts said
                return cls(calls, DEFAULT_TREE, DEFAULT_CONTEXT if drafts is None else context)
            return cls.chain(num_lookahead, calls, context)
        if num_lookahead is not None and num_lookahead != len(tree):
            raise DecodeError(f"draft tree {','.join(map(str, tree))} has {len(tree)} depths but --num-lookahead "
                              f"is {num_lookahead}; they must match")
        return cls(calls, tree, context)

    @classmethod
    def parse(cls, label: str) -> Iteration:
        """The inverse of `label()`: 'ar', 'L=4, 2 calls', 'tree 4,2, 1 call', 'tree 4,2, 1 call, context 4'."""
        if label == "ar":
            return cls.AR
        try:
            shape, calls, *context = label.split(", ")
            calls = int(calls.split()[0])
            context = int(context[0].removeprefix("context ")) if context else 0
            if shape.startswith("L="):
                return cls.chain(int(shape[2:]), calls, context)
            if shape.startswith("tree "):
                return cls(calls, parse_tree(shape[5:]), context)
        except ValueError:
            pass
        raise DecodeError(f"not an iteration label: {label!r} (e.g. 'ar', 'L=4, 2 calls', 'tree 4,2, 1 call', "
                          f"'tree 4,2, 1 call, context 4')")

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
        """Draft nodes one validation call checks, without its root (0 for ar): the tree's and the context chain's."""
        return tree_nodes(self.draft_tree) + self.context

    @property
    def depth(self) -> int:
        """The most drafts one iteration can accept: the tree's depth L, or the context chain's M."""
        return max(self.num_lookahead, self.context)

    @property
    def tree(self):
        """The tree's static numpy tables (`draft_tree.DraftTree`); PaSS only."""
        from .draft_tree import DraftTree
        return DraftTree(self.draft_tree, self.context)

    def label(self) -> str:
        """'ar', 'L=4, 2 calls' (a chain), 'tree 4,2, 1 call', with ', context M' for a context chain
        (`parse` reads it back)."""
        if self.mode == "ar":
            return "ar"
        shape = f"L={self.num_lookahead}" if self.is_chain else "tree " + ",".join(map(str, self.draft_tree))
        context = f", context {self.context}" if self.context else ""
        return f"{shape}, {self.calls} call{'s' if self.calls == 2 else ''}{context}"

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "num_lookahead": self.num_lookahead, "calls": self.calls,
                "draft_tree": list(self.draft_tree), "context": self.context, "label": self.label()}

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
