"""Batch generation at the edge: tokenize (raw or through the chat template), bucket, batch, run the
jitted loop in chunks (streaming between them, and a Ctrl-C is taken between them), detokenize.

Python-side state lives only here and in the CLI; `decoding` stays pure.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import json
import sys
import time
import types
from typing import Any, Callable, Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from . import lookahead as lookahead_lib
from .decoding import DecodeSpec, check_context, decode_steps, decode_steps_jit, prefill_jit, start_row_jit
from .distributed import agree, gather_to_host, global_array_from_local, process_local_batch, replicate
from .errors import PassJaxError
from .iteration import Iteration
from .loading import DEFAULT_MODEL, LoadedModel, load_model
from .sampling import SamplingConfig

MIN_BUCKET = 16
# The decode loop runs in chunks of about this long, in every output mode: a streamed answer is read
# between them, and a Ctrl-C (KeyboardInterrupt) is taken between them, so it ends a run within about
# this long. A chunk costs a host-device sync and a launch, a fixed time that would be a large share
# of a fast decode step (an accelerator's, or ar's) if every iteration were one; so the chunk grows
# until it takes this long.
CHUNK_INTERVAL_S = 0.2
# The bundled SmolLM2-135M-Instruct (Q4_1) under its template's own system prompt answers "The capital
# of France is" in broken French; under this one it answers it, and 9 of 12 short factual prompts
# against 7 of 12 (greedy; docs/bench/chat_prompts.py).
BUNDLED_SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly."


class GenerationError(PassJaxError):
    """A prompt or setting that cannot be generated from."""


@dataclasses.dataclass
class GenerationResult:
    prompt: str
    text: str
    tokens: list[int]
    stats: dict[str, Any]
    id: Any = None  # `Generator.results`: the prompt's id (given, or its 1-based position)


def resolve_chat(tokenizer, chat: bool | str) -> bool:
    """True/False as given, or "auto": on when the tokenizer has a chat template (instruct models)."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat == "auto":
        return has_template
    if not isinstance(chat, bool):
        raise GenerationError(f"chat must be True, False or 'auto', got {chat!r}")
    if chat and not has_template:
        raise GenerationError("chat mode needs a chat template and this model's tokenizer has none; "
                              "generate from the raw prompt (--no-chat, chat=False)")
    return chat


def decode_whole_characters(tokenizer, ids: Sequence[int]) -> str:
    """The text of `ids`, without a last character that the token budget cut inside its UTF-8 bytes (an
    emoji spans several byte tokens): the tokenizer would end the text with U+FFFD instead."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    for cut in range(1, min(4, len(ids)) + 1):  # a UTF-8 character has at most 4 bytes
        if not text.endswith("\ufffd"):
            break
        shorter = tokenizer.decode(ids[:-cut], skip_special_tokens=True)
        if not shorter.endswith("\ufffd"):
            return shorter
    return text


class TextStream:
    """Incremental detokenization of a growing list of token ids.

    Each `push` decodes only from the previous boundary on (not the whole list), and holds back text
    that ends in an incomplete UTF-8 character (U+FFFD) until its next bytes arrive. Decoding a
    window that starts one boundary back, then dropping that boundary's text, keeps tokenizers that
    strip a leading space from a window's first word joining correctly.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = self.read = 0  # window start; ids[:read] are printed
        self.emitted = 0             # characters printed

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, ids: Sequence[int]) -> str:
        """The new text of `ids` (all tokens so far, extending the last call's)."""
        self.ids = list(ids)
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        self.emitted += len(after) - len(before)
        return after[len(before):]

    def finish(self, text: str) -> str:
        """What is left of the full decoded `text` (including held-back characters)."""
        rest = text[self.emitted:]
        self.emitted = len(text)
        return rest


def resolve_lookahead(model: LoadedModel, spec: str | None, domain: str = "text", num_lookahead: int | None = None,
                      found: lookahead_lib.Resolved | None = None) -> lookahead_lib.Resolved:
    """`--lookahead {default,text,code,none,PATH}` for this model, read once -> `lookahead.Resolved`
    (parameters, source, metadata) for `Generator`; `default` is the shipped parameters of `domain` for
    the bundled model (see `lookahead.resolve`), `num_lookahead` the steps of an untrained draw."""
    return lookahead_lib.resolve(spec, model.params, model.config, model.identity, domain=domain,
                                 num_lookahead=num_lookahead, found=found)


def bucket_width(length: int, max_len: int) -> int:
    """Pad prompts to a power of two (at least MIN_BUCKET) so new lengths rarely recompile."""
    width = MIN_BUCKET
    while width < length:
        width *= 2
    return min(width, max_len)


def row_stats(stats, row: int, prompt_length: int) -> dict[str, Any]:
    """Row `row`'s statistics from a (host) `DecodeStats`, as JSON-ready numbers."""
    s = jax.tree.map(lambda x: np.asarray(x[row]), stats)
    calls, new = int(s.model_calls), int(s.new_tokens)
    iterations = int(s.accepted_hist.sum())
    accepted = int((s.accepted_hist * np.arange(len(s.accepted_hist))).sum())
    return {
        "prompt_tokens": prompt_length,
        "model_calls": calls,
        "new_tokens": new,
        "tokens_per_call": new / max(calls, 1),
        "iterations": iterations,
        "accepted_drafts": accepted,
        "mean_accepted": accepted / iterations if iterations else 0.0,
        "accepted_hist": s.accepted_hist.tolist(),
        "position_reached": s.position_reached.tolist(),
        "position_accepted": s.position_accepted.tolist(),
        "context_accepted": int(s.context_accepted),
        "recycle_accepted": int(s.recycle_accepted),
    }


def summarize(stats: Sequence[dict[str, Any]], wall_s: float, compile_s: float) -> dict[str, Any]:
    total = lambda key: sum(s[key] for s in stats)  # noqa: E731
    reached = np.sum([s["position_reached"] for s in stats], axis=0) if stats else np.zeros(0)
    accepted = np.sum([s["position_accepted"] for s in stats], axis=0) if stats else np.zeros(0)
    hist = np.sum([s["accepted_hist"] for s in stats], axis=0) if stats else np.zeros(1)
    new, calls, iterations = total("new_tokens"), total("model_calls"), total("iterations")
    return {
        "prompts": len(stats),
        "model_calls": calls,
        "new_tokens": new,
        "tokens_per_call": new / max(calls, 1),
        "mean_accepted": total("accepted_drafts") / iterations if iterations else 0.0,
        # of the accepted drafts, the shares the context and recycle proposers made
        "context_share": total("context_accepted") / max(total("accepted_drafts"), 1),
        "recycle_share": total("recycle_accepted") / max(total("accepted_drafts"), 1),
        "accepted_hist": hist.tolist(),
        "position_acceptance": [float(a / r) if r else 0.0 for a, r in zip(accepted, reached)],
        "wall_s": wall_s,
        "tokens_per_s": new / wall_s if wall_s > 0 else 0.0,
        "compile_s": compile_s,
    }


def prompt_keys(seed: int, prompt_ids: Iterable[Any]) -> jax.Array:
    """PRNG keys [B] of prompts by id (any JSON value: given, or the prompt's 1-based position): a
    prompt's draws come from its key alone (`decoding.prefill`), so it samples the same answer in any
    batch, row, schedule or resumed run of the same seed. The id's JSON is hashed (not Python's salted
    `hash`) so every process and run derives the same key."""
    digests = [np.frombuffer(hashlib.blake2b(json.dumps(i, sort_keys=True).encode(), digest_size=8).digest(),
                             np.uint32) for i in prompt_ids]
    base = jax.random.key(seed)
    return jax.vmap(lambda words: jax.random.fold_in(jax.random.fold_in(base, words[0]), words[1]))(
        jnp.asarray(np.stack(digests)))


def _padded(prompt_ids: Sequence[Sequence[int]], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Prompts right-padded to `width`: (tokens int32 [B, width], lengths int32 [B])."""
    tokens = np.zeros((len(prompt_ids), width), np.int32)
    for row, ids in enumerate(prompt_ids):
        tokens[row, :len(ids)] = ids
    return tokens, np.asarray([len(p) for p in prompt_ids], np.int32)


class _Chunks:
    """Runs the loop a chunk at a time; a chunk's iteration count grows (at most 4x a chunk) until a
    chunk takes about CHUNK_INTERVAL_S. That count comes from a clock, so each process would choose its
    own: every process runs process 0's (`agree`)."""

    def __init__(self):
        self.steps = 1  # the next chunk's iteration cap

    def run(self, steps, params, lookahead, state, lengths):
        tick = time.perf_counter()
        state = steps(params, lookahead, state, lengths, np.int32(self.steps))
        jax.block_until_ready(state.lengths)
        per_step = (time.perf_counter() - tick) / self.steps
        self.steps = agree(max(1, min(4 * self.steps, int(CHUNK_INTERVAL_S / per_step))))
        return state


@dataclasses.dataclass
class Occupancy:
    """Row-steps of the decode loop: every row of every loop iteration (`row_steps`) and those whose
    row held a prompt still decoding (`useful`); padding rows and finished rows waiting for the
    rest of their batch are the difference."""

    row_steps: int = 0
    useful: int = 0

    @property
    def fraction(self) -> float:
        return self.useful / self.row_steps if self.row_steps else 0.0


@dataclasses.dataclass
class _Queued:
    id: Any
    prompt: str
    ids: list[int]


class Generator:
    """Generates from one loaded model with fixed decode settings; compiles once per bucket.

    iteration: the shape of a decode iteration (`Iteration`: calls, look-ahead steps, draft tree;
    `Iteration.AR` for plain decoding). Instead of it, the options `mode`, `num_lookahead`, `calls`,
    `draft_tree` and `drafts` (the context chain's M, or `--drafts`' text) may name it as the CLI does (`Iteration.from_options`); with neither, the default
    iteration every entry point shares (one call, tree 4,2).

    chat: True puts each prompt into the tokenizer's chat template as a user message (after the
    `system` message: by default BUNDLED_SYSTEM_PROMPT for the bundled model, the template's own for
    others) and generates the assistant's answer; "auto" does so when the tokenizer has a template.
    The default False feeds the prompt as raw text to continue.

    lookahead: PaSS's look-ahead parameters: a `lookahead.Resolved` (from `resolve_lookahead`, which
    resolves a `--lookahead` name or path once), or parameters of any kind (an array [L', d_emb] or a
    deep/adapter dict, L' >= L) described in reports as `lookahead_source`, or None for the model's
    default (the shipped text parameters for the bundled model, else untrained). They are checked
    and cut to the iteration's L here, once.
    """

    def __init__(self, model: LoadedModel, iteration: Iteration | None = None, *, lookahead: Any = None,
                 lookahead_source: str | None = None, max_new_tokens: int = 128,
                 sampling: SamplingConfig = SamplingConfig(), batch_size: int = 1, mesh=None,
                 stop_ids: Sequence[int] = (), chat: bool | str = False, system: str | None = None,
                 mode: str | None = None, num_lookahead: int | None = None, calls: int | None = None,
                 draft_tree: Sequence[int] | None = None, drafts: int | str | None = None):
        if batch_size < 1:
            raise GenerationError(f"batch size must be >= 1, got {batch_size}")
        options = (mode, num_lookahead, calls, draft_tree, drafts)
        if iteration is None:
            iteration = Iteration.from_options(*options)
        elif any(option is not None for option in options):
            raise GenerationError("give the iteration or the options mode/num_lookahead/calls/draft_tree/drafts, not both")
        self.chat = resolve_chat(model.tokenizer, chat)
        if system is not None and not self.chat:
            raise GenerationError("a system prompt needs chat mode (--chat, chat=True)")
        if system is None and self.chat and model.identity == DEFAULT_MODEL:
            system = BUNDLED_SYSTEM_PROMPT
        self.system = system
        self.model = model
        self.mesh = mesh
        self.batch_size = batch_size
        eos = model.tokenizer.eos_token_id
        # A row ends at EOS or at any of `stop_ids` (kept, like EOS, as its last token).
        # and at the checkpoint's other end-of-turn tokens (generation_config.json's eos_token_id list, GGUF eot).
        stops = tuple(sorted({int(i) for i in stop_ids} | ({int(eos)} if eos is not None else set())
                             | {int(i) for i in getattr(model, "stop_ids", ())}))
        self.spec = DecodeSpec(model.config, iteration, max_new_tokens=max_new_tokens, sampling=sampling,
                               eos_ids=stops, mesh=mesh)
        self.iteration = iteration
        self.lookahead, self.lookahead_source = None, "unused (autoregressive)"  # plain decoding takes none
        if iteration.mode == "pass":
            if lookahead is None:
                lookahead = resolve_lookahead(model, "default", num_lookahead=iteration.num_lookahead)
            elif isinstance(lookahead, str):
                raise GenerationError(f"lookahead={lookahead!r}: Generator takes look-ahead parameters; resolve a "
                                      "name or path with pass_jax.generate.resolve_lookahead(model, spec)")
            elif not isinstance(lookahead, lookahead_lib.Resolved):
                lookahead = lookahead_lib.Resolved(lookahead, lookahead_source or "given")
            self.lookahead = lookahead.prepare(model.config, iteration.num_lookahead)
            self.lookahead_source = lookahead.source
        self._compiled: dict[tuple[int, int], Any] = {}
        self._row_prefills: dict[int, Any] = {}  # the prefill of one row per bucket (`results` refills)
        self.compile_s = 0.0
        self.occupancy = Occupancy()  # over every batch this generator ran

    def encode(self, prompt: str) -> list[int]:
        if not prompt or not prompt.strip():
            raise GenerationError("empty prompt: give some text to continue")
        if self.chat:
            ids = self._chat_ids(prompt)
        else:
            ids = list(self.model.tokenizer(prompt)["input_ids"])
        check_context(self.spec, len(ids), GenerationError)
        return ids

    def _chat_ids(self, prompt: str) -> list[int]:
        messages = [{"role": "system", "content": self.system}] if self.system is not None else []
        messages.append({"role": "user", "content": prompt})
        tokenizer = self.model.tokenizer
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as err:  # jinja raises TemplateError (e.g. a template without a system role)
            raise GenerationError(f"the model's chat template refused the prompt: {err}") from None
        # The template writes its own special tokens (BOS too, where the model expects one).
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def _executables(self, batch: int, width: int, args):
        """AOT-compile the prefill and the decode loop per (batch, bucket), timing compilation apart."""
        key = (batch, width)
        if key not in self._compiled:
            start = time.perf_counter()
            prefill = prefill_jit.lower(*args, spec=self.spec).compile()
            params, lookahead, _, lengths, _ = args
            # The loop runs in chunks, each taking the last one's state: on a mesh, pin its output
            # shardings to its input's (prefill's), or XLA may shard per-row state that came in replicated.
            loop = decode_steps_jit if self.mesh is None else jax.jit(
                decode_steps, static_argnames=("spec",), donate_argnames=("state",),
                out_shardings=prefill.output_shardings)
            steps = loop.lower(params, lookahead, prefill.out_info, lengths, np.int32(0), spec=self.spec).compile()
            self._compiled[key] = prefill, steps
            self.compile_s += time.perf_counter() - start
        return self._compiled[key]

    def _row_prefill(self, width: int, args):
        """The compiled prefill of one prompt at bucket `width` (`args` as for it), timed like `_executables`."""
        if (1, width) in self._compiled:
            return self._compiled[1, width][0]
        if width not in self._row_prefills:
            start = time.perf_counter()
            self._row_prefills[width] = prefill_jit.lower(*args, spec=self.spec).compile()
            self.compile_s += time.perf_counter() - start
        return self._row_prefills[width]

    def generate_ids(self, prompt_ids: Sequence[Sequence[int]], seed: int = 0,
                     on_chunk: Callable[[np.ndarray, np.ndarray], None] | None = None, ids: Iterable[Any] | None = None):
        """Decode one batch of token-id prompts; returns (the final DecodeState on host, wall seconds).

        Each prompt samples from its key `prompt_keys(seed, ids)` (`ids` default to the 1-based positions).

        The loop runs in chunks of about CHUNK_INTERVAL_S (a KeyboardInterrupt is raised between them);
        with `on_chunk`, `on_chunk(tokens, lengths)` sees the committed tokens on host after the prefill
        and after every chunk. The result is the same either way: a chunk only caps the loop's
        iteration count (`decoding.decode` is the same loop in one piece).
        """
        batch, longest = len(prompt_ids), max(len(p) for p in prompt_ids)
        check_context(self.spec, longest, GenerationError)  # as in encode, for callers that skip it
        width = bucket_width(longest, self.model.config.max_seq_len)
        tokens, lengths = _padded(prompt_ids, width)
        key = prompt_keys(seed, ids if ids is not None else range(1, batch + 1))
        lookahead = self.lookahead
        if self.mesh is None:
            tokens, lengths = jnp.asarray(tokens), jnp.asarray(lengths)
        else:  # every process holds all prompts and feeds its own rows of the data-sharded batch
            rows = process_local_batch(batch, self.mesh)
            tokens = global_array_from_local(tokens[rows], self.mesh)
            lengths = global_array_from_local(lengths[rows], self.mesh)
            key, lookahead = replicate((key, lookahead), self.mesh)
        args = (self.model.params, lookahead, tokens, lengths, key)
        prefill, steps = self._executables(batch, width, args)
        start = time.perf_counter()
        state = prefill(*args)
        chunks = _Chunks()
        while True:
            if on_chunk is not None:
                host_tokens, host_lengths = gather_to_host((state.tokens, state.lengths))
                on_chunk(host_tokens, host_lengths)
            if gather_to_host(state.done).all():
                break
            state = chunks.run(steps, self.model.params, lookahead, state, lengths)
        jax.block_until_ready(state.tokens)
        wall = time.perf_counter() - start
        return gather_to_host(state._replace(cache=None, key=None)), wall

    def _iterations(self, stats) -> np.ndarray:
        """Loop iterations each row has run, from its host `DecodeStats` (the prefill is its first call)."""
        return (np.asarray(stats.model_calls) - 1) // self.iteration.calls

    def results(self, prompts: Iterable[str | tuple[Any, str]], seed: int = 0,
                window: int | None = None) -> Iterator[GenerationResult]:
        """Generate for every prompt, yielding each result as soon as its prompt is done (in any order;
        `result.id` says which: the id given as `(id, prompt)`, or the prompt's 1-based position).

        Prompts are read lazily: at most `window` (default 8 batches) wait, grouped by bucket width. A
        batch is taken from the fullest bucket, and between chunks of the loop a finished row is
        refilled with the next prompt of that bucket (its prefill alone, written in by `decoding.start_row`),
        so rows stay busy until the bucket runs dry. One compilation per (batch, bucket). Each prompt
        samples from its own key (`prompt_keys(seed, id)`), so a result equals its prompt decoded alone
        (`generate_ids(..., ids=[id])`), greedy and sampled, and `generate` gives the same answers for
        position ids. One process.
        """
        if self.mesh is not None:
            raise GenerationError("results() runs on one process; on a mesh use generate()")
        window = max(window or 8 * self.batch_size, self.batch_size)

        def queued(position: int, prompt: str | tuple[Any, str]) -> _Queued:
            prompt_id, text = prompt if isinstance(prompt, tuple) else (position, prompt)
            return _Queued(prompt_id, text, self.encode(text))

        for item, new_ids, stats in self._decode_queue(itertools.starmap(queued, enumerate(prompts, 1)), seed,
                                                       window):
            text = decode_whole_characters(self.model.tokenizer, new_ids)
            yield GenerationResult(item.prompt, text, new_ids, stats, id=item.id)

    def _decode_queue(self, items: Iterator[_Queued], seed: int, window: int):
        """`results` on token ids: yields (item, new token ids, stats) as each row finishes."""
        size, max_len = self.batch_size, self.model.config.max_seq_len
        params, lookahead = self.model.params, self.lookahead
        queues: dict[int, collections.deque] = collections.defaultdict(collections.deque)
        waiting = 0

        def read_ahead() -> None:
            nonlocal waiting
            while waiting < window and (item := next(items, None)) is not None:
                queues[bucket_width(len(item.ids), max_len)].append(item)
                waiting += 1

        def take(queue: collections.deque, count: int) -> list[_Queued]:
            nonlocal waiting
            taken = [queue.popleft() for _ in range(min(count, len(queue)))]
            waiting -= len(taken)
            return taken

        read_ahead()
        while True:
            if not waiting:
                return
            width = max(queues, key=lambda w: len(queues[w]))
            queue = queues[width]
            rows: list[_Queued | None] = take(queue, size)
            rows += [None] * (size - len(rows))
            tokens, lengths = _padded([(r or rows[0]).ids for r in rows], width)
            key = prompt_keys(seed, [(r or rows[0]).id for r in rows])
            args = (params, lookahead, jnp.asarray(tokens), jnp.asarray(lengths), key)
            prefill, steps = self._executables(size, width, args)
            state, lengths = prefill(*args), args[3]
            # padding rows are done from the start: the loop skips them
            state = state._replace(done=state.done | jnp.asarray([r is None for r in rows]))
            started = [time.perf_counter()] * size
            chunks, before, cap = _Chunks(), None, 0
            while True:
                host_lengths, done, stats, host_tokens = gather_to_host(
                    (state.lengths, state.done, state.stats, state.tokens))
                iterations = self._iterations(stats)
                if before is not None:  # the chunk ran `cap` iterations, or until its last row ended
                    ran = iterations - before
                    self.occupancy.useful += int(ran.sum())
                    self.occupancy.row_steps += size * (int(ran.max()) if done.all() else cap)
                for row, item in enumerate(rows):
                    if item is not None and done[row]:
                        wall = time.perf_counter() - started[row]
                        result = row_stats(stats, row, len(item.ids))
                        result.update(wall_s=wall, tokens_per_s=result["new_tokens"] / wall)
                        yield item, host_tokens[row, len(item.ids):host_lengths[row]].tolist(), result
                        rows[row] = None
                read_ahead()
                free = [row for row, item in enumerate(rows) if item is None]
                for row, item in zip(free, take(queue, len(free))):
                    rows[row], started[row], iterations[row] = item, time.perf_counter(), 0  # a fresh prefill's
                    tokens, new_length = (jnp.asarray(a) for a in _padded([item.ids], width))
                    one = (params, lookahead, tokens, new_length, prompt_keys(seed, [item.id]))
                    state, lengths = start_row_jit(state, self._row_prefill(width, one)(*one), lengths, new_length,
                                                   np.int32(row))
                if all(item is None for item in rows):
                    break
                before, cap = iterations, chunks.steps
                state = chunks.run(steps, params, lookahead, state, lengths)

    def generate(self, prompts: Sequence[str], seed: int = 0, progress: bool = False,
                 stream: Callable[[int, str], None] | None = None) -> tuple[list[GenerationResult], dict]:
        """Generate for every prompt; returns (results, summary).

        Prompt i (1-based) samples from `prompt_keys(seed, [i])`, as in `results`.
        stream: called as `stream(index, text)` with each new piece of prompt `index`'s answer as its
        tokens are committed: at least once per prompt (the first piece may be empty), prompts in
        order, and the pieces of a prompt join to its result's text. Needs batch size 1.
        """
        if stream is not None and self.batch_size != 1:
            raise GenerationError(f"streaming shows one prompt at a time and needs batch size 1, got {self.batch_size}")
        encoded = [self.encode(p) for p in prompts]
        results: list[GenerationResult] = []
        wall_total = 0.0
        # Never more rows than prompts (copies would be wasted work); later batches keep this size.
        size = min(self.batch_size, max(len(encoded), 1))
        batches = range(0, len(prompts), size)
        # A streamed answer is its own progress display; a bar would cut through it.
        show_bar = progress and stream is None and len(batches) > 1
        for start in tqdm(batches, desc="generating", unit="batch", disable=not show_bar):
            chunk = encoded[start:start + size]
            # Fill a short last batch with copies so the compiled batch size is reused.
            padded = chunk + [chunk[0]] * (size - len(chunk))
            on_chunk = text_stream = None
            if stream is not None:
                text_stream = TextStream(self.model.tokenizer)

                def on_chunk(tokens, lengths, index=start, prompt_length=len(chunk[0]), pieces=text_stream):
                    stream(index, pieces.push(tokens[0, prompt_length:lengths[0]].tolist()))
            state, wall = self.generate_ids(padded, seed=seed, on_chunk=on_chunk,
                                            ids=range(start + 1, start + size + 1))
            wall_total += wall
            iterations = self._iterations(state.stats)
            self.occupancy.row_steps += size * int(iterations.max())  # the loop ran until its last row ended
            self.occupancy.useful += int(iterations[:len(chunk)].sum())
            for row, ids in enumerate(chunk):
                length = int(state.lengths[row])
                new_ids = [int(t) for t in state.tokens[row, len(ids):length]]
                stats = row_stats(state.stats, row, len(ids))
                stats.update(wall_s=wall, tokens_per_s=stats["new_tokens"] / wall if wall > 0 else 0.0)
                text = decode_whole_characters(self.model.tokenizer, new_ids)
                if text_stream is not None and (rest := text_stream.finish(text)):
                    stream(start, rest)
                results.append(GenerationResult(prompts[start + row], text, new_ids, stats))
        return results, summarize([r.stats for r in results], wall_total, self.compile_s)


def generate(prompts: str | Iterable[str], model: str | LoadedModel = DEFAULT_MODEL, *, seed: int = 0,
             **settings) -> list[GenerationResult]:
    """One-call API: `generate("Once upon a time")` decodes with the default iteration (as the CLI does);
    `generate(..., num_lookahead=4, calls=2)` or `iteration=Iteration(...)` names another, and
    `chat="auto"` asks an instruct model in its chat template. Settings are `Generator`'s, and
    `lookahead` may also be a `--lookahead` name or path."""
    if isinstance(prompts, str):
        prompts = [prompts]
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    iteration = settings.pop("iteration", None) or Iteration.from_options(
        *(settings.pop(option, None) for option in ("mode", "num_lookahead", "calls", "draft_tree", "drafts")))
    if iteration.mode == "pass" and isinstance(settings.get("lookahead"), str):  # a --lookahead name or path
        settings["lookahead"] = resolve_lookahead(loaded, settings["lookahead"], num_lookahead=iteration.num_lookahead)
    results, _ = Generator(loaded, iteration, **settings).generate(list(prompts), seed=seed)
    return results


class _CallableModule(types.ModuleType):
    """`pass_jax.generate` is this module (so `pass_jax.generate.Generator` and patching its names work)
    and, called, the one-call API: `pass_jax.generate("Once upon a time")` is `generate(...)` above."""

    def __call__(self, *args, **kwargs):
        return generate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
