#!/usr/bin/env bash
# Convert a Hugging Face LLaMA checkpoint (or GGUF file) to a sharded Orbax checkpoint on the TPU VM.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

usage() {
    cat <<EOF
Usage: $PJ_PROG --name NAME --zone ZONE --src SRC --dst DST
                 [--download-dir DIR] [--project PROJECT] [--dry-run]
                 [-- EXTRA pass-jax convert ARGS...]

Run "pass-jax convert SRC DST" on every worker at once (--worker=all, with
PASS_JAX_DISTRIBUTED=1), so that each host writes its own shards of the Orbax
checkpoint. Runs in the foreground; the output streams back here.

Options:
  --src SRC          the Hugging Face LLaMA directory or GGUF file, either
                     gs://BUCKET/PATH (first copied to every worker with
                     "gcloud storage cp -r --no-clobber", or "gsutil -m cp -r -n"
                     where gcloud is missing, into DIR/<basename>)
                     or a path that already exists on every worker. Required.
  --dst DST          the Orbax checkpoint directory to write:
                     gs://BUCKET/PATH or a path on the workers. With more than
                     one worker (a pod slice) use gs://, otherwise each worker
                     keeps only its own shards. Required.
  --download-dir DIR where a gs:// --src is copied on each worker
                     (default: ~/pass-jax-data).
  -- ARGS...         anything after "--" is appended to pass-jax convert.

$PJ_COMMON_HELP

$PJ_LAYOUT_HELP
The workers' service account needs read access to a gs:// --src and write
access to a gs:// --dst.

Example:
  $PJ_PROG --name pass-v4 --zone us-central2-b \\
      --src gs://my-bucket/llama-7b-hf --dst gs://my-bucket/ckpt/llama-7b
EOF
}

PJ_OPTIONS=(src: dst: download-dir:)
PJ_REQUIRED=(src dst)
PJ_REST=dashdash
pj_parse "$@"

src=${OPT[src]}
dst=${OPT[dst]}
# shellcheck disable=SC2088  # expanded on the worker
download_dir=${OPT[download-dir]:-'~/pass-jax-data'}

steps=("$(pj_remote_prelude)")
if [[ $src == gs://* ]]; then
    src=${src%/}
    [[ $src == gs://*/* || $src =~ ^gs://[^/]+$ ]] || pj_die_usage "--src '${OPT[src]}' is not a gs://BUCKET/PATH"
    local_src="$download_dir/${src##*/}"
    steps+=("mkdir -p $(pj_rq "$download_dir")")
    from=$(pj_rq "$src") to=$(pj_rq "$download_dir/")
    steps+=("if command -v gcloud >/dev/null 2>&1; then gcloud storage cp -r --no-clobber $from $to; else gsutil -m cp -r -n $from $to; fi")
    src=$local_src
fi
steps+=("PASS_JAX_DISTRIBUTED=1 $(pj_remote_bin pass-jax) convert $(pj_rcmdline "$src" "$dst" "${PJ_ARGS[@]}")")

pj_ssh_all "$(pj_join '; ' "${steps[@]}")"

pj_note "next: launch.sh --name ${OPT[name]} --zone ${OPT[zone]} train --config CONFIG ..."
