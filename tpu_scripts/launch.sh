#!/usr/bin/env bash
# Start a pass-jax train/generate job in the background on every TPU worker.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

usage() {
    cat <<EOF
Usage: $PJ_PROG --name NAME --zone ZONE [--job JOB] [--env KEY=VALUE]...
                [--upload FILE]... [--project PROJECT] [--dry-run]
                train --config CONFIG [key=value ...]
              | generate --model PATH --prompts FILE.jsonl [pass-jax generate options]

Start "pass-jax train ..." or "pass-jax generate ..." on every worker at once
(--worker=all) from the checkout, in the venv, with PASS_JAX_DISTRIBUTED=1,
under nohup, and return. Output goes to ~/pass-jax-logs/JOB.log on each worker
(the process id to ~/pass-jax-logs/JOB.pid); fetch the logs with logs.sh.
Everything from "train"/"generate" on is passed to pass-jax unchanged, so
options of this script go before it.

Options:
  --job JOB          job name, used for the log file name
                     (default: <command>-<UTC date>-<time>, e.g. train-20250101-120000).
  --env KEY=VALUE    extra environment variable for the job (repeatable),
                     e.g. --env XLA_FLAGS=--xla_dump_to=/tmp/xla.
  --upload FILE      copy a local file to the home directory of every worker
                     first (repeatable); refer to it as ~/<file name>, e.g.
                     --upload prompts.jsonl ... --prompts '~/prompts.jsonl'.

$PJ_COMMON_HELP

Commands (see "pass-jax train --help" / "pass-jax generate --help"):
  train --config CONFIG [key=value ...]
                     CONFIG is a name in configs/ (llama1_7b_wiki) or a path
                     relative to the checkout (configs/llama1_7b_wiki.json).
  generate --model PATH --prompts FILE.jsonl [--mode pass] [--json] [...]

$PJ_LAYOUT_HELP
Quote paths that start with ~ ('~/x') so that the worker, not this machine,
expands them. Follow a job with:
  gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=0 \\
      --command 'tail -f ~/pass-jax-logs/JOB.log'

Examples:
  $PJ_PROG --name pass-v4 --zone us-central2-b --job wiki \\
      train --config configs/llama1_7b_wiki.json
  $PJ_PROG --name pass-v4 --zone us-central2-b --upload prompts.jsonl \\
      generate --model gs://my-bucket/ckpt/llama-7b --prompts '~/prompts.jsonl' --mode pass --json
EOF
}

PJ_OPTIONS=(job: env+ upload+)
PJ_REST='command'
pj_parse "$@"

((${#PJ_ARGS[@]})) || pj_die_usage "missing the command: train --config ... or generate --model ... --prompts ..."
sub=${PJ_ARGS[0]}
sub_args=("${PJ_ARGS[@]:1}")

has_opt() {  # has_opt --flag: is --flag (or --flag=...) among the pass-through args?
    local a
    for a in "${sub_args[@]}"; do
        [[ $a == "$1" || $a == "$1="* ]] && return 0
    done
    return 1
}
case $sub in
    train)
        has_opt --config || pj_die_usage "train needs --config CONFIG"
        ;;
    generate)
        has_opt --model || pj_die_usage "generate needs --model PATH"
        has_opt --prompts || pj_die_usage "generate needs --prompts FILE.jsonl"
        ;;
    *) pj_die_usage "unknown command '$sub' (use train or generate)" ;;
esac

job=${OPT[job]:-$sub-$(date -u +%Y%m%d-%H%M%S)}
[[ $job =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || pj_die_usage "--job '$job' may only use letters, digits, '.', '_' and '-'"

envs=() uploads=()
pj_list env envs
pj_list upload uploads
exports=(PASS_JAX_DISTRIBUTED=1)
for kv in "${envs[@]}"; do
    [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || pj_die_usage "--env '$kv' is not KEY=VALUE"
    exports+=("${kv%%=*}=$(pj_rq "${kv#*=}")")
done
for f in "${uploads[@]}"; do
    [[ -f $f ]] || pj_die_usage "--upload '$f' is not a file"
done

logs=$(pj_rq "$PJ_REMOTE_LOGS")
log="$logs/$job.log"
before=(
    "$(pj_remote_prelude)"
    "mkdir -p $logs"
    # One job at a time per TPU: refuse while a job started by this script still runs.
    "for p in $logs/*.pid; do if [ -f \"\$p\" ] && kill -0 \"\$(cat \"\$p\")\" 2>/dev/null; then echo \"\$(hostname): job \$(basename \"\$p\" .pid) is still running; stop it first: kill \$(cat \"\$p\")\" >&2; exit 1; fi; done"
    "export ${exports[*]}"
)
background="nohup $(pj_remote_bin pass-jax) $(pj_rcmdline "$sub" "${sub_args[@]}") > $log 2>&1 < /dev/null &"
after=(
    "echo \$! > $logs/$job.pid"
    "echo \"\$(hostname): started $job (pid \$!), log $log\""
)

for f in "${uploads[@]}"; do
    pj_scp_all "$f" "${OPT[name]}:"
done
# "&" already ends the background statement, so it is not followed by "; ".
pj_ssh_all "$(pj_join '; ' "${before[@]}"); $background $(pj_join '; ' "${after[@]}")"

pj_note "job $job: follow it with: gcloud compute tpus tpu-vm ssh ${OPT[name]} --zone=${OPT[zone]} --worker=0 --command 'tail -f $PJ_REMOTE_LOGS/$job.log'"
pj_note "fetch the logs with: logs.sh --name ${OPT[name]} --zone ${OPT[zone]}"
