"""Static draft trees: the shape of the candidates one validation call checks.

A tree is given by its branching `(K_1, ..., K_D)`: every node at depth d-1 has K_d children, the
candidates for look-ahead position d. `(1,) * L` is the paper's chain of L drafts. Node 0 is the
root (the token whose output validates depth 1); nodes are numbered breadth-first, so a node's
children are contiguous and sit after it. All tables are numpy: they are compile-time constants.

With `context` = M > 0, a chain of M context drafts (`proposers.context`) hangs from the root beside
the tree: nodes N+1..N+M, each the parent of the next. It is the root's first child in trial order
(`children[0, 0]`), so a deterministic candidate is tried before the sampled ones: accepting it with
probability p(c) is the most any candidate c can be accepted with, and its chain goes deepest.
With `recycle` = R > 0, a chain of R recycled drafts (`proposers.recycle`) follows it: nodes
N+M+1..N+M+R, the root's next child in trial order, also deterministic.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

from .iteration import _check_tree, tree_nodes


@dataclasses.dataclass(frozen=True)
class DraftTree:
    branching: tuple[int, ...]
    context: int = 0  # M: nodes of the context chain
    recycle: int = 0  # R: nodes of the recycle chain

    def __post_init__(self):
        _check_tree(tuple(self.branching), self.context, self.recycle)  # a DecodeError (a ValueError)

    @property
    def depth(self) -> int:
        """The longest path: the tree's L or a chain's M or R."""
        return max(len(self.branching), self.context, self.recycle)

    @property
    def is_chain(self) -> bool:
        """One node per depth, numbered by depth (node j sits at call slot j)."""
        return all(k == 1 for k in self.branching) and not self.context and not self.recycle

    @property
    def lookahead_nodes(self) -> int:
        """Nodes 1..N of the uniform tree, the look-ahead proposer's."""
        return tree_nodes(self.branching)

    @property
    def num_nodes(self) -> int:
        """Draft nodes, without the root."""
        return tree_nodes(self.branching) + self.context + self.recycle

    @functools.cached_property
    def _tables(self):
        parent, depth, rank = [-1], [0], [0]
        level = [0]
        for d, k in enumerate(self.branching, 1):
            nxt = []
            for node in level:
                for r in range(k):
                    parent.append(node)
                    depth.append(d)
                    rank.append(r)
                    nxt.append(len(parent) - 1)
            level = nxt
        for size in (self.context, self.recycle):  # the chains: rank 0 under their parents
            for j in range(size):
                parent.append(0 if j == 0 else len(parent) - 1)
                depth.append(j + 1)
                rank.append(0)
        n = len(parent)
        children = [[] for _ in range(n)]
        for node in range(1, n):
            children[parent[node]].append(node)
        chains = bool(self.context) + bool(self.recycle)  # their first nodes are the root's first children
        children[0] = children[0][-chains:] + children[0][:len(children[0]) - chains] if chains else children[0]
        table = np.full((n, max(map(len, children))), -1, np.int32)
        for node, kids in enumerate(children):
            table[node, :len(kids)] = kids
        children = table
        ancestors = np.eye(n, dtype=bool)  # ancestors[a, b]: b is a or an ancestor of a
        for node in range(1, n):
            ancestors[node] |= ancestors[parent[node]]
        return np.asarray(parent, np.int32), np.asarray(depth, np.int32), np.asarray(rank, np.int32), children, ancestors

    @property
    def parent(self) -> np.ndarray:
        return self._tables[0]

    @property
    def node_depth(self) -> np.ndarray:
        """[N+1] depth of each node, 0 for the root."""
        return self._tables[1]

    @property
    def rank(self) -> np.ndarray:
        """[N+1] index of each node among its look-ahead siblings (its candidate rank; 0 in the context chain)."""
        return self._tables[2]

    @property
    def children(self) -> np.ndarray:
        """[N+1, C] children of each node in the order `verify` tries them, -1 padded."""
        return self._tables[3]

    @functools.cached_property
    def fanout(self) -> tuple[int, ...]:
        """The most children a node at depth d-1 has, for d = 1..depth: `verify` tries that many per depth."""
        counts = (self.children >= 0).sum(axis=1)
        return tuple(int(counts[self.node_depth == d].max()) for d in range(self.depth))

    @functools.cached_property
    def is_context(self) -> np.ndarray:
        """[N+1] bool: the node is in the context chain."""
        node = np.arange(self.num_nodes + 1)
        return (node > self.lookahead_nodes) & (node <= self.lookahead_nodes + self.context)

    @functools.cached_property
    def is_recycle(self) -> np.ndarray:
        """[N+1] bool: the node is in the recycle chain."""
        return np.arange(self.num_nodes + 1) > self.lookahead_nodes + self.context

    @property
    def deterministic(self) -> np.ndarray:
        """[N+1] bool: a chain's node, a deterministic candidate (q one-hot at its token)."""
        return np.arange(self.num_nodes + 1) > self.lookahead_nodes

    @property
    def ancestors(self) -> np.ndarray:
        """[N+1, N+1] bool: ancestors[a, b] when b is a itself or an ancestor of a."""
        return self._tables[4]

