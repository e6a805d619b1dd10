#!/usr/bin/env bash
# Create a Cloud TPU VM for pass-jax.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

usage() {
    cat <<EOF
Usage: $PJ_PROG --name NAME --zone ZONE --type TYPE [--version RUNTIME]
                [--project PROJECT] [--spot] [--dry-run]

Create a Cloud TPU VM (gcloud compute tpus tpu-vm create). Next step: setup.sh.

Options:
  --type TYPE        accelerator type: v4-8, v5litepod-8, v5p-8, v6e-8, ...
                     (the number counts TensorCores for v2-v4 and v5p, chips for
                     v5e/v6e; a v4-8 is one host with 4 chips seen by JAX as 4
                     devices). Required.
  --version RUNTIME  TPU software (runtime) version. Default by type family:
                       v2, v3, v4           tpu-ubuntu2204-base
                       v5litepod, v5e       v2-alpha-tpuv5-lite
                       v5p                  v2-alpha-tpuv5
                       v6e                  v2-alpha-tpuv6e
                     Any other family needs --version (list them with
                     gcloud compute tpus tpu-vm versions list --zone=ZONE).
  --spot             create a Spot VM: much cheaper, may be preempted at any
                     time and cannot be restarted (recreate it, rerun setup.sh).

$PJ_COMMON_HELP

Example:
  $PJ_PROG --name pass-v4 --zone us-central2-b --type v4-8
  $PJ_PROG --name pass-v5e --zone us-west4-a --type v5litepod-8 --spot --dry-run
EOF
}

PJ_OPTIONS=(type: version: spot)
PJ_REQUIRED=(type)
pj_parse "$@"

type=${OPT[type]}
[[ $type =~ ^v[0-9][a-z0-9]*-[0-9]+$ ]] ||
    pj_die_usage "--type '$type' is not an accelerator type like v4-8 or v5litepod-8"

version=${OPT[version]:-}
if [[ -z $version ]]; then
    case ${type%-*} in
        v2 | v3 | v4) version=tpu-ubuntu2204-base ;;
        v5litepod | v5e) version=v2-alpha-tpuv5-lite ;;
        v5p) version=v2-alpha-tpuv5 ;;
        v6e) version=v2-alpha-tpuv6e ;;
        *) pj_die_usage "no default runtime version for --type $type; pass --version" ;;
    esac
fi

cmd=(gcloud compute tpus tpu-vm create "${OPT[name]}" "--zone=${OPT[zone]}"
    "--accelerator-type=$type" "--version=$version")
[[ -n ${OPT[project]} ]] && cmd+=("--project=${OPT[project]}")
[[ -n ${OPT[spot]:-} ]] && cmd+=(--spot)
pj_run "${cmd[@]}"

pj_note "next: setup.sh --name ${OPT[name]} --zone ${OPT[zone]} --repo URL"
