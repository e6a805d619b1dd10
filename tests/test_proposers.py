"""The context proposer (prompt lookup inside the loop) and the draft tree's context chain."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pass_jax import proposers
from pass_jax.draft_tree import DraftTree
from pass_jax.iteration import NGRAM


def context_drafts(rows, size, ngram=NGRAM, width=16):
    """`proposers.context` on ragged rows padded with 99 (garbage past each length): (drafts, valid) as lists."""
    tokens = np.full((len(rows), width), 99, np.int32)
    for r, row in enumerate(rows):
        tokens[r, :len(row)] = row
    drafts, valid = proposers.context(jnp.asarray(tokens), jnp.asarray([len(r) for r in rows], jnp.int32), size, ngram)
    return np.asarray(drafts).tolist(), np.asarray(valid).tolist()


def test_context_proposes_the_continuation_of_the_longest_latest_match():
    rows = [
        [7, 1, 2, 9, 1, 2, 5, 3, 2],  # "3 2" never recurs; "2" does, at 2 and 5: the latest (5) wins
        [4, 5, 6, 0, 5, 6, 1, 4, 5, 6],  # "4 5 6" (3-gram, at 2) beats the later "5 6" (2-gram, at 5)
        [3, 8, 3],  # the continuation runs into the root: valid up to it, not past it
        [1, 2, 3],  # no earlier occurrence of 3: nothing valid
        [6],  # one token: nothing to match
    ]
    drafts, valid = context_drafts(rows, 3)
    assert drafts[0] == [5, 3, 2] and valid[0] == [True] * 3  # tokens 6..8 after the match at 5
    assert drafts[1] == [0, 5, 6] and valid[1] == [True] * 3
    assert drafts[2][:2] == [8, 3] and valid[2] == [True, True, False]
    assert valid[3] == [False] * 3 and valid[4] == [False] * 3


def test_context_ngram_caps_the_match_length():
    """With n <= 1 only the last token is matched, so the latest occurrence wins over a longer match."""
    rows = [[4, 5, 6, 0, 9, 6, 1, 4, 5, 6]]
    assert context_drafts(rows, 2, ngram=3)[0] == [[0, 9]]  # "4 5 6" at 0..2
    assert context_drafts(rows, 2, ngram=1)[0] == [[1, 4]]  # "6" at 5


def test_tree_context_chain_hangs_from_the_root_and_is_tried_first():
    tree = DraftTree((2, 2), context=3)  # look-ahead nodes 1..6, context chain 7 -> 8 -> 9
    assert tree.lookahead_nodes == 6 and tree.num_nodes == 9 and tree.depth == 3 and not tree.is_chain
    assert tree.children[0].tolist() == [7, 1, 2] and tree.children[7, 0] == 8 and tree.children[8, 0] == 9
    assert tree.parent[7:].tolist() == [0, 7, 8] and tree.node_depth[7:].tolist() == [1, 2, 3]
    assert tree.fanout == (3, 2, 1) and tree.is_context.tolist() == [False] * 7 + [True] * 3
    assert tree.ancestors[9, [0, 7, 8, 9]].all() and not tree.ancestors[9, 1:7].any()


@pytest.mark.parametrize("tree", [(3,), (2, 2), (1, 1, 1)])
def test_no_context_chain_keeps_the_tree(tree):
    plain, with_zero = DraftTree(tree), DraftTree(tree, 0)
    assert plain.fanout == tree and not plain.is_context.any()
    np.testing.assert_array_equal(plain.children, with_zero.children)


def test_greedy_walk_takes_the_deepest_path_where_proposers_drafted_the_same_token():
    """Tree (2, 2) with a context chain of 3: the context chain (nodes 7-9) and look-ahead node 1 both
    drafted the greedy token 5; the chain goes on matching to depth 3, the look-ahead subtree to 2."""
    from pass_jax.sampling import greedy_walk

    tree = DraftTree((2, 2), context=3)
    tokens = jnp.asarray([[5, 1, 6, 2, 3, 4, 5, 6, 7]])  # nodes 1..9
    greedy_after = np.zeros(10, int)  # argmax p after each node (0 elsewhere: nothing follows it)
    greedy_after[[0, 1, 3, 7, 8, 9]] = [5, 6, 7, 6, 7, 8]
    p = jax.nn.one_hot(jnp.asarray(greedy_after)[None], 10)
    accepted, path, next_token, flags = greedy_walk(tree, tokens, p)
    assert int(accepted[0]) == 3 and path[0].tolist() == [7, 8, 9] and int(next_token[0]) == 8
    assert flags[0].tolist() == [True] * 3
    # node 8 invalid (the match's continuation ended): the look-ahead path (1, 3) is the deepest left
    accepted, path, next_token, _ = greedy_walk(tree, tokens, p, jnp.asarray([[True] * 7 + [False, True]]))
    assert int(accepted[0]) == 2 and path[0].tolist() == [1, 3, 0] and int(next_token[0]) == 7


def test_recycle_follows_each_rows_likeliest_successors_until_one_is_unknown():
    successors = -np.ones((2, 10), np.int32)
    successors[0, [3, 4, 5]] = [4, 5, 3]  # row 0: 3 -> 4 -> 5 -> 3
    successors[1, 3] = 7  # row 1: 3 -> 7, then nothing known
    drafts, valid = proposers.recycle(jnp.asarray(successors), jnp.asarray([3, 3]), 4)
    assert np.asarray(drafts)[0].tolist() == [4, 5, 3, 4] and np.asarray(valid)[0].all()
    assert np.asarray(drafts)[1, 0] == 7 and np.asarray(valid)[1].tolist() == [True, False, False, False]


def test_record_successors_writes_argmax_p_after_each_valid_node_of_its_row():
    successors = jnp.full((2, 6), -1, jnp.int32)
    tokens = jnp.asarray([[1, 2, 5], [1, 4, 4]])  # the root, then two nodes, per row
    best = np.asarray([[3, 0, 2], [5, 1, 1]])  # argmax p after each node
    p = jax.nn.one_hot(jnp.asarray(best), 6) * 0.7 + 0.05
    valid = jnp.asarray([[True, True, False], [True, True, True]])
    table = np.asarray(proposers.record_successors(successors, tokens, p, valid))
    assert table[0].tolist() == [-1, 3, 0, -1, -1, -1]  # node 5 invalid: nothing written
    assert table[1].tolist() == [-1, 5, -1, -1, 1, -1]  # the other row's table is its own


def test_tree_recycle_chain_follows_the_context_chain():
    tree = DraftTree((2,), context=2, recycle=3)  # look-ahead 1, 2; context 3 -> 4; recycle 5 -> 6 -> 7
    assert tree.children[0].tolist() == [3, 5, 1, 2] and tree.parent[5:].tolist() == [0, 5, 6]
    assert tree.depth == 3 and tree.fanout == (4, 1, 1) and not tree.is_chain
    assert tree.is_context.tolist() == [False] * 3 + [True] * 2 + [False] * 3
    assert tree.is_recycle.tolist() == [False] * 5 + [True] * 3
    assert tree.deterministic.tolist() == [False] * 3 + [True] * 5
    assert DraftTree((2,), recycle=1).children[0].tolist() == [3, 1, 2]


def test_with_chains_joins_the_look_ahead_context_and_recycle_nodes_with_the_iterations_n():
    tree = DraftTree((1,), context=2, recycle=2)
    row = jnp.asarray([[4, 5, 6, 0, 9, 6, 1, 4, 5, 6]])
    successors = jnp.full((1, 10), -1, jnp.int32).at[0, 6].set(2)  # 6 -> 2, then nothing known
    la, q = jnp.asarray([[8]]), jnp.zeros((1, 1, 10))
    for ngram, context in ((3, [0, 9]), (1, [1, 4])):  # as in test_context_ngram_caps_the_match_length
        drafts = proposers.with_chains(la, q, tree, row, jnp.asarray([10]), jnp.asarray([6]), successors, ngram)
        assert np.asarray(drafts.tokens)[0].tolist() == [8, *context, 2, 0]
        assert np.asarray(drafts.valid)[0].tolist() == [True, True, True, True, False]
