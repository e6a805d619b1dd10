#!/usr/bin/env bash
# Issue 23's final measurements, for an otherwise idle machine (run from the repository root):
#
#   bash docs/bench/issue23_final.sh [OUT_DIR]        # default OUT_DIR: docs/bench/issue23_final
#
# 1. The README's first command twice: `--retune` (tunes, as a first run does) and then with the stored
#    profile; wall time of each, and the lines naming the tuned setting.
# 2. One `pass-jax bench` on held-out prompts of both domains, paper sampling: ar against the setting
#    that first command decodes with (its profile's choice; with ar chosen, its best PaSS setting, to show
#    the margin), interleaved in one process.
# 3. The BENCHMARKS table with the shipped parameters, paper sampling and greedy, text and code: L=1 and
#    tree 4,2, one and two calls, without and with 4 context drafts (tree 4,2, one call, context 4 is the
#    default iteration where no tuned profile applies, e.g. `--mode pass`), each speed beside its tokens
#    per call (the JSON reports hold both per row; bench prints the table).
# Each part prints its own wall time; everything it prints is also kept in OUT_DIR/log.txt.
set -euo pipefail
out=${1:-docs/bench/issue23_final}
mkdir -p "$out"
exec > >(tee "$out/log.txt") 2>&1
pj=.venv/bin/pass-jax
py=.venv/bin/python
start=$(date +%s)
echo "issue 23 final measurements, $(date -u), commit $(git rev-parse --short HEAD), load: $(cut -d' ' -f1-3 /proc/loadavg)"

echo "== 1. the first command: the tuning run, then the run with the stored profile"
for run in tuning stored; do
    flags=(); [ "$run" = tuning ] && flags=(--retune)
    t0=$(date +%s.%N)
    $pj generate --prompt "The capital of France is" "${flags[@]}" 2> "$out/first_command_$run.err"
    t1=$(date +%s.%N)
    grep -E "^(tuning|decoding with|autotune)" "$out/first_command_$run.err" || true
    echo "first command ($run run): wall $(echo "$t1 - $t0" | bc) s"
done

# The setting it decodes with ("decoding with PaSS LABEL: ..." or "decoding with ar: ... (best: LABEL...").
line=$(grep -m1 "^decoding with" "$out/first_command_stored.err")
bench_args=$($py - "$line" <<'EOF'
import re, sys
from pass_jax.iteration import Iteration
line = sys.argv[1]
found = re.match(r"decoding with PaSS (.+?): ", line) or re.search(r"\(best: (.+?)(?:, [0-9.]+x ar)?; tuned", line)
it = Iteration.parse(found.group(1))
# bench needs a chain: a tree comes with the chain of its depth beside it
shape = f"-L {it.num_lookahead} --draft-tree " + ("none" if it.is_chain else ",".join(map(str, it.draft_tree)))
drafts = f"lookahead,context:{it.context}" if it.context else "lookahead"
print(f"{shape} --calls {it.calls} --drafts {drafts}")
EOF
)
echo "== 2. bench: ar against the first command's setting ($line -> $bench_args), paper sampling, both domains"
t0=$(date +%s)
$pj bench --domain both --num-prompts 4 --max-new-tokens 64 --rounds 2 --no-transformers $bench_args \
    --json "$out/default_vs_ar.json" --overwrite
echo "part 2: $(( $(date +%s) - t0 )) s"

echo "== 3. the table with the shipped parameters, paper sampling and greedy"
for sampling in paper greedy; do
    temperature=(); [ "$sampling" = greedy ] && temperature=(--temperature 0)
    t0=$(date +%s)
    $pj bench --domain both --num-prompts 2 --max-new-tokens 64 --rounds 2 --no-transformers -L 1 --draft-tree 4,2 \
        --calls 1,2 --drafts lookahead --drafts lookahead,context:4 "${temperature[@]}" --json "$out/table_$sampling.json" \
        --overwrite
    echo "part 3 ($sampling): $(( $(date +%s) - t0 )) s"
done
echo "all parts: $(( $(date +%s) - start )) s"
