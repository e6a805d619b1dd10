"""What the loop scripts in docs/bench share (imported as `_steps`: they run from this folder)."""
import jax
import jax.numpy as jnp
import numpy as np

from pass_jax.generate import Generator, resolve_lookahead

WIDTH = 256  # the prompt bucket


def compiled_loop(model, iteration, sampling, prompt, max_new_tokens):
    """A `Generator` of `iteration` (the shipped code parameters), warmed up on `prompt` (one row of at
    most WIDTH ids), and its compiled (prefill, decode_steps) with their arguments: returns
    (generator, prefill, steps, prefill args, prompt lengths)."""
    la = None if iteration.mode == "ar" else resolve_lookahead(model, "code", num_lookahead=iteration.num_lookahead)
    g = Generator(model, iteration, lookahead=la, max_new_tokens=max_new_tokens, sampling=sampling)
    g.generate_ids(prompt)
    tokens = jnp.asarray(np.pad(np.asarray(prompt, np.int32), ((0, 0), (0, WIDTH - len(prompt[0])))))
    lengths = jnp.asarray([len(prompt[0])], jnp.int32)
    args = (model.params, g.lookahead, tokens, lengths, jax.random.key(1))
    prefill, steps = g._executables(1, WIDTH, args)
    return g, prefill, steps, args, lengths
