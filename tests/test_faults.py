"""Real faults (issue 27): a full disk, two processes racing for one output, Ctrl-C, a closed pipe,
damaged caches. Each test makes the fault for real where it can: a size-limited tmpfs (skipped
where mounting is not permitted), real subprocesses and real signals."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from pass_jax import cli, outputs

CLI = [sys.executable, "-m", "pass_jax.cli"]
STARTUP_LIMIT_S = 600  # a loaded 2-core machine imports jax and friends slowly


# --- helpers --------------------------------------------------------------------------------------

@contextlib.contextmanager
def small_disk(path: Path, size: str):
    """A tmpfs of `size` mounted at `path` (root only; the test is skipped where mounting fails)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here ({mounted.stderr.strip() or 'not root'})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def resize(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def wait_for_line(process: subprocess.Popen, prefix: str, seen: list[str]) -> None:
    """Read `process`'s stderr until a line starts with `prefix` (a watchdog kills a stuck process)."""
    watchdog = threading.Timer(STARTUP_LIMIT_S, process.kill)
    watchdog.start()
    try:
        for line in process.stderr:
            seen.append(line)
            if line.startswith(prefix):
                return
    finally:
        watchdog.cancel()
    raise AssertionError(f"never printed {prefix!r}:\n{''.join(seen)}")


def paused_writer(argv: list[str], target: Path) -> tuple[subprocess.Popen, list[str]]:
    """Start `pass-jax ARGV` and return once it holds its output lock, paused just before renaming its
    complete output into `target`."""
    env = {**os.environ, outputs.PAUSE_ENV: target.name}
    process = subprocess.Popen(CLI + argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    wait_for_line(process, outputs.PAUSE_ENV, seen)
    return process, seen


def one_error_line(stderr: str, message: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("WARNING:absl:")
             and not line.startswith("training ")]
    assert "Traceback" not in stderr, stderr
    assert [line for line in lines if "error:" in line] == [lines[-1]] and message in lines[-1], stderr


# --- the lock ---------------------------------------------------------------------------------------

def test_lock_refuses_a_second_holder_and_is_released(tmp_path):
    target = tmp_path / "run"
    with outputs.locked(target, "output.dir"):
        with outputs.locked(target, "output.dir"):  # re-entrant in one process
            pass
        # another process: refused at once, naming the holder
        other = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from pass_jax import outputs\n"
                                f"with outputs.locked(Path({str(target)!r}), 'output.dir'): pass"],
                               capture_output=True, text=True)
        assert other.returncode != 0
        assert f"output.dir {target} is busy: another process (pid {os.getpid()}) is writing it" in other.stderr
    assert not outputs.lock_path(target).exists()  # removed with the lock
    with outputs.locked(target, "output.dir"):
        pass


def test_two_converts_to_one_destination(make_hf_llama, tmp_path):
    """Two real processes: the second is refused in one line while the first holds the destination;
    the first's lock dies with it (SIGKILL), and a later convert succeeds."""
    src, _ = make_hf_llama(tmp_path / "hf")
    dst = tmp_path / "converted"
    first, seen = paused_writer(["convert", str(src), str(dst)], dst)
    try:
        for extra in ([], ["--overwrite"]):
            second = subprocess.run(CLI + ["convert", str(src), str(dst), *extra], capture_output=True, text=True)
            assert second.returncode == 2
            one_error_line(second.stderr, f"destination {dst} is busy: another process (pid {first.pid})")
    finally:
        first.kill()
        first.wait()
    assert cli.main(["convert", str(src), str(dst), "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted", "hf"]


TRAIN = ["train", "--config", "tiny_overfit", "data.max_documents=null", "train.eval_batches=1",
         "train.eval_sequences=0", "train.eval_anchors_per_seq=0"]


def test_two_trainings_into_one_run_dir(corpus, tmp_path):
    """A run still going holds its directory: a --resume of it, or a second fresh run, is refused in one
    line, and nothing is interleaved into its metrics."""
    run_dir = tmp_path / "run"
    argv = [*TRAIN, f"data.source={corpus}", "train.steps=2", f"output.dir={run_dir}"]
    first, _ = paused_writer(argv, run_dir / "pass_jax_run.json")  # paused as it marks the run dir its own
    try:
        for extra in (["--resume"], []):
            second = subprocess.run(CLI + argv + extra, capture_output=True, text=True)
            assert second.returncode == 2
            one_error_line(second.stderr, f"output.dir {run_dir} is busy: another process (pid {first.pid})")
        assert not (run_dir / "metrics.jsonl").exists()
    finally:
        first.kill()
        first.wait()


# --- a full disk ----------------------------------------------------------------------------------

def test_no_space_is_recognised_however_wrapped():
    inner = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise inner
        except OSError as err:
            raise RuntimeError("commit failed") from err
    except RuntimeError as wrapped:
        assert outputs.is_no_space(wrapped)
    assert outputs.is_no_space(ValueError("RESOURCE_EXHAUSTED: ... Failed to write 100 bytes: No space left on device"))
    assert not outputs.is_no_space(ValueError("something else"))


def test_convert_onto_a_full_disk(make_hf_llama, tmp_path, monkeypatch, capsys):
    src, _ = make_hf_llama(tmp_path / "hf")
    with small_disk(tmp_path / "disk", "64k") as disk:
        # refused before writing: the parameters alone do not fit
        assert cli.main(["convert", str(src), str(disk / "out")]) == 2
        one_error_line(capsys.readouterr().err, f"no space left on {disk} (writing {disk / 'out'}): ")
        # the disk fills mid-write (the up-front check bypassed): one line, no temporary left
        monkeypatch.setattr(outputs, "check_space", lambda path, needed: None)
        assert cli.main(["convert", str(src), str(disk / "out")]) == 2
        one_error_line(capsys.readouterr().err, f"no space left on {disk} (writing {disk / 'out'})")
        assert os.listdir(disk) == []


def test_train_onto_a_full_disk_then_resume(corpus, tmp_path, capsys):
    """The second checkpoint does not fit: one line; with space again, --resume continues from the first."""
    with small_disk(tmp_path / "disk", "150k") as disk:
        argv = [*TRAIN, f"data.source={corpus}", "train.steps=30", "train.checkpoint_every=10", f"output.dir={disk / 'run'}"]
        assert cli.main(argv) == 2
        one_error_line(capsys.readouterr().err, f"no space left on {disk} (writing {disk / 'run'})")
        # Where the disk filled depends on what each save wrote; the cut-short save is removed either way:
        # what stays is complete checkpoints only (at least the first, which fits).
        saved = sorted(int(name) for name in os.listdir(disk / "run" / "checkpoints"))
        assert saved and saved[0] == 10 and saved[-1] < 30, saved
        assert all((disk / "run" / "checkpoints" / str(step) / "commit_success.txt").is_file() for step in saved)
        resize(disk, "2m")
        assert cli.main(argv + ["--resume"]) == 0
        steps = [json.loads(line) for line in (disk / "run" / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in steps if r["split"] == "compile"] == [1, saved[-1] + 1]


# --- signals and pipes ----------------------------------------------------------------------------

def test_ctrl_c_during_convert_leaves_nothing(tmp_path):
    """SIGINT while Orbax's threads write the checkpoint: one line, exit 130, no hidden .OUT.partial."""
    dst = tmp_path / "out"
    process = subprocess.Popen(CLI + ["convert", "smollm2-135m", str(dst)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    partial = tmp_path / ".out.partial"
    deadline = time.monotonic() + STARTUP_LIMIT_S
    while not partial.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)  # inside the save
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.splitlines()[-1] == "interrupted" and "Traceback" not in stderr and "ERROR" not in stderr, stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("flags", [["--no-stream"], ["--json"], ["--batch-size", "2"]])
def test_ctrl_c_stops_generate_within_seconds(flags, tmp_path):
    """A real SIGINT to a real `pass-jax generate` decoding a long budget: it exits within a couple of
    seconds with one line and no traceback. Needs the Generator to decode in bounded chunks with an
    interrupt check between them (branch core); before that it computes on until the budget is spent."""
    argv = ["generate", "--prompt", "Write a long story about a dragon.", "--prompt", "Count to one thousand.",
            "--max-new-tokens", "3000", "--mode", "ar", *flags]
    # A compilation cache of its own: the decode loop's entry appears there when its compilation is done
    # (a Ctrl-C during an XLA compilation waits for it), so the SIGINT lands in the decode loop.
    xla = tmp_path / "xla"
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(xla), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    process = subprocess.Popen(CLI + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen: list[str] = []
    wait_for_line(process, "compiling the decode loop", seen)
    deadline = time.monotonic() + STARTUP_LIMIT_S
    while not list(xla.glob("jit_decode*")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2)  # decoding: the budget takes minutes
    assert process.poll() is None, "".join(seen)
    process.send_signal(signal.SIGINT)
    start = time.monotonic()
    try:
        stdout, stderr = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail(f"{' '.join(flags)}: still running 30 s after SIGINT")
    elapsed = time.monotonic() - start
    stderr = "".join(seen) + stderr
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.splitlines()[-1] == "interrupted", stderr
    assert elapsed < 3.0, f"{' '.join(flags)}: exited {elapsed:.1f} s after SIGINT"


def test_stream_into_a_closed_pipe_is_quiet():
    """`pass-jax generate --stream ... | head -c 10`: the reader leaves; no BrokenPipeError traceback."""
    shell = (f"{' '.join(CLI)} generate --prompt 'Tell me about Paris.' --stream --max-new-tokens 64 --mode ar "
             "2>err.txt | head -c 10 >/dev/null; echo ${PIPESTATUS[0]}")
    with tempfile.TemporaryDirectory() as work:
        done = subprocess.run(["bash", "-c", shell], cwd=work, capture_output=True, text=True, timeout=STARTUP_LIMIT_S)
        stderr = (Path(work) / "err.txt").read_text()
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
    assert done.stdout.strip() == "141", (done.stdout, stderr)


# --- smaller rows -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["-", "/dev/stdin"])
def test_prompts_from_standard_input(name, monkeypatch):
    import io

    from pass_jax.cli_args import read_prompts

    class Stdin:
        buffer = io.BytesIO(b'{"prompt": "one"}\n{"prompt": "two"}\n')

    if name == "-":
        monkeypatch.setattr(sys, "stdin", Stdin)
        assert read_prompts(None, "-") == ["one", "two"]
    else:  # a real pipe on the real standard input of a real process
        code = "from pass_jax.cli_args import read_prompts; print(read_prompts(None, '/dev/stdin'))"
        done = subprocess.run([sys.executable, "-c", code], input='{"prompt": "one"}\n', capture_output=True, text=True)
        assert done.stdout.strip() == "['one']", done.stderr


def test_damaged_compilation_cache_entry_is_repaired(tmp_path):
    code = ("import warnings; warnings.simplefilter('always')\n"
            "from pass_jax.cli_args import enable_compilation_cache; enable_compilation_cache()\n"
            "import jax, jax.numpy as jnp; print(jax.jit(lambda x: x * 2 + 1)(jnp.arange(3.0)))")
    env = {**os.environ, "PASS_JAX_CACHE": str(tmp_path), "PASS_JAX_COMPILATION_CACHE": "1"}

    def run() -> str:
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert done.returncode == 0 and done.stdout.strip() == "[1. 3. 5.]", done.stderr
        return done.stderr

    run()
    entries = sorted((tmp_path / "xla").glob("*-cache"))
    assert entries
    for entry in entries:  # overwrite bytes inside each entry
        data = bytearray(entry.read_bytes())
        data[len(data) // 3: len(data) // 3 + 64] = b"\xff" * 64
        entry.write_bytes(bytes(data))
    damaged = run()
    assert "Error reading persistent compilation cache" not in damaged, damaged
    assert "removed a damaged compilation cache entry" in damaged
    assert run().strip() == ""  # repaired: quiet, loaded from the cache


def test_damaged_corpus_cache_is_rebuilt(corpus, tmp_path, capsys):
    from pass_jax.train import data

    first = list(data.load_documents(str(corpus), "train", cache_dir=tmp_path))
    out = capsys.readouterr()
    assert "Downloading and preparing" not in out.out + out.err and out.out == ""
    assert f"preparing the corpus {corpus} (once" in out.err
    (shard,) = (tmp_path / "tfds").rglob("*-train.array_record-*")
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size * 3 // 4])  # truncated
    assert list(data.load_documents(str(corpus), "train", cache_dir=tmp_path)) == first
    assert f"the corpus cache {shard.parent} is damaged (" in capsys.readouterr().err
    assert list(data.load_documents(str(corpus), "train", cache_dir=tmp_path)) == first
    assert "damaged" not in capsys.readouterr().err  # rebuilt


def test_refused_corpus_leaves_no_cache_directory(tmp_path):
    from pass_jax.train import data
    from pass_jax.corpora import CorpusError

    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError):
        list(data.load_documents(str(tmp_path / "empty"), "train", cache_dir=tmp_path / "cache"))
    assert not list((tmp_path / "cache").rglob("local_*"))


def test_an_emoji_cut_by_the_budget_is_dropped_not_replaced():
    from pass_jax.generate import decode_whole_characters
    from pass_jax.loading import bundled_gguf_path, gguf_tokenizer

    tokenizer = gguf_tokenizer(bundled_gguf_path())
    ids = tokenizer.encode("Dragons 🐉", add_special_tokens=False)
    assert tokenizer.decode(ids[:-1]).endswith("\ufffd")  # the emoji is several byte tokens
    assert decode_whole_characters(tokenizer, ids[:-1]) == "Dragons"  # the space came in the emoji's first token
    assert decode_whole_characters(tokenizer, ids) == "Dragons 🐉"


def test_json_onto_a_full_disk(tmp_path):
    """`generate --json > FILE` on a full file system: one line naming the file, no traceback."""
    with small_disk(tmp_path / "disk", "4k") as disk:
        (disk / "fill").write_bytes(b"\0" * 4096)
        with open(disk / "out.json", "w") as out:
            done = subprocess.run(CLI + ["generate", "--prompt", "Hi", "--max-new-tokens", "4", "--mode", "ar", "--json"],
                                  stdout=out, stderr=subprocess.PIPE, text=True, timeout=STARTUP_LIMIT_S)
    assert done.returncode == 2
    one_error_line(done.stderr, f"no space left on {disk} (writing {disk / 'out.json'})")


# --- damaged caches and checkpoints -----------------------------------------------------------------

def test_damaged_model_cache_is_found_and_rebuilt(tmp_path, monkeypatch, capsys):
    """Bytes inside a cached float32 weight overwritten, its .npy header intact: the SHA-256 kept in the
    entry's pass_jax.json no longer matches; the entry is rebuilt with one line, never used."""
    import jax
    import numpy as np

    from pass_jax.loading import gguf_cache_entry, load_model
    from pass_jax.loading import bundled_gguf_path

    monkeypatch.setenv("PASS_JAX_CACHE", str(tmp_path))
    first = jax.tree.leaves(load_model("smollm2-135m").params)
    capsys.readouterr()
    weight = gguf_cache_entry(bundled_gguf_path()) / "params" / "layer_3.mlp.w_up.npy"
    with open(weight, "r+b") as f:
        f.seek(weight.stat().st_size // 2)
        f.write(b"\0" * 4096)  # zeroed bytes gave a plausible, wrong answer before
    again = jax.tree.leaves(load_model("smollm2-135m").params)
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pass-jax")]
    assert len(notes) == 1 and "cannot be used (params/layer_3.mlp.w_up.npy does not match" in notes[0], notes
    assert notes[0].endswith("rebuilding it")
    for a, b in zip(first, again):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    load_model("smollm2-135m")
    assert "pass-jax" not in capsys.readouterr().err  # rebuilt: a quiet load from the cache


def test_converted_checkpoint_with_a_missing_file(make_hf_llama, tmp_path):
    import shutil

    from pass_jax.loading import LoadError, load_model, save_converted

    src, _ = make_hf_llama(tmp_path / "hf")
    dst = tmp_path / "converted"
    save_converted(load_model(src), dst)
    meta = json.loads((dst / "pass_jax.json").read_text())
    assert "tokenizer.json" in meta["tokenizer_files"]

    (dst / "tokenizer" / "tokenizer.json").rename(tmp_path / "kept.json")
    with pytest.raises(LoadError, match=f"{dst / 'tokenizer' / 'tokenizer.json'} is missing"):
        load_model(dst)
    meta.pop("tokenizer_files")  # a checkpoint written before the list: the message names the model's directory
    (dst / "pass_jax.json").write_text(json.dumps(meta))
    for file in (dst / "tokenizer").iterdir():
        file.unlink()
    with pytest.raises(LoadError) as caught:
        load_model(dst)
    assert str(caught.value).startswith(f"{dst / 'tokenizer'}: cannot load the tokenizer")

    (dst / "pass_jax.json").unlink()
    with pytest.raises(LoadError, match="converted checkpoint without its pass_jax.json"):
        load_model(dst)
    shutil.rmtree(dst)
