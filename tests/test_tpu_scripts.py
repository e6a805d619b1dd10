"""Tests for tpu_scripts/: syntax, shellcheck, --help, usage errors and what the scripts run.

Nothing here needs gcloud or a TPU:
- `--dry-run` only prints; every test puts a stub `gcloud` first on PATH that
  records its calls, so a dry run that ran anything would be caught;
- the "real run" tests let the scripts call that stub and check that they run
  exactly the commands their dry run prints;
- the shell snippets the scripts send to the workers (`--command '...'`) are run
  here, under bash and dash, in a fake home directory with a stub `pass-jax`.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS_DIR = ROOT / "tpu_scripts"
SCRIPTS = ["create.sh", "setup.sh", "convert.sh", "launch.sh", "logs.sh", "delete.sh"]
ALL_SHELL_FILES = SCRIPTS + ["common.sh"]

NAME, ZONE = "pass-test", "us-central2-b"
LOC = ["--name", NAME, "--zone", ZONE]
REPO = "https://github.com/example/pass-jax.git"
GS_SRC, GS_DST = "gs://my-bucket/llama-7b-hf", "gs://my-bucket/ckpt/llama-7b"
TRAIN = ["train", "--config", "configs/llama1_7b_wiki.json"]

# Smallest valid arguments of each script, besides --name/--zone.
MINIMAL = {
    "create.sh": ["--type", "v4-8"],
    "setup.sh": ["--repo", REPO],
    "convert.sh": ["--src", GS_SRC, "--dst", GS_DST],
    "launch.sh": ["--job", "wiki", *TRAIN],
    "logs.sh": [],
    "delete.sh": ["--yes"],
}
COMMON_OPTIONS = ["--name", "--zone", "--project", "--dry-run", "--help"]
OPTIONS = {  # every option each script's --help must mention
    "create.sh": ["--type", "--version", "--spot"],
    "setup.sh": ["--repo", "--branch", "--wheel", "--python"],
    "convert.sh": ["--src", "--dst", "--download-dir"],
    "launch.sh": ["--job", "--env", "--upload", "train", "generate", "--config", "--model", "--prompts"],
    "logs.sh": ["--dest"],
    "delete.sh": ["--yes"],
}
# Required options (besides --name/--zone, which every script requires).
REQUIRED = {"create.sh": ["--type"], "convert.sh": ["--src", "--dst"]}

GCLOUD_STUB = """#!/usr/bin/env bash
# Records each call as one JSON list of arguments.
python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@" >> "$GCLOUD_STUB_LOG"
"""


@pytest.fixture()
def stub(tmp_path):
    """A PATH whose `gcloud` only records its calls; yields (env, calls())."""
    bindir = tmp_path / "stub-bin"
    bindir.mkdir()
    gcloud = bindir / "gcloud"
    gcloud.write_text(GCLOUD_STUB)
    gcloud.chmod(0o755)
    log = tmp_path / "gcloud-calls.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PASS_JAX")}
    env.update(PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}", GCLOUD_STUB_LOG=str(log), HOME=str(tmp_path))

    def calls():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return env, calls


def run(script, *args, env, input="", cwd=None):
    return subprocess.run([str(SCRIPTS_DIR / script), *args], capture_output=True, text=True,
                          env=env, input=input, cwd=cwd, timeout=60)


def dry_run(script, *args, env):
    """Run with --dry-run; return the printed commands as argument lists."""
    proc = run(script, "--dry-run", *args, env=env)  # first: after launch.sh's command it would go to pass-jax
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines, f"{script} --dry-run printed nothing"
    for line in lines:
        assert line.startswith("+ "), f"not a '+ ' command line: {line!r}"
    return [shlex.split(line[2:]) for line in lines]


def remote_script(argv):
    """The shell snippet passed to `gcloud compute tpus tpu-vm ssh ... --command`."""
    assert argv[:4] == ["gcloud", "compute", "tpus", "tpu-vm"] and argv[4] == "ssh"
    return argv[argv.index("--command") + 1]


def assert_usage_error(proc, *fragments):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, f"expected one error line, got {lines}"
    assert "error:" in lines[0] and "--help" in lines[0]
    for fragment in fragments:
        assert fragment in lines[0]


# --- static checks ----------------------------------------------------------------------------

@pytest.mark.parametrize("script", SCRIPTS)
def test_script_is_executable_strict_and_uses_common(script):
    path = SCRIPTS_DIR / script
    text = path.read_text()
    assert os.access(path, os.X_OK), f"{script} is not executable"
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert "/common.sh\"" in text, f"{script} must source common.sh"
    # All parsing and running lives in common.sh.
    assert "while (($#))" not in text and "getopts" not in text


@pytest.mark.parametrize("name", ALL_SHELL_FILES)
def test_bash_syntax(name):
    proc = subprocess.run(["bash", "-n", str(SCRIPTS_DIR / name)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (Debian/Ubuntu: apt-get install -y shellcheck)")
    proc = subprocess.run(["shellcheck", "-x", *ALL_SHELL_FILES], cwd=SCRIPTS_DIR,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_readme_says_how_it_was_checked():
    readme = (SCRIPTS_DIR / "README.md").read_text()
    assert "shellcheck" in readme and "dry-run" in readme
    assert "not on a real TPU" in readme
    for script in SCRIPTS:
        assert script in readme
    assert "llama1_7b_wiki" in readme and "--mesh 1x4" in readme


# --- --help and usage errors --------------------------------------------------------------------

@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_mentions_every_option(script, flag, stub):
    env, calls = stub
    proc = run(script, flag, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"Usage: {script}")
    assert "Example" in proc.stdout
    for option in COMMON_OPTIONS + OPTIONS[script]:
        assert option in proc.stdout, f"{script} --help does not mention {option}"
    assert calls() == []


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("missing", ["--name", "--zone"])
def test_missing_name_or_zone(script, missing, stub):
    env, calls = stub
    args = LOC[2:] if missing == "--name" else LOC[:2]
    proc = run(script, *args, *MINIMAL[script], "--dry-run", env=env)
    assert_usage_error(proc, f"missing required option {missing}")
    assert calls() == []


@pytest.mark.parametrize("script,missing", [(s, o) for s, opts in REQUIRED.items() for o in opts])
def test_missing_required_option(script, missing, stub):
    env, _ = stub
    args = list(MINIMAL[script])
    i = args.index(missing)
    del args[i:i + 2]
    assert_usage_error(run(script, *LOC, *args, env=env), f"missing required option {missing}")


@pytest.mark.parametrize("script", SCRIPTS)
def test_unknown_option(script, stub):
    env, calls = stub
    proc = run(script, *LOC, "--frobnicate", *MINIMAL[script], env=env)
    assert_usage_error(proc, "unknown option --frobnicate")
    assert calls() == []


@pytest.mark.parametrize("script", SCRIPTS)
def test_stray_argument(script, stub):
    env, _ = stub
    if script == "launch.sh":
        assert_usage_error(run(script, *LOC, "frobnicate", env=env), "unknown command 'frobnicate'")
    else:
        assert_usage_error(run(script, *LOC, *MINIMAL[script], "stray", env=env), "unexpected argument 'stray'")


def test_option_value_errors(stub):
    env, _ = stub
    assert_usage_error(run("create.sh", *LOC, "--type", env=env), "--type needs a value")
    assert_usage_error(run("create.sh", *LOC, "--type", "--spot", env=env), "--type needs a value")
    assert_usage_error(run("create.sh", *LOC, "--type", "v4-8", "--spot=yes", env=env), "--spot takes no value")
    assert_usage_error(run("create.sh", "--name", "Bad_Name", "--zone", ZONE, "--type", "v4-8", env=env), "--name")
    assert_usage_error(run("create.sh", "--name", NAME, "--zone", "nowhere", "--type", "v4-8", env=env), "--zone")
    assert_usage_error(run("create.sh", *LOC, "--type", "eight", env=env), "--type 'eight'")
    assert_usage_error(run("create.sh", *LOC, "--type", "v9x-8", env=env), "pass --version")


def test_name_and_zone_from_environment(stub):
    env, _ = stub
    env = {**env, "PASS_JAX_TPU_NAME": NAME, "PASS_JAX_TPU_ZONE": ZONE, "PASS_JAX_TPU_PROJECT": "proj"}
    [cmd] = dry_run("delete.sh", env=env)
    assert cmd == ["gcloud", "compute", "tpus", "tpu-vm", "delete", NAME, f"--zone={ZONE}",
                   "--project=proj", "--quiet"]


# --- --dry-run output ---------------------------------------------------------------------------

def test_dry_run_create(stub):
    env, calls = stub
    [cmd] = dry_run("create.sh", *LOC, "--type", "v4-8", env=env)
    line = shlex.join(cmd)
    assert line.startswith(f"gcloud compute tpus tpu-vm create {NAME} --zone={ZONE} --accelerator-type=v4-8")
    assert "--version=tpu-ubuntu2204-base" in cmd and "--spot" not in cmd

    [cmd] = dry_run("create.sh", *LOC, "--type", "v5litepod-8", "--spot", "--project", "proj", env=env)
    assert "--accelerator-type=v5litepod-8" in cmd and "--version=v2-alpha-tpuv5-lite" in cmd
    assert "--spot" in cmd and "--project=proj" in cmd

    for tpu_type, version in [("v5p-8", "v2-alpha-tpuv5"), ("v6e-8", "v2-alpha-tpuv6e"),
                              ("v3-8", "tpu-ubuntu2204-base")]:
        [cmd] = dry_run("create.sh", *LOC, f"--type={tpu_type}", env=env)
        assert f"--version={version}" in cmd

    [cmd] = dry_run("create.sh", *LOC, "--type", "v4-8", "--version", "tpu-vm-base", env=env)
    assert "--version=tpu-vm-base" in cmd
    assert calls() == []


def test_dry_run_setup_from_git(stub):
    env, calls = stub
    [cmd] = dry_run("setup.sh", *LOC, "--repo", REPO, "--branch", "dev", env=env)
    assert shlex.join(cmd).startswith(f"gcloud compute tpus tpu-vm ssh {NAME} --zone={ZONE}")
    assert "--worker=all" in cmd
    script = remote_script(cmd)
    assert "\n" not in script
    assert f"git clone --depth=1 --branch dev {REPO} ~/pass-jax" in script
    assert "fetch --depth=1 origin dev" in script  # an existing checkout is updated
    assert "python3 -m venv ~/pass-jax-venv" in script
    assert '~/pass-jax-venv/bin/pip install -U "jax[tpu]"' in script
    assert "~/pass-jax-venv/bin/pip install -e ~/pass-jax" in script
    assert script.index('"jax[tpu]"') < script.index("install -e")

    # The repository defaults to $PASS_JAX_REPO, the branch to main.
    [cmd] = dry_run("setup.sh", *LOC, env={**env, "PASS_JAX_REPO": REPO})
    assert f"--branch main {REPO}" in remote_script(cmd)
    assert calls() == []


def test_setup_needs_a_repo_or_a_wheel(stub, tmp_path):
    env, _ = stub
    assert_usage_error(run("setup.sh", *LOC, env=env), "--repo", "PASS_JAX_REPO")
    wheel = tmp_path / "pass_jax-0.1.0-py3-none-any.whl"
    wheel.write_text("")
    assert_usage_error(run("setup.sh", *LOC, "--repo", REPO, "--wheel", str(wheel), env=env), "not both")
    assert_usage_error(run("setup.sh", *LOC, "--wheel", str(tmp_path / "missing.whl"), env=env), "does not exist")


def test_dry_run_setup_from_wheel(stub, tmp_path):
    env, _ = stub
    wheel = tmp_path / "pass_jax-0.1.0-py3-none-any.whl"
    wheel.write_text("")
    scp, ssh = dry_run("setup.sh", *LOC, "--wheel", str(wheel), env={**env, "PASS_JAX_REPO": REPO})
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
    assert str(wheel) in scp and f"{NAME}:" in scp and "--worker=all" in scp
    script = remote_script(ssh)
    assert "--worker=all" in ssh
    assert "git clone" not in script
    assert '"jax[tpu]"' in script and f"pip install ~/{wheel.name}" in script


def test_dry_run_convert_from_gcs(stub):
    env, _ = stub
    [cmd] = dry_run("convert.sh", *LOC, "--src", GS_SRC + "/", "--dst", GS_DST, "--", "--dtype", "bfloat16", env=env)
    assert "--worker=all" in cmd
    script = remote_script(cmd)
    copy = script.index(f"gcloud storage cp -r --no-clobber {GS_SRC} ~/pass-jax-data/")
    convert = script.index(f"PASS_JAX_DISTRIBUTED=1 ~/pass-jax-venv/bin/pass-jax convert "
                           f"~/pass-jax-data/llama-7b-hf {GS_DST} --dtype bfloat16")
    assert copy < convert


def test_dry_run_convert_from_worker_path(stub):
    env, _ = stub
    [cmd] = dry_run("convert.sh", *LOC, "--src", "/mnt/disks/hf/llama-7b", "--dst", "/mnt/disks/ckpt",
                    "--download-dir", "/unused", env=env)
    script = remote_script(cmd)
    assert "gcloud storage" not in script and "gsutil" not in script
    assert "pass-jax convert /mnt/disks/hf/llama-7b /mnt/disks/ckpt" in script


def test_dry_run_launch_train(stub):
    env, _ = stub
    [cmd] = dry_run("launch.sh", *LOC, "--job", "wiki", "--env", "XLA_FLAGS=--xla_foo=1",
                    *TRAIN, "steps=100", "lr=1e-3", env=env)
    assert shlex.join(cmd).startswith(f"gcloud compute tpus tpu-vm ssh {NAME} --zone={ZONE}")
    assert "--worker=all" in cmd
    script = remote_script(cmd)
    assert "\n" not in script
    assert "export PASS_JAX_DISTRIBUTED=1 XLA_FLAGS=--xla_foo=1" in script
    assert ("nohup ~/pass-jax-venv/bin/pass-jax train --config configs/llama1_7b_wiki.json steps=100 lr=1e-3"
            " > ~/pass-jax-logs/wiki.log 2>&1 < /dev/null &") in script
    assert "mkdir -p ~/pass-jax-logs" in script


def test_dry_run_launch_generate_with_upload(stub, tmp_path):
    env, _ = stub
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    scp, ssh = dry_run("launch.sh", *LOC, "--upload", str(prompts), "generate", "--model", GS_DST,
                       "--prompts", "~/prompts.jsonl", "--mode", "pass", "--json", env=env)
    assert scp[4] == "scp" and str(prompts) in scp and f"{NAME}:" in scp and "--worker=all" in scp
    script = remote_script(ssh)
    assert "--worker=all" in ssh
    assert re.search(r"pass-jax generate --model \S+ --prompts ~/prompts.jsonl --mode pass --json "
                     r"> ~/pass-jax-logs/generate-\d{8}-\d{6}\.log", script), script
    assert "PASS_JAX_DISTRIBUTED=1" in script


def test_launch_usage_errors(stub):
    env, calls = stub
    assert_usage_error(run("launch.sh", *LOC, env=env), "missing the command")
    assert_usage_error(run("launch.sh", *LOC, "train", "steps=1", env=env), "train needs --config")
    assert_usage_error(run("launch.sh", *LOC, "generate", "--prompts", "p.jsonl", env=env), "--model")
    assert_usage_error(run("launch.sh", *LOC, "generate", "--model=m", env=env), "--prompts")
    assert_usage_error(run("launch.sh", *LOC, "--env", "1BAD=x", *TRAIN, env=env), "KEY=VALUE")
    assert_usage_error(run("launch.sh", *LOC, "--job", "a b", *TRAIN, env=env), "--job")
    assert_usage_error(run("launch.sh", *LOC, "--upload", "/nonexistent", *TRAIN, env=env), "--upload")
    # Options after the command belong to pass-jax, even --help.
    [cmd] = dry_run("launch.sh", *LOC, "--job", "h", "train", "--config=c", "--help", env=env)
    assert "pass-jax train --config=c --help >" in remote_script(cmd)
    assert calls() == []


def test_dry_run_logs(stub, tmp_path):
    env, _ = stub
    dest = tmp_path / "fetched logs"
    ssh, mkdir, scp = dry_run("logs.sh", *LOC, "--dest", str(dest), env=env)
    assert "--worker=all" in ssh
    assert "~/.pass-jax-logs-export/worker-$w" in remote_script(ssh)
    assert mkdir == ["mkdir", "-p", str(dest)]
    assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse",
                   f"{NAME}:.pass-jax-logs-export/worker-*", str(dest), f"--zone={ZONE}", "--worker=all"]
    assert not dest.exists()  # a dry run creates nothing
    _, _, scp = dry_run("logs.sh", *LOC, env=env)
    assert scp[7] == f"pass-jax-logs/{NAME}"


def test_dry_run_delete_never_prompts(stub):
    env, calls = stub
    proc = run("delete.sh", *LOC, "--dry-run", env=env, input=None)
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout == f"+ gcloud compute tpus tpu-vm delete {NAME} --zone={ZONE} --quiet\n"
    assert calls() == []


# --- real runs against the gcloud stub ------------------------------------------------------------

REAL_RUNS = [
    ("create.sh", [*LOC, "--type", "v4-8", "--spot"]),
    ("setup.sh", [*LOC, "--repo", REPO]),
    ("convert.sh", [*LOC, "--src", GS_SRC, "--dst", GS_DST]),
    ("launch.sh", [*LOC, "--job", "wiki", *TRAIN, "steps=10"]),
    ("logs.sh", [*LOC, "--dest", "LOGDIR"]),
    ("delete.sh", [*LOC, "--yes"]),
]


@pytest.mark.parametrize("script,args", REAL_RUNS, ids=[s for s, _ in REAL_RUNS])
def test_real_run_executes_what_dry_run_prints(script, args, stub, tmp_path):
    env, calls = stub
    args = [str(tmp_path / "logs") if a == "LOGDIR" else a for a in args]
    printed = dry_run(script, *args, env=env)
    printed_lines = run(script, "--dry-run", *args, env=env).stdout.splitlines()
    assert calls() == []
    proc = run(script, *args, env=env)
    assert proc.returncode == 0, proc.stderr
    assert calls() == [cmd[1:] for cmd in printed if cmd[0] == "gcloud"]
    # The same command lines are echoed on stderr as they run.
    assert [line for line in proc.stderr.splitlines() if line.startswith("+ ")] == printed_lines
    if script == "logs.sh":
        assert (tmp_path / "logs").is_dir()


@pytest.mark.parametrize("answer,deleted", [("n\n", False), ("\n", False), ("", False), ("y\n", True), ("yes\n", True)])
def test_delete_asks_for_confirmation(answer, deleted, stub):
    env, calls = stub
    proc = run("delete.sh", *LOC, env=env, input=answer)
    if deleted:
        assert proc.returncode == 0, proc.stderr
        assert calls() == [["compute", "tpus", "tpu-vm", "delete", NAME, f"--zone={ZONE}", "--quiet"]]
    else:
        assert proc.returncode == 1 and "nothing deleted" in proc.stderr
        assert calls() == []


# --- the worker-side snippets, run locally ----------------------------------------------------------

PASS_JAX_STUB = """#!/bin/sh
{ echo "cwd=$(pwd)"; echo "PASS_JAX_DISTRIBUTED=$PASS_JAX_DISTRIBUTED"; echo "XLA_FLAGS=$XLA_FLAGS"
  for a in "$@"; do echo "arg=$a"; done; } > "$HOME/pass-jax-called"
echo "log line"
"""
STORAGE_STUB = """#!/bin/sh
# gcloud storage cp -r --no-clobber SRC DIR/: make DIR/<basename of SRC>
for last; do :; done
eval "src=\\${$(($# - 1))}"
mkdir -p "$last/$(basename "$src")"
echo "$*" > "$HOME/storage-called"
"""
SHELLS = [sh for sh in ("bash", "dash") if shutil.which(sh)]


def fake_worker(tmp_path, shell_name):
    """A fake worker home: checkout, venv with a stub pass-jax, a stub gcloud and curl."""
    home = tmp_path / f"home-{shell_name}"
    (home / "pass-jax").mkdir(parents=True)
    venv_bin = home / "pass-jax-venv" / "bin"
    venv_bin.mkdir(parents=True)
    bindir = tmp_path / f"worker-bin-{shell_name}"
    bindir.mkdir()
    for path, text in [(venv_bin / "pass-jax", PASS_JAX_STUB), (bindir / "gcloud", STORAGE_STUB),
                       (bindir / "curl", "#!/bin/sh\necho 3\n")]:
        path.write_text(text)
        path.chmod(0o755)
    env = {"HOME": str(home), "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    return home, env


def run_on_fake_worker(shell_name, script, env):
    return subprocess.run([shell_name, "-c", script], capture_output=True, text=True, env=env, timeout=60)


def wait_for(path, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), f"{path} never appeared"
    time.sleep(0.1)
    return path.read_text()


@pytest.mark.parametrize("shell_name", SHELLS)
def test_worker_snippet_launch(shell_name, stub, tmp_path):
    env, _ = stub
    home, worker_env = fake_worker(tmp_path, shell_name)
    tricky = "name=it's a \"test\" $HOME"
    [cmd] = dry_run("launch.sh", *LOC, "--job", "wiki", "--env", "XLA_FLAGS=--a b", *TRAIN, tricky,
                    "out=~/x", "~/runs", env=env)
    proc = run_on_fake_worker(shell_name, remote_script(cmd), worker_env)
    assert proc.returncode == 0, proc.stderr
    assert "started wiki" in proc.stdout
    called = wait_for(home / "pass-jax-called").splitlines()
    assert called[:3] == [f"cwd={home / 'pass-jax'}", "PASS_JAX_DISTRIBUTED=1", "XLA_FLAGS=--a b"]
    assert called[3:] == ["arg=train", "arg=--config", "arg=configs/llama1_7b_wiki.json",
                          f"arg={tricky}", "arg=out=~/x", f"arg={home}/runs"]
    assert wait_for(home / "pass-jax-logs" / "wiki.log").strip() == "log line"
    assert (home / "pass-jax-logs" / "wiki.pid").read_text().strip().isdigit()


def test_worker_snippet_launch_refuses_while_a_job_runs(stub, tmp_path):
    env, _ = stub
    home, worker_env = fake_worker(tmp_path, "bash")
    logs = home / "pass-jax-logs"
    logs.mkdir()
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        (logs / "old.pid").write_text(f"{sleeper.pid}\n")
        [cmd] = dry_run("launch.sh", *LOC, "--job", "new", *TRAIN, env=env)
        proc = run_on_fake_worker("bash", remote_script(cmd), worker_env)
        assert proc.returncode == 1 and "job old is still running" in proc.stderr
        assert not (home / "pass-jax-called").exists()
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("shell_name", SHELLS)
def test_worker_snippet_convert(shell_name, stub, tmp_path):
    env, _ = stub
    home, worker_env = fake_worker(tmp_path, shell_name)
    [cmd] = dry_run("convert.sh", *LOC, "--src", GS_SRC, "--dst", GS_DST, env=env)
    proc = run_on_fake_worker(shell_name, remote_script(cmd), worker_env)
    assert proc.returncode == 0, proc.stderr
    assert (home / "storage-called").read_text().split() == [
        "storage", "cp", "-r", "--no-clobber", GS_SRC, f"{home}/pass-jax-data/"]
    called = (home / "pass-jax-called").read_text().splitlines()
    assert called[1] == "PASS_JAX_DISTRIBUTED=1"
    assert called[3:] == ["arg=convert", f"arg={home}/pass-jax-data/llama-7b-hf", f"arg={GS_DST}"]


@pytest.mark.parametrize("shell_name", SHELLS)
def test_worker_snippet_logs_staging(shell_name, stub, tmp_path):
    env, _ = stub
    home, worker_env = fake_worker(tmp_path, shell_name)
    (home / "pass-jax-logs").mkdir()
    (home / "pass-jax-logs" / "wiki.log").write_text("step 1\n")
    stale = home / ".pass-jax-logs-export" / "worker-9"
    stale.mkdir(parents=True)
    ssh, _, _ = dry_run("logs.sh", *LOC, env=env)
    proc = run_on_fake_worker(shell_name, remote_script(ssh), worker_env)
    assert proc.returncode == 0, proc.stderr
    export = home / ".pass-jax-logs-export"
    assert sorted(p.name for p in export.iterdir()) == ["worker-3"]  # worker number from the metadata server
    assert (export / "worker-3" / "wiki.log").read_text() == "step 1\n"
