"""`Iteration`, the one shape of a decode iteration: building it from options (the defaults, once),
its label, its calls and its cache length; and every entry point's default is the same."""
import inspect
import subprocess
import sys

import pytest

from pass_jax.defaults import DEFAULT_CALLS, DEFAULT_CONTEXT, DEFAULT_TREE
from pass_jax.iteration import DEFAULT_ITERATION, DecodeError, Iteration


def test_the_default_is_one_call_tree_4_2_and_four_context_drafts():
    assert DEFAULT_ITERATION == Iteration(context=DEFAULT_CONTEXT) == Iteration(DEFAULT_CALLS, DEFAULT_TREE, 4)
    assert DEFAULT_ITERATION == Iteration(1, (4, 2), 4)
    assert Iteration.from_options() == DEFAULT_ITERATION  # no options: the default
    assert Iteration.from_options(calls=2) == Iteration(2, (4, 2), 4)
    assert Iteration.from_options(drafts="lookahead") == Iteration(1, (4, 2))  # --drafts drops the context chain
    assert Iteration.from_options(draft_tree="4,2") == Iteration(1, (4, 2))  # an explicit shape: no context unless asked
    assert Iteration.from_options(num_lookahead=3) == Iteration(1, (1, 1, 1))  # -L alone: a chain, default calls
    assert Iteration.from_options(num_lookahead="3", calls=2) == Iteration.chain(3, calls=2)  # CLI strings
    assert Iteration.from_options(draft_tree="3,1") == Iteration.from_options(num_lookahead=2, draft_tree=(3, 1))
    assert Iteration.from_options("ar", 5, 2, "3,1") is Iteration.AR  # plain decoding has no shape options


@pytest.mark.parametrize("iteration, label, shapes", [
    (Iteration.AR, "ar", [(1, 1)]),
    (Iteration.chain(4, calls=2), "L=4, 2 calls", [(5, 5), (5, 5)]),
    (Iteration(2, (3, 1)), "tree 3,1, 2 calls", [(3, 3), (7, 7)]),  # drafting [x_n, LA_1, LA_2]; root + 3 + 3
    (Iteration(1, (3, 1)), "tree 3,1, 1 call", [(21, 9)]),  # 7 nodes x (1 + 2 look-ahead slots); 7 + one group
    (Iteration(1, (4, 2)), "tree 4,2, 1 call", [(39, 15)]),  # 13 nodes x 3
    (Iteration(1, (4, 2), 4), "tree 4,2, 1 call, context 4", [(51, 19)]),  # 17 nodes x 3; 17 + one group
    (Iteration(2, (1, 1), 3), "L=2, 2 calls, context 3", [(3, 3), (6, 6)]),  # root + 2 + 3
])
def test_label_round_trips_and_call_shapes(iteration, label, shapes):
    assert iteration.label() == label and Iteration.parse(label) == iteration
    assert iteration.call_shapes() == shapes
    assert iteration.width == max(w for w, _ in shapes) and iteration.buffer_length(100) == 100 + iteration.width + 1
    assert hash(iteration) == hash(Iteration.parse(label))  # a static jit argument and a dict key


@pytest.mark.parametrize("build, message", [
    (lambda: Iteration(3, (1,)), "calls must be 1"),
    (lambda: Iteration(2, ()), "one call per token"),
    (lambda: Iteration(1, (2, 0)), ">= 1 candidate per depth"),
    (lambda: Iteration(1, (8, 8, 8)), "at most 256 are supported"),
    (lambda: Iteration.chain(0), "at least one look-ahead step"),
    (lambda: Iteration.from_options(num_lookahead=3, draft_tree=(2, 1)), "has 2 depths but --num-lookahead is 3"),
    (lambda: Iteration.from_options(num_lookahead="x"), "takes a whole number"),
    (lambda: Iteration.from_options(draft_tree="a,b"), "comma-separated candidate counts"),
    (lambda: Iteration.from_options("beam"), "mode must be one of"),
    (lambda: Iteration.parse("L=four, 1 call"), "not an iteration label"),
    (lambda: Iteration.from_options(drafts="lookahead,suffix"), "--drafts takes proposer names from"),
    (lambda: Iteration.from_options(drafts="lookahead,recycle,recycle"), "--drafts takes proposer names from"),
    (lambda: Iteration.from_options(drafts="lookahead:2"), "--drafts takes proposer names from"),
    (lambda: Iteration.from_options(drafts="lookahead,context:4:3:2"), "--drafts takes proposer names from"),
    (lambda: Iteration.from_options(drafts="context"), "--drafts needs the lookahead proposer"),
    (lambda: Iteration.from_options(drafts="lookahead,context:x"), "context:M takes a whole number"),
    (lambda: Iteration.from_options(drafts="lookahead,context:0"), "context:M needs a value >= 1"),
    (lambda: Iteration.from_options(drafts="lookahead,context:4:0"), r"context:M:N needs a value in 1\.\.16"),
    (lambda: Iteration.from_options(drafts="lookahead,context:4:17"), r"context:M:N needs a value in 1\.\.16"),
    (lambda: Iteration.from_options(drafts="lookahead,context:4:two"), "context:M:N takes a whole number"),
    (lambda: Iteration.from_options(drafts="lookahead,recycle:0"), "recycle:R needs a value >= 1"),
    (lambda: Iteration(1, (4, 2), 4, ngram=0), "N in 1..16"),
    (lambda: Iteration.from_options(draft_tree="8,8,2", drafts="lookahead,context:60"),
     r"draft tree \(8, 8, 2\) and 60 context drafts has 260 nodes; at most 256"),
    (lambda: Iteration.from_options(draft_tree="8,8,2", drafts="lookahead,context:2,recycle:60"),
     r"and 2 context drafts and 60 recycle drafts has 262 nodes"),
    (lambda: Iteration(1, (), recycle=2), "drafts nothing"),
    (lambda: Iteration(1, (), 2), "drafts nothing"),
])

def test_bad_shapes_are_one_line_errors(build, message):
    with pytest.raises(DecodeError, match=message):
        build()

def test_drafts_name_the_context_chain():
    assert Iteration.from_options(drafts="lookahead") == Iteration(1, (4, 2))
    assert Iteration.from_options(drafts="lookahead,context") == Iteration(1, (4, 2), 4)
    assert Iteration.from_options(num_lookahead=3, calls=2, drafts="lookahead, context:6") == Iteration(2, (1, 1, 1), 6)
    assert Iteration(1, (4, 2), 6).depth == 6 and Iteration(1, (4, 2), 1).depth == 2


def test_drafts_name_the_longest_match_and_the_recycle_chain():
    assert Iteration.from_options(drafts="lookahead,context:6:5") == Iteration(1, (4, 2), 6, ngram=5)
    assert Iteration.from_options(drafts="lookahead,recycle") == Iteration(1, (4, 2), recycle=4)
    both = Iteration.from_options(num_lookahead=2, calls=2, drafts="lookahead,recycle:3,context:2:1")
    assert both == Iteration(2, (1, 1), 2, ngram=1, recycle=3) and both.num_nodes == 7 and both.depth == 3
    assert both.call_shapes() == [(3, 3), (8, 8)] and not both.tree.is_chain
    assert Iteration(1, (4, 2), ngram=5) == Iteration(1, (4, 2))  # N without a context chain means nothing
    for iteration in (both, Iteration(1, (4, 2), 6, ngram=5), Iteration(1, (3,), recycle=2)):
        assert Iteration.parse(iteration.label()) == iteration, iteration.label()
    assert both.label() == "L=2, 2 calls, context 2 n<=1, recycle 3"


def test_every_entry_point_defaults_to_the_same_iteration():
    """The CLI, `Generator`, `pass_jax.generate()`, `DecodeSpec`, `plan` and `eval humaneval` default to
    DEFAULT_ITERATION (their signatures say None or DEFAULT_ITERATION; None goes through from_options)."""
    from pass_jax import cli, plan
    from pass_jax.cli_args import iteration_from_args
    from pass_jax.decoding import DecodeSpec
    from pass_jax.generate import Generator
    from pass_jax.humaneval.evaluation import EvalSettings

    args = cli.build_parser().parse_args(["generate", "--prompt", "x"])
    assert iteration_from_args(args, args.mode) == DEFAULT_ITERATION
    assert DecodeSpec.__dataclass_fields__["iteration"].default == DEFAULT_ITERATION
    assert EvalSettings().iteration == DEFAULT_ITERATION
    assert inspect.signature(plan.plan).parameters["iteration"].default == DEFAULT_ITERATION
    options = inspect.signature(Generator).parameters
    assert all(options[name].default is None for name in ("iteration", "mode", "num_lookahead", "calls", "draft_tree"))


def test_iteration_imports_no_jax():
    code = "import sys; import pass_jax.iteration; print('jax' in sys.modules or 'numpy' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr
