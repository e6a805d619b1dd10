#!/usr/bin/env bash
# Install pass-jax (and jax[tpu]) on every worker of a TPU VM.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

usage() {
    cat <<EOF
Usage: $PJ_PROG --name NAME --zone ZONE [--repo URL] [--branch BRANCH]
               [--python PYTHON] [--project PROJECT] [--dry-run]
       $PJ_PROG --name NAME --zone ZONE --wheel FILE.whl [...]

On every worker at once (--worker=all): install git and python venv support
if missing, clone the repository (or fetch and check out BRANCH when the
checkout already exists), create a virtual environment, then
  pip install -U "jax[tpu]"  and  pip install -e <checkout>.
Safe to rerun: it updates the checkout and reinstalls.

Options:
  --repo URL         git URL of the pass-jax repository (default: env
                     PASS_JAX_REPO). Workers must be able to clone it (public
                     repo, or credentials set up on the workers).
  --branch BRANCH    branch or tag to check out (default: main).
  --wheel FILE.whl   instead of git: copy this local wheel to every worker
                     (gcloud compute tpus tpu-vm scp) and pip install it.
  --python PYTHON    interpreter on the workers that creates the venv
                     (default: python3; pass-jax needs >= 3.10).

$PJ_COMMON_HELP

$PJ_LAYOUT_HELP

Example:
  $PJ_PROG --name pass-v4 --zone us-central2-b \\
      --repo https://github.com/ORG/pass-jax.git --branch main
EOF
}

PJ_OPTIONS=(repo: branch: wheel: python:)
pj_parse "$@"

branch=${OPT[branch]:-main}
python=${OPT[python]:-python3}
wheel=${OPT[wheel]:-}
repo=${OPT[repo]:-}
[[ -n $wheel && -n $repo ]] && pj_die_usage "use either --repo or --wheel, not both"
[[ -z $wheel && -z $repo ]] && repo=${PASS_JAX_REPO:-}
[[ -z $wheel && -z $repo ]] && pj_die_usage "missing required option --repo (or env PASS_JAX_REPO, or --wheel)"
[[ $python =~ ^[A-Za-z0-9_./-]+$ ]] || pj_die_usage "--python '$python' is not an interpreter name"
if [[ -n $wheel ]]; then
    [[ $wheel == *.whl ]] || pj_die_usage "--wheel '$wheel' is not a .whl file"
    [[ -f $wheel ]] || pj_die_usage "--wheel '$wheel' does not exist"
fi

dir=$(pj_rq "$PJ_REMOTE_DIR")
venv=$(pj_rq "$PJ_REMOTE_VENV")
pip=$(pj_remote_bin pip)
apt='sudo DEBIAN_FRONTEND=noninteractive apt-get'
steps=('set -e')
if [[ -z $wheel ]]; then
    steps+=("command -v git >/dev/null 2>&1 || { $apt update -qq && $apt install -y -qq git; }")
fi
steps+=("$python -c \"import ensurepip\" >/dev/null 2>&1 || { $apt update -qq && $apt install -y -qq ${python##*/}-venv; }")
if [[ -z $wheel ]]; then
    r=$(pj_rq "$repo") b=$(pj_rq "$branch")
    steps+=("if [ -d $dir/.git ]; then git -C $dir remote set-url origin $r && git -C $dir fetch --depth=1 origin $b && git -C $dir checkout -B $b FETCH_HEAD; else git clone --depth=1 --branch $b $r $dir; fi")
fi
steps+=("[ -x $venv/bin/python ] || $python -m venv $venv")
steps+=("$pip install -q -U pip")
steps+=("$pip install -U \"jax[tpu]\"")
if [[ -z $wheel ]]; then
    steps+=("$pip install -e $dir")
else
    steps+=("{ $pip uninstall -y -q pass-jax || true; }")
    # shellcheck disable=SC2088  # the worker expands the tilde
    steps+=("$pip install $(pj_rq "~/${wheel##*/}")")
fi
steps+=("$(pj_remote_bin pass-jax) --help >/dev/null")
steps+=("echo \"pass-jax ready on \$(hostname), jax \$($(pj_remote_bin python) -c \"import jax; print(jax.__version__)\")\"")

if [[ -n $wheel ]]; then
    pj_scp_all "$wheel" "${OPT[name]}:"
fi
pj_ssh_all "$(pj_join '; ' "${steps[@]}")"

pj_note "next: convert.sh --name ${OPT[name]} --zone ${OPT[zone]} --src ... --dst ..."
