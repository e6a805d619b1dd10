# Op-level profile (jax.profiler, Perfetto trace) of the gradient of one data-target adapter step, by HLO op_name:
#   rm -rf /tmp/prof/tr; .venv/bin/python docs/training_runs/adapter-more/grad_profile.py
import time, jax, jax.numpy as jnp, numpy as np, glob, gzip, json, collections
from pass_jax.loading import load_model
from pass_jax import lookahead as lookahead_lib
from pass_jax.train import losses
from pass_jax.sampling import SamplingConfig
m = load_model("smollm2-135m")
cfg, params = m.config, m.params
la = lookahead_lib.prepare(lookahead_lib.load("pass_jax/lookahead_weights/smollm2-135m-code.npz", cfg), cfg, 2, "x")
la = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), la)
B, T, G, L = 2, 128, 125, 2
tokens = jnp.asarray(np.random.default_rng(0).integers(0, 49000, (B, T)), jnp.int32)
anchors = losses.sample_anchors(jax.random.key(0), B, T, G, L)
s = SamplingConfig(temperature=0.8, top_k=10)
teacher = jax.jit(lambda p, t, a: losses.teach(p, cfg, t, a, L, s, "data"))(params, tokens, anchors)
g = jax.jit(lambda la, p, te, a: jax.value_and_grad(losses.cached_loss, has_aux=True)(la, p, cfg, te, T, a, "kl", s))
jax.block_until_ready(g(la, params, teacher, anchors))
with jax.profiler.trace("/tmp/prof/tr", create_perfetto_trace=True):
    jax.block_until_ready(g(la, params, teacher, anchors))
f = glob.glob("/tmp/prof/tr/**/*.trace.json.gz", recursive=True)[0]
ev = json.load(gzip.open(f))
ev = ev["traceEvents"] if isinstance(ev, dict) else ev
tot = collections.Counter(); cnt = collections.Counter()
for e in ev:
    if e.get("ph") == "X":
        tot[e["name"]] += e.get("dur", 0); cnt[e["name"]] += 1
print("total op ms", sum(d for n, d in tot.items() if not n.startswith("$") and "Thunk" not in n)/1e3)
import re
hlo = g.lower(la, params, teacher, anchors).compile().as_text()
meta = {}
for line in hlo.splitlines():
    mm = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (.*)", line)
    if mm:
        on = re.search(r'op_name="([^"]*)"', line)
        shape = mm.group(2)[:60]
        meta[mm.group(1)] = (on.group(1) if on else "", shape)
cat = collections.Counter()
for n, d in tot.items():
    if n.startswith("$") or "Thunk" in n: continue
    cat[re.sub(r"\.\d+$", "", n)] += d
print("by kind:"); [print(f"{d/1e3:9.1f} ms {n}") for n, d in cat.most_common(15)]
print("by op_name:")
byop = collections.Counter()
for n, d in tot.items():
    if n in meta: byop[re.sub(r"jit\(<lambda>\)/", "", meta[n][0])[:90]] += d
[print(f"{d/1e3:9.1f} ms {n}") for n, d in byop.most_common(30)]
print("by op category:")
bycat = collections.Counter(); kinds = collections.defaultdict(collections.Counter)
for n, d in tot.items():
    if n in meta:
        k = re.sub(r"layer_\d+", "layer_N", re.sub(r"jit\(<lambda>\)/", "", meta[n][0]))[:100]
        bycat[k] += d; kinds[k][re.sub(r"\.\d+$", "", n)] += d
[print(f"{d/1e3:9.1f} ms {n}  {dict(kinds[n].most_common(3))}") for n, d in bycat.most_common(25)]
