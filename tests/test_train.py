"""Tests for look-ahead training (pass_jax.train.losses, run_config, checkpoints, loop, cli) on the tiny random model."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pass_jax import lookahead as lookahead_lib
from pass_jax.cli import main
from pass_jax.config import load_preset
from pass_jax.loading import LoadedModel
from pass_jax.model import LookaheadInputs, forward, init_params
from pass_jax.sampling import SamplingConfig, probabilities
from pass_jax.sharding import make_mesh
from pass_jax.errors import PassJaxError
from pass_jax.train import loop, losses
from pass_jax.train.data import PackedDataset
from pass_jax.train.run_config import DataSection, ModelSection, OutputSection, RunConfig, TrainSection
from pass_jax.train.tokenizers import ByteTokenizer

CONFIG = load_preset("tiny")
L = 4
SEQ_LEN = 32


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Corpora built by a test go to its tmp dir, never to ~/.cache."""
    monkeypatch.setenv("PASS_JAX_CACHE", str(tmp_path / "pass_jax_cache"))


@pytest.fixture(scope="module")
def params():
    return jax.jit(init_params, static_argnums=0)(CONFIG, jax.random.key(0))


@pytest.fixture(scope="module")
def mesh():
    return make_mesh(None)


def periodic_data(rows: int, period: int = 4, seed: int = 0) -> PackedDataset:
    """Learnable data: tokens 10, 11, .. 10+period-1 repeating, each row from a random phase."""
    phase = np.random.default_rng(seed).integers(0, period, (rows, 1))
    return PackedDataset((10 + (phase + np.arange(SEQ_LEN)) % period).astype(np.int32))


def run_config(tmp_path: Path, **train) -> RunConfig:
    settings = dict(num_lookahead=L, batch_size=4, steps=8, lr=0.01, warmup=2, anchors_per_seq=8, log_every=2,
                    eval_every=4, eval_batches=1, checkpoint_every=4, keep=2)
    return RunConfig(name="test", model=ModelSection(source="random", preset="tiny"),
                     data=DataSection(seq_len=SEQ_LEN), train=TrainSection(**{**settings, **train}),
                     output=OutputSection(dir=str(tmp_path / "run")))


def tiny_model(params) -> LoadedModel:
    return LoadedModel(CONFIG, params, ByteTokenizer(CONFIG.vocab_size), "random:tiny")


# ---------------------------------------------------------------- the masked many-anchor forward

def explicit_lookahead_logits(params, lookahead, row, anchor):
    """The paper's input for one anchor: tokens[..anchor], then the L vectors, plain causal mask.

    Padded at the end to a fixed width, so one compilation serves every anchor; a causal mask
    makes the padding invisible to the positions before it.
    """
    width = SEQ_LEN + L
    position = jnp.arange(width)
    ids = jnp.where(position <= anchor, jnp.pad(row, (0, L)), 0)[None]
    is_la = (position > anchor) & (position <= anchor + L)
    embeds = lookahead[jnp.clip(position - anchor - 1, 0, L - 1)][None]
    causal = jnp.tril(jnp.ones((width, width), bool))[None]
    logits, _ = forward(params, CONFIG, ids, jnp.arange(width)[None], causal,
                        lookahead=LookaheadInputs(mask=is_la[None], embeds=embeds))
    return jax.lax.dynamic_slice_in_dim(logits[0], anchor + 1, L)


@jax.jit
def masked_forward_and_losses(params, vectors, tokens, anchors):
    """Draft logits, token logits and both objectives' (loss, metrics), in one compilation."""
    draft, token_logits = losses.lookahead_logits(vectors, params, CONFIG, tokens, anchors)
    objectives = {o: losses.lookahead_loss(vectors, params, CONFIG, tokens, anchors, o) for o in losses.OBJECTIVES}
    return draft, token_logits, objectives


def test_masked_forward_and_losses_match_the_explicit_forward(params):
    # Larger weights than init (std 0.1) make attention and RoPE matter, so the check is sharp.
    sharp = jax.tree.map(lambda w: 5 * w if w.ndim == 2 else w, params)
    vectors = jax.random.normal(jax.random.key(1), (L, CONFIG.hidden_size))
    tokens = jax.random.randint(jax.random.key(2), (2, SEQ_LEN), 0, CONFIG.vocab_size)
    anchors = losses.sample_anchors(jax.random.key(3), 2, SEQ_LEN, 5, L)
    assert int(anchors.max()) <= SEQ_LEN - 2 - L
    draft, token_logits, objectives = masked_forward_and_losses(sharp, vectors, tokens, anchors)
    explicit = jax.jit(explicit_lookahead_logits)
    want = np.array([[explicit(sharp, vectors, tokens[b], a) for a in anchors[b]] for b in range(2)])
    np.testing.assert_allclose(draft, want, rtol=1e-5, atol=1e-5)
    # The comparison can tell: one position off gives clearly different logits.
    off_by_one = explicit(sharp, vectors, tokens[0], anchors[0, 0] + 1)
    assert float(jnp.abs(off_by_one - draft[0, 0]).max()) > 1e-2

    # Losses from the explicit logits: step i of anchor a targets tokens[a+1+i], and the model's own
    # distribution there is its plain causal output at a+i.
    index = np.asarray(anchors)[:, :, None] + np.arange(1, L + 1)
    log_q = jax.nn.log_softmax(want)
    targets = np.take_along_axis(np.asarray(tokens), (index + 1).reshape(2, -1), 1).reshape(index.shape)
    want_ce = -np.take_along_axis(log_q, targets[..., None], -1).mean()
    causal = jnp.broadcast_to(jnp.tril(jnp.ones((SEQ_LEN, SEQ_LEN), bool)), (2, SEQ_LEN, SEQ_LEN))
    positions = jnp.broadcast_to(jnp.arange(SEQ_LEN), (2, SEQ_LEN))
    plain, _ = jax.jit(forward, static_argnums=1)(sharp, CONFIG, tokens, positions, causal)
    np.testing.assert_allclose(token_logits, plain, rtol=1e-5, atol=1e-5)  # the token part is a plain forward
    # kl: the model's processed distribution there (top-k 10, T 0.8) against the draft at T 0.8
    model_at = np.take_along_axis(np.asarray(plain), index.reshape(2, -1, 1), 1).reshape(want.shape)
    p = np.asarray(probabilities(jnp.asarray(model_at), SamplingConfig()))
    log_q_t = np.asarray(jax.nn.log_softmax(want / 0.8))
    want_kl = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1)) - log_q_t), 0).sum(-1).mean()
    q = np.asarray(probabilities(jnp.asarray(want), SamplingConfig()))
    want_accept = 1 - np.minimum(p, q).sum(-1).mean()
    want_tv = 1 - np.minimum(p, np.exp(log_q_t)).sum(-1).mean()
    for objective, expected in (("ce", want_ce), ("kl", want_kl), ("accept", want_accept), ("tv", want_tv)):
        loss, metrics = objectives[objective]
        np.testing.assert_allclose(loss, expected, rtol=1e-5)
        np.testing.assert_allclose(metrics["acc"], (want.argmax(-1) == targets).mean((0, 1)))


# ---------------------------------------------------------------- the cached-prefix form

@pytest.mark.parametrize("kind", lookahead_lib.KINDS)
def test_cached_prefix_loss_and_gradient_equal_the_masked_ones(params, kind):
    sharp = jax.tree.map(lambda w: 5 * w if w.ndim == 2 else w, params)
    start = lookahead_lib.init(kind, sharp, CONFIG, L, jax.random.key(1))
    lookahead = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(jax.random.key(5), x.shape), start)
    tokens = jax.random.randint(jax.random.key(2), (2, SEQ_LEN), 0, CONFIG.vocab_size)
    anchors = losses.sample_anchors(jax.random.key(3), 2, SEQ_LEN, 5, L)
    sampling = SamplingConfig()

    @jax.jit
    def both(lookahead):
        teacher = losses.teach(sharp, CONFIG, tokens, anchors, L, sampling)
        out = {}
        for objective in losses.OBJECTIVES:
            masked = jax.value_and_grad(losses.lookahead_loss, has_aux=True)(
                lookahead, sharp, CONFIG, tokens, anchors, objective, sampling)
            cached = jax.value_and_grad(losses.cached_loss, has_aux=True)(
                lookahead, sharp, CONFIG, teacher, SEQ_LEN, anchors, objective, sampling)
            out[objective] = masked, cached
        return out

    for objective, (((loss_m, metrics_m), grad_m), ((loss_c, metrics_c), grad_c)) in both(lookahead).items():
        np.testing.assert_allclose(loss_c, loss_m, rtol=1e-5, err_msg=objective)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), metrics_c, metrics_m)
        for leaf_c, leaf_m in zip(jax.tree.leaves(grad_c), jax.tree.leaves(grad_m)):
            assert float(jnp.abs(leaf_m).max()) > 1e-4  # a gradient worth comparing
            np.testing.assert_allclose(leaf_c, leaf_m, rtol=1e-4, atol=1e-6, err_msg=objective)


def test_self_targets_are_the_models_own_continuation(params):
    """targets=self: y_1 ~ p(. | x<=a), and target i is p(. | x<=a, y_1..y_i), from which y_{i+1} came."""
    sharp = jax.tree.map(lambda w: 3 * w if w.ndim == 2 else w, params)
    sampling = SamplingConfig(temperature=0.8, top_k=5)
    tokens = jax.random.randint(jax.random.key(2), (2, SEQ_LEN), 0, CONFIG.vocab_size)
    anchors = losses.sample_anchors(jax.random.key(3), 2, SEQ_LEN, 3, L)
    teacher = jax.jit(losses.teach, static_argnums=(1, 4, 5, 6))(sharp, CONFIG, tokens, anchors, L, sampling, "self",
                                                                jax.random.key(4))
    targets = jax.device_get(teacher.targets)
    plain = jax.jit(lambda ids: forward(sharp, CONFIG, ids[None], jnp.arange(SEQ_LEN + L)[None],
                                        jnp.tril(jnp.ones((SEQ_LEN + L,) * 2, bool))[None])[0][0])
    distinct = set()
    for b, g in np.ndindex(anchors.shape):
        a = int(anchors[b, g])
        continuation = list(targets.tokens[b, g])
        for i in range(1, L + 1):
            # the tokens fed so far: x<=a, then y_1..y_i (y_1 is the first sampled token)
            fed = [int(t) for t in tokens[b, :a + 1]] + first_tokens(targets, b, g, i, sharp, tokens, anchors,
                                                                        sampling, plain)
            ids = jnp.asarray(fed + [0] * (SEQ_LEN + L - len(fed)))
            p = np.asarray(probabilities(plain(ids)[len(fed) - 1], sampling))
            dense = np.zeros_like(p)
            dense[targets.index[b, g, i - 1]] = targets.probs[b, g, i - 1]
            np.testing.assert_allclose(dense, p, atol=2e-5)
            assert p[continuation[i - 1]] > 0  # y_{i+1} was drawn from target i
        distinct.add(tuple(continuation))
    assert len(distinct) > 1


def first_tokens(targets, b, g, i, params, tokens, anchors, sampling, plain):
    """y_1..y_i of one anchor: y_1 is recovered as the token the teacher's first step was fed, i.e.
    the one whose continuation distribution matches target 1; y_2.. are the recorded draws."""
    a = int(anchors[b, g])
    prefix = [int(t) for t in tokens[b, :a + 1]]
    p0 = np.asarray(probabilities(plain(jnp.asarray(prefix + [0] * (SEQ_LEN + L - len(prefix))))[a], sampling))
    target1 = np.zeros_like(p0)
    target1[targets.index[b, g, 0]] = targets.probs[b, g, 0]
    matches = []
    for y in np.flatnonzero(p0):
        ids = jnp.asarray(prefix + [int(y)] + [0] * (SEQ_LEN + L - len(prefix) - 1))
        if np.allclose(np.asarray(probabilities(plain(ids)[a + 1], sampling)), target1, atol=2e-5):
            matches.append(int(y))
    assert len(matches) == 1
    return matches + [int(t) for t in targets.tokens[b, g, :i - 1]]


# ---------------------------------------------------------------- the train step

def test_train_step_changes_only_the_lookahead_vectors(params, mesh, tmp_path):
    t = run_config(tmp_path).train
    state = loop.init_state(tiny_model(params), t, mesh)
    before_params = jax.tree.map(np.array, params)
    before_vectors = np.array(state["lookahead"])
    state, metrics = loop.make_train_step(CONFIG, t)(params, state, jnp.asarray(periodic_data(4).sequences))
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.array, params), before_params)
    assert not np.array_equal(np.array(state["lookahead"]), before_vectors)
    assert int(state["step"]) == 1 and metrics["acc"].shape == (L,) and np.isfinite(float(metrics["loss"]))



@pytest.mark.skipif(jax.default_backend() != "cpu", reason="checks XLA:CPU's lowering of top_k")
@pytest.mark.parametrize("targets", losses.TARGETS)
def test_train_step_never_sorts_the_vocabulary(params, mesh, tmp_path, targets):
    """Every top-k of a step must stay XLA:CPU's TopK call: a [B, G, L, V] top_k of the data targets
    was once rewritten into a full sort of the vocabulary, which doubled the step's time."""
    t = run_config(tmp_path, loss="kl", targets=targets).train
    state = loop.init_state(tiny_model(params), t, mesh)
    hlo = loop.make_train_step(CONFIG, t).lower(params, state, jnp.zeros((4, SEQ_LEN), jnp.int32)).compile().as_text()
    vocab_sorts = [line for line in hlo.splitlines() if " sort(" in line and f",{CONFIG.vocab_size}]" in line]
    assert not vocab_sorts, vocab_sorts[0][:200]
    assert '"TopK"' in hlo
def test_tiny_model_overfits_a_periodic_corpus(params, mesh, tmp_path):
    # Init-scale weights (std 0.02) bound the logits too tightly to fit anything; std 0.2 does not.
    sharp = jax.tree.map(lambda w: 10 * w if w.ndim == 2 else w, params)
    t = run_config(tmp_path, steps=300, lr=0.1, warmup=5, anchors_per_seq=16).train
    state = loop.init_state(tiny_model(sharp), t, mesh)
    step = loop.make_train_step(CONFIG, t)
    history = []
    for _, rows in periodic_data(32).batches(4, num_steps=t.steps):
        state, metrics = step(sharp, state, jnp.asarray(rows))
        history.append(float(metrics["loss"]))
    first, last = np.mean(history[:5]), np.mean(history[-5:])
    assert last < first / 3, (first, last)  # measured: 4.24 -> 1.09
    assert metrics["acc"][-1] > 0.8  # the later steps have learnt the pattern from the context


# ---------------------------------------------------------------- kill and resume

class Killed(Exception):
    """Stands in for the process being killed."""


class KilledAt(PackedDataset):
    """Train data that 'kills' the run when batch `kill_at` is requested."""

    def __init__(self, data: PackedDataset, kill_at: int):
        super().__init__(data.sequences)
        self.kill_at = kill_at

    def batches(self, *args, **kwargs):
        for step, rows in super().batches(*args, **kwargs):
            if step == self.kill_at:
                raise Killed
            yield step, rows


def test_resumed_run_ends_exactly_like_an_uninterrupted_run(params, mesh, tmp_path):
    model, data, test = tiny_model(params), periodic_data(16), periodic_data(8, seed=1)
    whole = run_config(tmp_path / "whole")
    loop.train(whole, model, mesh, data, test)

    killed = run_config(tmp_path / "killed")
    with pytest.raises(Killed):  # steps 1..6 run, the last checkpoint is step 4
        loop.train(killed, model, mesh, KilledAt(data, kill_at=6), test)
    with pytest.raises(PassJaxError, match="--resume"):
        loop.train(killed, model, mesh, data, test)
    with (killed.run_dir / "metrics.jsonl").open("a") as f:  # a kill in the middle of a write
        f.write('{"step": 7, "split": "tra')
    loop.train(killed, model, mesh, data, test, resume=True)

    np.testing.assert_array_equal(np.load(killed.export_path)["lookahead"], np.load(whole.export_path)["lookahead"])
    records = [json.loads(line) for line in (killed.run_dir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    assert train_steps == sorted(set(train_steps)) == [2, 4, 6, 8]
    # Other data would not give the same batches: resuming refuses rather than diverging silently.
    with pytest.raises(PassJaxError, match="num_sequences"):
        loop.train(killed, model, mesh, periodic_data(20), test, resume=True)


def test_sigkilled_run_resumes_to_the_same_parameters(tmp_path):
    """A real `pass-jax train` process killed with SIGKILL after a checkpoint, then --resume: the
    exported parameters equal an uninterrupted run's (adapter kind: input, per-layer and adapter
    parameters; self-distillation, so the sampled continuations must be reproduced too)."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(8):
        (corpus / f"doc{i}.txt").write_text(f"document {i}: " + "the quick brown fox jumps. " * 30)
    env = {**os.environ, "PASS_JAX_CACHE": str(tmp_path / "cache")}
    common = [sys.executable, "-m", "pass_jax.train", "--config", "tiny_overfit", f"data.source={corpus}",
              "data.max_documents=null", "train.kind=adapter", "train.targets=self", "train.loss=kl", "train.steps=200",
              "train.checkpoint_every=10", "train.eval_every=1000", "train.eval_batches=1", "train.eval_sequences=0",
              "train.eval_anchors_per_seq=0"]
    subprocess.run(common + [f"output.dir={tmp_path / 'whole'}"], env=env, check=True, capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(common + [f"output.dir={killed}"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    while not (killed / "checkpoints" / "10").is_dir():
        assert process.poll() is None, "the run ended before its first checkpoint"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not (killed / "lookahead.npz").exists()  # cut short
    subprocess.run(common + [f"output.dir={killed}", "--resume"], env=env, check=True, capture_output=True)
    records = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    first_steps = [r["step"] for r in records if r["split"] == "compile"]
    assert first_steps[0] == 1 and first_steps[1] > 10  # the second process started from a checkpoint

    with np.load(tmp_path / "whole" / "lookahead.npz") as whole, np.load(killed / "lookahead.npz") as resumed:
        assert sorted(whole) == sorted(resumed) == sorted(["layers", "lookahead", *lookahead_lib.ADAPTER_LEAVES])
        assert np.any(whole["attn_up"])  # the adapters trained
        for name in whole:
            np.testing.assert_array_equal(resumed[name], whole[name])


# ---------------------------------------------------------------- configs and the CLI

def test_unknown_config_key_is_named(capsys):
    assert main(["train", "--config", "tiny_overfit", "train.stepz=10"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key(s) train.stepz" in err and "steps" in err


@pytest.mark.parametrize("override, message", [
    ("train.steps=ten", "train.steps must be int"),
    ("train.loss=mse", "train.loss must be one of ce, kl, tv, accept"),
    ("train.kind=lora", "train.kind must be one of vectors, deep, adapter"),
    ("train.prefix=masked train.targets=self", "train.targets=self needs train.prefix=cached"),
    ("train.anchors_per_seq=100", "exceeds the 59 anchors"),
    ("nosuch.key=1", "unknown config key(s) nosuch"),
])
def test_bad_config_values_give_clear_errors(capsys, override, message):
    assert main(["train", "--config", "tiny_overfit", *override.split()]) == 2
    assert message in capsys.readouterr().err


def test_missing_corpus_gives_a_clear_error(capsys, tmp_path):
    missing = tmp_path / "no_such_corpus"
    assert main(["train", "--config", "tiny_overfit", f"data.source={missing}", f"output.dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "corpus path not found" in err and str(missing) in err


def test_train_help_teaches_with_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "pass-jax train --config" in out and "--resume" in out


def test_cli_run_writes_vectors_and_metrics(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"doc{i:02d}.txt").write_text(f"document {i}: " + "the quick brown fox jumps. " * 20)
    run_dir = tmp_path / "run"
    argv = ["train", "--config", "tiny_overfit", f"data.source={corpus}", "data.max_documents=null",
            "train.steps=2", "train.eval_batches=1", f"output.dir={run_dir}"]
    assert main(argv) == 0
    vectors = np.load(run_dir / "lookahead.npz")["lookahead"]
    assert vectors.shape == (4, CONFIG.hidden_size) and np.isfinite(vectors).all()
    metadata = json.loads((run_dir / "lookahead.json").read_text())
    assert metadata["steps"] == 2 and metadata["command"].startswith("pass-jax train --config tiny_overfit")
    assert set(metadata["final_eval"]) >= {"loss", "acc"}
    splits = [json.loads(line)["split"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert splits[0] == "eval" and "train" in splits and splits[-1] == "eval"
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["lookahead"] == str(run_dir / "lookahead.npz")


def test_init_starts_from_exported_vectors(params, mesh, tmp_path):
    """train.init: a run continues from exported vectors (the first L of them); a wrong d_emb or too
    few steps is a clear error."""

    exported = np.random.default_rng(0).normal(size=(L + 2, CONFIG.hidden_size)).astype(np.float32)
    lookahead_lib.save(tmp_path / "start.npz", exported)
    t = run_config(tmp_path, init=str(tmp_path / "start.npz")).train
    state = loop.init_state(tiny_model(params), t, mesh)
    np.testing.assert_array_equal(np.array(state["lookahead"]), exported[:L])
    state, _ = loop.make_train_step(CONFIG, t)(params, state, jnp.asarray(periodic_data(4).sequences))
    assert not np.array_equal(np.array(state["lookahead"]), exported[:L])
    lookahead_lib.save(tmp_path / "narrow.npz", exported[:, :8])
    with pytest.raises(PassJaxError, match=r"needs \[L, 64\]"):
        loop.init_state(tiny_model(params), run_config(tmp_path, init=str(tmp_path / "narrow.npz")).train, mesh)
    lookahead_lib.save(tmp_path / "short.npz", exported[:1])
    with pytest.raises(PassJaxError, match="hold 1 look-ahead steps"):
        loop.init_state(tiny_model(params), run_config(tmp_path, init=str(tmp_path / "short.npz")).train, mesh)


def test_splice_keeps_the_heads_steps_and_the_tails_later_ones(params, tmp_path):
    """pass_jax.train.splice: steps 1..h from the head, h+1..L from the tail (deep if either is), and [LA]_1's
    draft is the head's own, since slot 1 sees no later slot."""
    from pass_jax.train import splice

    keys = jax.random.split(jax.random.key(3), 2)
    tail = np.asarray(lookahead_lib.init_random(CONFIG, L, keys[0]))
    head = {"embeds": np.asarray(lookahead_lib.init_random(CONFIG, 2, keys[1])),
            "layers": np.full((CONFIG.num_layers, 2, CONFIG.hidden_size), 0.1, np.float32)}
    lookahead_lib.save(tmp_path / "head.npz", head, {"command": "head"})
    lookahead_lib.save(tmp_path / "tail.npz", tail, {"command": "tail"})
    assert splice.main(["--head", str(tmp_path / "head.npz"), "--tail", str(tmp_path / "tail.npz"),
                        "--out", str(tmp_path / "out.npz")]) == 0
    out = lookahead_lib.load(tmp_path / "out.npz", CONFIG)
    np.testing.assert_array_equal(out["embeds"], np.concatenate([head["embeds"], tail[2:]]))
    np.testing.assert_array_equal(out["layers"][:, :2], head["layers"])
    assert not np.any(out["layers"][:, 2:])
    meta = lookahead_lib.read_metadata(tmp_path / "out.npz")
    assert meta["num_lookahead"] == L and meta["splice"]["head_command"] == "head"

    tokens = jnp.asarray(np.random.default_rng(0).integers(1, CONFIG.vocab_size, (1, SEQ_LEN)), jnp.int32)
    anchors = jnp.asarray([[5, 17]], jnp.int32)
    spliced_logits, _ = losses.lookahead_logits(out, params, CONFIG, tokens, anchors)
    head_logits, _ = losses.lookahead_logits(jax.tree.map(jnp.asarray, head), params, CONFIG, tokens, anchors)
    np.testing.assert_allclose(spliced_logits[:, :, :2], head_logits, rtol=1e-5, atol=1e-5)


def test_splice_keeps_an_adapter_heads_adapters(params, tmp_path):
    """An adapter head (L=2) spliced onto a deep tail keeps its adapters; [LA]_1 and [LA]_2 draft exactly as
    the head alone, and a tail with adapters beyond the head's steps is refused."""
    from pass_jax.train import splice

    head = lookahead_lib.init("adapter", params, CONFIG, 2, jax.random.key(4))
    head = jax.tree.map(lambda x: np.asarray(x + 0.2 * jax.random.normal(jax.random.key(6), x.shape)), head)
    tail = jax.tree.map(np.asarray, lookahead_lib.init("deep", params, CONFIG, L, jax.random.key(5)))
    out = splice.splice(head, tail)
    assert lookahead_lib.kind_of(out) == "adapter" and lookahead_lib.adapter_steps(out) == 2
    assert lookahead_lib.num_steps(out) == L
    tokens = jnp.asarray(np.random.default_rng(0).integers(1, CONFIG.vocab_size, (1, SEQ_LEN)), jnp.int32)
    anchors = jnp.asarray([[5, 17]], jnp.int32)
    spliced_logits, _ = losses.lookahead_logits(jax.tree.map(jnp.asarray, out), params, CONFIG, tokens, anchors)
    head_logits, _ = losses.lookahead_logits(jax.tree.map(jnp.asarray, head), params, CONFIG, tokens, anchors)
    np.testing.assert_allclose(spliced_logits[:, :, :2], head_logits, rtol=1e-5, atol=1e-5)
    wide = jax.tree.map(np.asarray, lookahead_lib.as_kind(tail, "adapter", CONFIG.num_layers, 4))
    with pytest.raises(ValueError, match="the tail has adapters on 4 steps"):
        splice.splice(head, wide)
