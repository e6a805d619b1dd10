# The diagnostic at the model's own contexts: usage  eval.sh LABEL LOOKAHEAD_PATTERN DOMAIN...
# ({domain} in LOOKAHEAD_PATTERN is replaced; text -> config smollm2_135m_wiki, code -> smollm2_135m_python)
set -e
label=$1; pattern=$2; shift 2
for domain in "$@"; do
  config=$([ "$domain" = text ] && echo smollm2_135m_wiki || echo smollm2_135m_python)
  for mode in chat raw; do
    out=docs/training_runs/onpolicy/eval-$label-$domain-$mode.json
    [ -f "$out" ] && continue  # resumable: a finished measurement is kept
    .venv/bin/pass-jax train eval --config $config --lookahead "${pattern//\{domain\}/$domain}" \
      --own runs/onpolicy/$domain-test.jsonl --own-mode $mode -L 4 --sequences 24 --anchors-per-seq 3 --json "$out"
  done
done
