"""The per-device memory table of the family presets in README.md ("Model families"): `pass-jax plan`'s
numbers (bfloat16; generation: batch 8, prompt + new tokens 2048, the default iteration (tree 4,2, one call);
training: batch 8, seq_len 512, L = 8, 32 anchors, the vectors kind). Run: python docs/families/plan_table.py"""
from pass_jax.iteration import Iteration
from pass_jax.plan import plan

PRESETS = ["llama3_1_8b", "llama3_2_1b", "mistral_7b", "qwen2_5_7b", "qwen3_8b"]
GENERATE = ["1", "4", "1x4", "2x2", "1x8", "2x4"]
GIB = 2 ** 30

print("| preset | params | " + " | ".join(f"generate {m}" for m in GENERATE) + " | train 2x2 | train 1x4 |")
print("|---|---|" + "---|" * (len(GENERATE) + 2))
for name in PRESETS:
    cells = []
    for mesh in GENERATE:
        cells.append(plan(name, mesh, 8, 2048, dtype="bfloat16")["per_device"]["total"] / GIB)
    for mesh in ("2x2", "1x4"):
        cells.append(plan(name, mesh, 8, 512, iteration=Iteration.chain(8), dtype="bfloat16", train=True,
                          anchors=32)["per_device"]["total"] / GIB)
    from pass_jax.config import load_preset
    billions = load_preset(name).num_params() / 1e9
    print(f"| {name} | {billions:.2f}B | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
