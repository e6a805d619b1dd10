#!/usr/bin/env bash
# Delete a Cloud TPU VM.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

usage() {
    cat <<EOF
Usage: $PJ_PROG --name NAME --zone ZONE [--yes] [--project PROJECT] [--dry-run]

Delete the TPU VM (gcloud compute tpus tpu-vm delete). Everything on its disks
is lost: fetch the logs first (logs.sh), and keep checkpoints on gs://.
Asks for confirmation on the terminal unless --yes is given; --dry-run never
asks.

Options:
  --yes              delete without asking.

$PJ_COMMON_HELP

Example:
  $PJ_PROG --name pass-v4 --zone us-central2-b --yes
EOF
}

PJ_OPTIONS=(yes)
pj_parse "$@"

if ((!PJ_DRY_RUN)) && [[ -z ${OPT[yes]:-} ]]; then
    answer=''
    read -r -p "Delete TPU VM '${OPT[name]}' in ${OPT[zone]}? Its disks are lost. [y/N] " answer || true
    [[ $answer == [yY] || $answer == [yY][eE][sS] ]] || pj_die "not confirmed; nothing deleted (use --yes to skip the question)"
fi

pj_loc_flags
pj_run gcloud compute tpus tpu-vm delete "${OPT[name]}" "${PJ_LOC[@]}" --quiet
