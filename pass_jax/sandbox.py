"""Run an untrusted Python program in a subprocess, with limits: the sandbox of `eval humaneval`.

Each program executes in a fresh `python -I` subprocess, in its own temporary directory and process
group, with a minimal environment, a timeout, memory and file-size limits, proxies pointed at a dead
local port and Python's socket connect/DNS calls disabled. This is NOT a security sandbox: it cannot
firewall the network or stop code that tries hard (ctypes, a fresh interpreter, raw syscalls). Run
it in a container or VM without network access when that matters.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path


OUTPUT_TAIL = 2000  # characters of a failed program's output kept for the report


# Runs before the problem: limits and a socket block, so a stray completion fails fast instead of
# eating the machine's memory or reaching the network through Python's socket module.
PREAMBLE = """\
def _pass_jax_sandbox():
    import resource, socket
    for limit, value in ((resource.RLIMIT_AS, 4 << 30), (resource.RLIMIT_FSIZE, 64 << 20), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(limit, (value, value))
    def blocked(*args, **kwargs):
        raise OSError("network access is disabled in the HumanEval sandbox")
    socket.socket.connect = socket.socket.connect_ex = blocked
    socket.getaddrinfo = socket.create_connection = blocked
_pass_jax_sandbox()
del _pass_jax_sandbox
"""


PROXY_VARIABLES = ("http_proxy", "https_proxy", "ftp_proxy", "all_proxy")


@dataclasses.dataclass(frozen=True)
class ExecResult:
    passed: bool
    status: str  # passed | failed | timeout
    output: str  # the tail of stdout+stderr (empty when passed)


def sandbox_env(home: str) -> dict[str, str]:
    """A minimal environment: no inherited secrets or paths; proxies pointed at a closed local port."""
    env = {"PATH": os.defpath, "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
           "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1", "no_proxy": "", "NO_PROXY": ""}
    for name in PROXY_VARIABLES:
        env[name] = env[name.upper()] = "http://127.0.0.1:9"
    return env


def run_program(program: str, timeout: float, sentinel: str) -> ExecResult:
    """Run a program in a fresh `python -I` process group; any crash, exit or hang is a failure.

    Popen + killpg rather than `subprocess.run(timeout=...)`: run() kills only the child, and a
    completion that forks would keep its pipes open and hang the harness. Output goes to a file
    for the same reason (no pipe to fill or to hold open).
    """
    with tempfile.TemporaryDirectory(prefix="pass_jax_humaneval_") as tmp:
        script, log = Path(tmp) / "program.py", Path(tmp) / "output.txt"
        script.write_text(program, encoding="utf-8")
        with open(log, "wb") as out:
            process = subprocess.Popen([sys.executable, "-I", str(script)], cwd=tmp, env=sandbox_env(tmp),
                                       stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
            try:
                code = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                code = None
            finally:
                _kill_group(process)
        output = log.read_bytes().decode("utf-8", errors="replace")
    if code is None:
        return ExecResult(False, "timeout", f"timed out after {timeout:g} s\n" + output[-OUTPUT_TAIL:])
    if code == 0 and sentinel in output.splitlines():
        return ExecResult(True, "passed", "")
    return ExecResult(False, "failed", f"exit code {code}\n" + output[-OUTPUT_TAIL:])


def _kill_group(process: subprocess.Popen) -> None:
    """Kill the program's process group (it may have forked), then reap the program itself."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already gone
    process.wait()
