#!/usr/bin/env bash
# Copy ~/pass-jax-logs back from every TPU worker, one subdirectory per worker.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

usage() {
    cat <<EOF
Usage: $PJ_PROG --name NAME --zone ZONE [--dest DIR] [--project PROJECT] [--dry-run]

Fetch the job logs (~/pass-jax-logs: JOB.log and JOB.pid of every job started
by launch.sh) from every worker into DIR/worker-<N>/, N being the worker
number. Each worker first copies its logs into ~/.pass-jax-logs-export/worker-<N>
(gcloud compute tpus tpu-vm ssh --worker=all), then
gcloud compute tpus tpu-vm scp --worker=all --recurse copies those folders here.
Rerun it at any time to refresh the copy.

Options:
  --dest DIR         local destination (default: ./pass-jax-logs/NAME).

$PJ_COMMON_HELP

Example:
  $PJ_PROG --name pass-v4 --zone us-central2-b --dest runs/pass-v4-logs
EOF
}

PJ_OPTIONS=(dest:)
pj_parse "$@"

dest=${OPT[dest]:-pass-jax-logs/${OPT[name]}}
logs=$(pj_rq "$PJ_REMOTE_LOGS")
# The worker number comes from the TPU VM metadata server (hostname as a fallback).
metadata=http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number
# shellcheck disable=SC2088  # expanded on the worker
stage='~/.pass-jax-logs-export'
steps=(
    'set -e'
    "w=\$(curl -sf -H \"Metadata-Flavor: Google\" $metadata || hostname)"
    "rm -rf $stage"
    "mkdir -p $stage/worker-\$w"
    "if [ -d $logs ]; then cp -r $logs/. $stage/worker-\$w/; fi"
)

pj_ssh_all "$(pj_join '; ' "${steps[@]}")"
pj_run mkdir -p "$dest"
pj_scp_all --recurse "${OPT[name]}:.pass-jax-logs-export/worker-*" "$dest"

pj_note "logs in $dest/worker-*/"
