"""Static draft trees: the shape of the candidates one validation call checks.

A tree is given by its branching `(K_1, ..., K_D)`: every node at depth d-1 has K_d children, the
candidates for look-ahead position d. `(1,) * L` is the paper's chain of L drafts. Node 0 is the
root (the token whose output validates depth 1); nodes are numbered breadth-first, so a node's
children are contiguous and sit after it. All tables are numpy: they are compile-time constants.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

from .iteration import _check_tree, tree_nodes


@dataclasses.dataclass(frozen=True)
class DraftTree:
    branching: tuple[int, ...]

    def __post_init__(self):
        _check_tree(tuple(self.branching))  # a DecodeError (a ValueError)

    @property
    def depth(self) -> int:
        return len(self.branching)

    @property
    def is_chain(self) -> bool:
        return all(k == 1 for k in self.branching)

    @property
    def num_nodes(self) -> int:
        """Draft nodes, without the root."""
        return tree_nodes(self.branching)

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
        n = len(parent)
        children = np.full((n, max(self.branching)), -1, np.int32)
        for node in range(1, n):
            children[parent[node], rank[node]] = node
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
        """[N+1] index of each node among its siblings (its candidate rank)."""
        return self._tables[2]

    @property
    def children(self) -> np.ndarray:
        """[N+1, max K] children of each node in rank order, -1 padded."""
        return self._tables[3]

    @property
    def ancestors(self) -> np.ndarray:
        """[N+1, N+1] bool: ancestors[a, b] when b is a itself or an ancestor of a."""
        return self._tables[4]

