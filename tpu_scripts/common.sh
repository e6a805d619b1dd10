# shellcheck shell=bash
# shellcheck disable=SC2034  # the PJ_* variables are read by the scripts that source this file
# Shared helpers for tpu_scripts/*.sh (sourced, never run).
#
# A script declares, before calling pj_parse "$@":
#   PJ_OPTIONS   option names without "--": "name:" takes a value, "env+" takes a
#                value and may repeat, a bare word ("spot") is a flag.
#                --help, --dry-run, --name, --zone and --project are always known.
#   PJ_REQUIRED  options that must end up non-empty (name and zone are always required).
#   PJ_REST      "none" (default): no positional arguments;
#                "dashdash": arguments after "--" go to PJ_ARGS;
#                "command": the first non-option word and everything after it go
#                to PJ_ARGS untouched (launch.sh's "train ..." / "generate ...").
#   usage()      prints the --help text to stdout.
# and afterwards reads ${OPT[key]} (flags are "1" when given) and PJ_ARGS.
#
# Every external command goes through pj_run: with --dry-run it only prints
# "+ <command>" (shell-quoted, one line) on stdout; otherwise it prints the same
# line on stderr and runs it.

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
    echo "${0##*/}: error: bash >= 4.4 is required (this is $BASH_VERSION); on macOS: brew install bash" >&2
    exit 2
fi

PJ_PROG=${0##*/}
PJ_DRY_RUN=0
PJ_ARGS=()
PJ_LOC=()
declare -A OPT=()
# Defaults; each script sets its own after sourcing this file.
PJ_OPTIONS=()
PJ_REQUIRED=()
PJ_REST=none

# Layout on every TPU worker (remote paths; a leading "~/" is the remote home).
# shellcheck disable=SC2088  # the tilde is expanded on the worker, not here
PJ_REMOTE_DIR=${PASS_JAX_REMOTE_DIR:-'~/pass-jax'}
# shellcheck disable=SC2088
PJ_REMOTE_VENV=${PASS_JAX_REMOTE_VENV:-'~/pass-jax-venv'}
# shellcheck disable=SC2088
PJ_REMOTE_LOGS='~/pass-jax-logs'

# The options/environment shared by every script, for the usage() texts.
PJ_COMMON_HELP='Common options:
  --name NAME        TPU VM name (env PASS_JAX_TPU_NAME). Required.
  --zone ZONE        zone, e.g. us-central2-b (env PASS_JAX_TPU_ZONE). Required.
  --project PROJECT  Google Cloud project (env PASS_JAX_TPU_PROJECT; default:
                     the gcloud config project).
  --dry-run          print every command, one per line prefixed with "+ ",
                     and run nothing.
  -h, --help         show this help and exit.'

PJ_LAYOUT_HELP='Layout on each worker (same for every script): the repository checkout in
~/pass-jax (env PASS_JAX_REMOTE_DIR), the virtual environment in
~/pass-jax-venv (env PASS_JAX_REMOTE_VENV), job logs in ~/pass-jax-logs.
Remote commands run from the checkout, so relative paths are relative to it.'

pj_die_usage() {  # one-line usage error, exit 2
    echo "$PJ_PROG: error: $*; see '$PJ_PROG --help'" >&2
    exit 2
}

pj_die() {  # runtime error, exit 1
    echo "$PJ_PROG: error: $*" >&2
    exit 1
}

pj_note() {  # progress/hints: always stderr, so --dry-run's stdout holds only commands
    echo "$PJ_PROG: $*" >&2
}

# Quote one word for a POSIX shell: safe words stay bare, the rest single-quoted.
pj_q() {
    local w=$1
    if [[ -n $w && $w =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
        printf '%s' "$w"
    else
        printf "'%s'" "${w//\'/\'\\\'\'}"
    fi
}

# Like pj_q, for a word that a worker's shell will read: a leading "~/" stays
# unquoted so that the worker expands it to its own home directory.
pj_rq() {
    local w=$1
    if [[ $w == '~' ]]; then
        printf '~'
    elif [[ $w == \~/* ]]; then
        printf '%s/' '~'
        [[ -n ${w#\~/} ]] && pj_q "${w#\~/}"
        return 0
    else
        pj_q "$w"
    fi
}

pj_cmdline() {  # the words, quoted and joined by spaces
    local out='' w
    for w in "$@"; do
        out+="${out:+ }$(pj_q "$w")"
    done
    printf '%s' "$out"
}

pj_rcmdline() {  # same, with pj_rq (for command lines run on the workers)
    local out='' w
    for w in "$@"; do
        out+="${out:+ }$(pj_rq "$w")"
    done
    printf '%s' "$out"
}

pj_run() {  # run-or-print: the single place where commands are executed
    local line
    line="+ $(pj_cmdline "$@")"
    if ((PJ_DRY_RUN)); then
        printf '%s\n' "$line"
        return 0
    fi
    printf '%s\n' "$line" >&2
    "$@"
}

_pj_opt_kind() {  # prints value|multi|flag for a known option, fails otherwise
    local key=$1 spec
    for spec in name: zone: project: "${PJ_OPTIONS[@]}"; do
        case $spec in
            "$key:") echo value; return 0 ;;
            "$key+") echo multi; return 0 ;;
            "$key") echo flag; return 0 ;;
        esac
    done
    return 1
}

pj_parse() {
    local arg key val has_val kind
    OPT[name]=${PASS_JAX_TPU_NAME:-}
    OPT[zone]=${PASS_JAX_TPU_ZONE:-}
    OPT[project]=${PASS_JAX_TPU_PROJECT:-}
    while (($#)); do
        arg=$1
        case $arg in
            -h | --help) usage; exit 0 ;;
            --dry-run) PJ_DRY_RUN=1; shift; continue ;;
            --)
                shift
                [[ ${PJ_REST:-none} == none && $# -gt 0 ]] && pj_die_usage "unexpected argument '$1'"
                PJ_ARGS=("$@")
                break
                ;;
            --*=*) key=${arg%%=*}; key=${key#--}; val=${arg#*=}; has_val=1 ;;
            --?*) key=${arg#--}; val=''; has_val=0 ;;
            *)
                if [[ ${PJ_REST:-none} == command ]]; then
                    PJ_ARGS=("$@")
                    break
                fi
                pj_die_usage "unexpected argument '$arg'"
                ;;
        esac
        shift
        kind=$(_pj_opt_kind "$key") || pj_die_usage "unknown option --$key"
        case $kind in
            flag)
                ((has_val)) && pj_die_usage "option --$key takes no value"
                OPT[$key]=1
                ;;
            value | multi)
                if ((!has_val)); then
                    [[ $# -gt 0 && $1 != --* ]] || pj_die_usage "option --$key needs a value"
                    val=$1
                    shift
                fi
                if [[ $kind == multi ]]; then
                    OPT[$key]+="$val"$'\x1f'
                else
                    OPT[$key]=$val
                fi
                ;;
        esac
    done
    for key in name zone "${PJ_REQUIRED[@]}"; do
        [[ -n ${OPT[$key]:-} ]] || pj_die_usage "missing required option --$key"
    done
    [[ ${OPT[name]} =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
        pj_die_usage "--name '${OPT[name]}' is not a valid TPU name (lowercase letters, digits, '-'; starts with a letter)"
    [[ ${OPT[zone]} =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] ||
        pj_die_usage "--zone '${OPT[zone]}' does not look like a zone (e.g. us-central2-b)"
    return 0
}

pj_list() {  # pj_list KEY ARRAY: the values of a repeatable option into ARRAY
    local -n _pj_out=$2
    _pj_out=()
    [[ -n ${OPT[$1]:-} ]] && mapfile -t -d $'\x1f' _pj_out < <(printf '%s' "${OPT[$1]}")
    return 0
}

pj_loc_flags() {  # --zone / --project for every gcloud tpu-vm command, into array PJ_LOC
    PJ_LOC=("--zone=${OPT[zone]}")
    [[ -n ${OPT[project]:-} ]] && PJ_LOC+=("--project=${OPT[project]}")
    return 0
}

pj_join() {  # pj_join SEP WORD...: one line of remote shell statements
    local sep=$1 out='' w
    shift
    for w in "$@"; do
        out+="${out:+$sep}$w"
    done
    printf '%s' "$out"
}

# Run a one-line shell script on every worker, concurrently (--worker=all).
pj_ssh_all() {
    pj_loc_flags
    pj_run gcloud compute tpus tpu-vm ssh "${OPT[name]}" "${PJ_LOC[@]}" --worker=all --command "$1"
}

# scp between this machine and every worker (SRC... DST use "NAME:path" for the worker side).
pj_scp_all() {
    pj_loc_flags
    pj_run gcloud compute tpus tpu-vm scp "$@" "${PJ_LOC[@]}" --worker=all
}

# Start of every remote script: stop at the first error, work from the checkout.
pj_remote_prelude() {
    printf 'set -e; cd %s 2>/dev/null || cd' "$(pj_rq "$PJ_REMOTE_DIR")"
}

pj_remote_bin() {  # path of an executable in the remote venv, quoted for the worker
    pj_rq "$PJ_REMOTE_VENV/bin/$1"
}
