"""Writing the output directory never loses data: refusals, --force only over depprune's own output,
atomic replacement (checked by killing a writer), one writer at a time, umask, byte-identical weights."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pruners.errors import OutputError
from pruners.io.output_dir import MARKER, OutputDir, current_umask

from zoo import STORIES

REPO = Path(__file__).resolve().parents[1]
OLD = {"weights.bin": b"old" * 1000, "config.json": b'{"old": 1}'}
NEW = {"weights.bin": b"new" * 2000, "config.json": b'{"new": 2}'}


def filler(files: dict[str, bytes]):
    def fill(tmp: Path) -> None:
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)

    return fill


def written(out: Path, files=OLD, **kw) -> Path:
    """``out`` written by depprune (so --force may replace it)."""
    with OutputDir(out, **kw) as od:
        od.write(filler(files))
    return out


def contents(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name != MARKER}


def leftovers(parent: Path) -> list[str]:
    """Hidden temporaries and lock files beside the outputs."""
    return sorted(p.name for p in parent.iterdir() if ".depprune-" in p.name)


# ---------------------------------------------------------------- refusals


def test_empty_string_is_refused():
    with pytest.raises(OutputError, match="empty"):
        OutputDir("")


@pytest.mark.parametrize("dangling", [False, True])
def test_symlink_is_refused_and_names_its_target(tmp_path, dangling):
    target = tmp_path / "real"
    if not dangling:
        target.mkdir()
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(OutputError, match=r"symbolic link.*real"):
        with OutputDir(tmp_path / "link", force=True):
            pass
    assert (tmp_path / "link").is_symlink() and target.exists() != dangling


def test_existing_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("mine")
    with pytest.raises(OutputError, match="not a directory"):
        OutputDir(tmp_path / "out", force=True)
    assert (tmp_path / "out").read_text() == "mine"


@pytest.mark.parametrize(
    "out,inp,what",
    [("runs/m", "runs/m", "is the input"), ("runs", "runs/m", "contains the input"), ("runs/m/sub", "runs/m", "inside")],
)
def test_output_overlapping_an_input_is_refused(tmp_path, out, inp, what):
    (tmp_path / inp).mkdir(parents=True)
    (tmp_path / inp / "config.json").write_text("{}")
    with pytest.raises(OutputError, match=what):
        OutputDir(tmp_path / out, force=True, inputs=[None, tmp_path / "calib.txt", tmp_path / inp])
    assert [p.name for p in (tmp_path / inp).iterdir()] == ["config.json"]


def test_output_overlap_is_found_through_symlinked_parents(tmp_path):
    (tmp_path / "runs" / "m").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(tmp_path / "runs")
    with pytest.raises(OutputError, match="is the input"):
        OutputDir(tmp_path / "alias" / "m", inputs=[tmp_path / "runs" / "m"])


def test_cwd_home_and_root_are_refused(tmp_path, monkeypatch):
    (tmp_path / "work").mkdir()
    (tmp_path / "home").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for out, what in [(".", "working directory"), (tmp_path, "working directory"), (tmp_path / "home", "home"), ("/", "/")]:
        with pytest.raises(OutputError, match=what):
            OutputDir(out, force=True)
    OutputDir("sub")  # below the working directory is fine


def test_parent_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    for out in (tmp_path / "f" / "out", tmp_path / "f" / "a" / "out"):
        with pytest.raises(OutputError, match=r"f.*not a directory"):
            with OutputDir(out):
                pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


@pytest.mark.parametrize("out", ["/proc/depprune-out", "/proc/depprune-x/out"])
def test_parent_that_cannot_be_written_is_refused(out):
    with pytest.raises(OutputError, match="cannot"):
        with OutputDir(out):
            pass


def test_non_empty_output_needs_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="pass --force"):
        with OutputDir(out):
            pass
    assert contents(out) == {"notes.txt": b"mine"} and leftovers(tmp_path) == []


def test_empty_existing_directory_is_used_without_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    written(out)
    assert contents(out) == {k: v for k, v in OLD.items()}
    assert json.loads((out / MARKER).read_text()) == {"files": ["config.json", "weights.bin"], "written_by": "depprune"}
    assert leftovers(tmp_path) == []


def test_checks_come_before_the_work(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "x").write_text("mine")
    calls = []
    with pytest.raises(OutputError):
        with OutputDir(out) as od:
            calls.append("long work")
            od.write(filler(NEW))
    assert calls == []


# ---------------------------------------------------------------- --force


def test_force_replaces_depprune_output(tmp_path):
    out = written(tmp_path / "out", {**OLD, "sub/extra.bin": b"1"})
    written(out, NEW, force=True)
    assert contents(out) == NEW and leftovers(tmp_path) == []


@pytest.mark.parametrize("marker", [None, "valid", "garbage"])
def test_force_refuses_a_user_directory_and_leaves_it_untouched(tmp_path, marker):
    out = tmp_path / "out"
    if marker == "valid":
        written(out)
    else:
        out.mkdir()
        (out / "config.json").write_text("x")
        if marker == "garbage":
            (out / MARKER).write_text("not json")
    for extra in ("a.txt", "b.txt", "c.txt", "d.txt"):
        (out / extra).write_text("mine")
    (out / "data").mkdir()
    (out / "data" / "keep.bin").write_bytes(b"\0")
    before = contents(out)
    with pytest.raises(OutputError, match=r"a\.txt.*b\.txt.*c\.txt" if marker == "valid" else "not written by depprune"):
        with OutputDir(out, force=True) as od:
            od.write(filler(NEW))
    assert contents(out) == before and leftovers(tmp_path) == []


def test_a_file_added_during_the_work_stops_the_replace(tmp_path):
    out = written(tmp_path / "out")
    with pytest.raises(OutputError, match="late.txt"):
        with OutputDir(out, force=True) as od:
            (out / "late.txt").write_text("mine")
            od.write(filler(NEW))
    assert contents(out) == {**OLD, "late.txt": b"mine"} and leftovers(tmp_path) == []


# ---------------------------------------------------------------- cleanup


def test_failed_fill_leaves_nothing_not_even_created_parents(tmp_path):
    def broken(tmp):
        (tmp / "half").write_text("x")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        with OutputDir(tmp_path / "a" / "b" / "out") as od:
            od.write(broken)
    assert list(tmp_path.iterdir()) == []


def test_keyboard_interrupt_before_write_removes_created_parents(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(KeyboardInterrupt):
        with OutputDir(tmp_path / "a" / "b" / "c" / "out"):
            assert (tmp_path / "a" / "b" / "c").is_dir()
            raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["a"] and list((tmp_path / "a").iterdir()) == []


def test_successful_write_keeps_parents_and_removes_the_lock(tmp_path):
    with OutputDir(tmp_path / "a" / "out") as od:
        assert leftovers(tmp_path / "a") == [".out.depprune-lock"]
        assert od.write(filler(NEW)) == tmp_path / "a" / "out"
    assert contents(tmp_path / "a" / "out") == NEW and leftovers(tmp_path / "a") == []


def test_stale_temporaries_are_removed_and_reported(tmp_path):
    out = written(tmp_path / "out")
    stale = tmp_path / ".out.depprune-tmp-abc123"
    stale.mkdir()
    (stale / "weights.bin").write_bytes(b"half")
    (tmp_path / ".other.depprune-tmp-x").mkdir()  # another output's: not ours to touch
    notes: list[str] = []
    with OutputDir(out, force=True, warn=notes.append) as od:
        od.write(filler(NEW))
    assert len(notes) == 1 and "removed stale temporary" in notes[0] and str(stale) in notes[0]
    assert od.stale == [stale]
    assert leftovers(tmp_path) == [".other.depprune-tmp-x"] and contents(out) == NEW


def test_stale_temporaries_warn_by_default(tmp_path):
    (tmp_path / ".out.depprune-tmp-zz").mkdir()
    with pytest.warns(UserWarning, match="interrupted run"):
        with OutputDir(tmp_path / "out"):
            pass


def test_interrupted_fallback_swap_restores_the_old_output(tmp_path):
    """Two renames (no renameat2) killed between them: the old tree is put back, the half-new one dropped."""
    out = written(tmp_path / "out")
    out.rename(tmp_path / ".out.depprune-old-abc")
    (tmp_path / ".out.depprune-tmp-def").mkdir()
    notes: list[str] = []
    with OutputDir(out, force=True, warn=notes.append):
        assert contents(out) == OLD
    assert len(notes) == 2 and leftovers(tmp_path) == []


def test_fallback_without_renameat2(tmp_path, monkeypatch):
    import pruners.io.output_dir as mod

    monkeypatch.setattr(mod, "_renameat2", lambda src, dst, flags: False)
    out = written(tmp_path / "out")
    written(out, NEW, force=True)
    assert contents(out) == NEW and leftovers(tmp_path) == []


# ---------------------------------------------------------------- lock


def test_second_writer_in_the_same_process_is_refused(tmp_path):
    out = tmp_path / "out"
    with OutputDir(out) as od:
        with pytest.raises(OutputError, match=rf"another depprune run is writing .*out.*\(pid {os.getpid()}\)"):
            with OutputDir(out):
                pass
        od.write(filler(NEW))
    assert contents(out) == NEW and leftovers(tmp_path) == []


def test_lock_file_replaced_while_waiting_is_not_trusted(tmp_path, monkeypatch):
    """The classic unlink race: the file we opened was unlinked before we locked it; lock the new one."""
    real = fcntl.flock
    lock = tmp_path / ".out.depprune-lock"
    swapped = []

    def racy(fd, op):
        if not swapped and op & fcntl.LOCK_EX:
            swapped.append(1)
            lock.unlink()
            lock.write_text("")
        return real(fd, op)

    monkeypatch.setattr(fcntl, "flock", racy)
    with OutputDir(tmp_path / "out"):
        monkeypatch.setattr(fcntl, "flock", real)
        with open(lock) as f, pytest.raises(BlockingIOError):
            real(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert swapped and leftovers(tmp_path) == []


# ---------------------------------------------------------------- processes

CHILD = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal: a background job inherits SIGINT ignored
from pathlib import Path
import pruners.io.output_dir as mod
from pruners.errors import OutputError

out, phase, ready, go = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])

def block():
    ready.write_text("ready")
    for _ in range(6000):
        if go.exists():
            return
        time.sleep(0.01)

def fill(tmp):
    (tmp / "weights.bin").write_bytes(b"new" * 2000)
    if phase == "fill":
        block()
    (tmp / "config.json").write_bytes(b'{"new": 2}')

if phase == "swap":
    discard = mod._discard_old
    def late(path):
        block()
        discard(path)
    mod._discard_old = late

notes = []
try:
    with mod.OutputDir(out, force=True, warn=notes.append) as od:
        od.write(fill)
except OutputError as e:
    print(e, file=sys.stderr)
    sys.exit(2)
print("|".join(notes))
"""


def child(tmp_path: Path, out: Path, phase: str, tag: str = "a") -> tuple[subprocess.Popen, Path, Path]:
    ready, go = tmp_path / f"ready-{tag}", tmp_path / f"go-{tag}"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(out), phase, str(ready), str(go)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )
    return proc, ready, go


def wait_for(proc: subprocess.Popen, ready: Path) -> None:
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None:
            pytest.fail(f"child exited early ({proc.returncode}): {proc.stderr.read()}")
        assert time.monotonic() < deadline, "child never got ready"
        time.sleep(0.01)


@pytest.mark.parametrize("phase,after", [("fill", OLD), ("swap", NEW)])
def test_sigkill_leaves_a_complete_output_and_the_next_run_cleans_up(tmp_path, phase, after):
    out = written(tmp_path / "parent" / "out")
    proc, ready, _ = child(tmp_path, out, phase)
    wait_for(proc, ready)
    proc.kill()
    proc.wait(30)
    assert contents(out) == after  # the complete old or the complete new output, never a mix
    assert any(n.startswith(".out.depprune-tmp-") for n in leftovers(out.parent))
    again, _, go = child(tmp_path, out, "plain", "b")
    stdout, stderr = again.communicate(timeout=60)
    assert again.returncode == 0, stderr
    assert "removed stale temporary" in stdout and "interrupted run" in stdout
    assert contents(out) == NEW and leftovers(out.parent) == []


def test_sigint_during_fill_keeps_the_old_output_and_no_temporaries(tmp_path):
    out = written(tmp_path / "parent" / "out")
    proc, ready, _ = child(tmp_path, out, "fill")
    wait_for(proc, ready)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode != 0 and "KeyboardInterrupt" in stderr
    assert contents(out) == OLD and leftovers(out.parent) == []


def test_two_concurrent_writers_exactly_one_wins(tmp_path):
    out = tmp_path / "parent" / "out"
    first, ready, go = child(tmp_path, out, "fill", "a")
    wait_for(first, ready)
    second, _, _ = child(tmp_path, out, "plain", "b")
    _, err2 = second.communicate(timeout=60)
    go.write_text("go")
    _, err1 = first.communicate(timeout=60)
    assert first.returncode == 0, err1
    assert second.returncode == 2 and f"another depprune run is writing {out} (pid {first.pid})" in err2
    assert len(err2.strip().splitlines()) == 1
    assert contents(out) == NEW and leftovers(out.parent) == []


# ---------------------------------------------------------------- modes


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_modes_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        def fill(tmp):
            (tmp / "sub").mkdir()
            (tmp / "sub" / "x.bin").write_bytes(b"1")
            (tmp / "private.bin").write_bytes(b"2")
            os.chmod(tmp / "private.bin", 0o600)  # e.g. copied from a private source

        with OutputDir(tmp_path / "new" / "out") as od:
            od.write(fill)
    finally:
        os.umask(old)
    out = tmp_path / "new" / "out"
    for p in [out.parent, out, out / "sub"]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o777 & ~mask, p
    for p in [out / "sub" / "x.bin", out / "private.bin", out / MARKER]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask, p


# ---------------------------------------------------------------- save_pruned

needs_stories = pytest.mark.shared

SAVE = """
import sys
from pruners.io.checkpoint import load_model, save_pruned
from pruners.slicing.executor import PruneRecord
save_pruned(load_model(sys.argv[1]), sys.argv[2], PruneRecord(), source=sys.argv[1])
"""


@needs_stories
def test_save_pruned_is_byte_identical_across_processes(tmp_path):
    procs = [
        subprocess.Popen([sys.executable, "-c", SAVE, str(STORIES), str(tmp_path / name)], stderr=subprocess.PIPE, text=True)
        for name in ("a", "b")
    ]
    for p in procs:
        assert p.wait(120) == 0, p.stderr.read()
    a, b = (sorted((tmp_path / n).iterdir()) for n in ("a", "b"))
    assert [p.name for p in a] == [p.name for p in b] and "model.safetensors" in [p.name for p in a]
    for x, y in zip(a, b):
        assert x.read_bytes() == y.read_bytes(), x.name


@needs_stories
def test_tied_weights_are_stored_once_without_alias_metadata(tmp_path):
    from safetensors import safe_open

    from pruners.io.checkpoint import load_model, save_pruned
    from pruners.slicing.executor import PruneRecord

    model = load_model(STORIES)
    out = save_pruned(model, tmp_path / "out", PruneRecord(), source=STORIES)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert ("lm_head.weight" in f.keys()) != ("model.embed_tokens.weight" in f.keys())
    loaded = load_model(out)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~current_umask()
    assert json.loads((out / MARKER).read_text())["files"] == sorted(p.name for p in out.iterdir() if p.name != MARKER)


@needs_stories
def test_save_pruned_refuses_its_own_source_and_a_user_directory(tmp_path):
    from pruners.io.checkpoint import load_model, save_pruned
    from pruners.slicing.executor import PruneRecord

    src = tmp_path / "src"  # a copy: a broken save_pruned must never get a chance to replace the shared model
    shutil.copytree(STORIES, src)
    before = {p.relative_to(src): p.read_bytes() for p in src.rglob("*") if p.is_file()}
    model = load_model(src)
    with pytest.raises(OutputError, match="is the input"):
        save_pruned(model, src, PruneRecord(), source=src, force=True)
    assert {p.relative_to(src): p.read_bytes() for p in src.rglob("*") if p.is_file()} == before
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputError, match="not written by depprune"):
        save_pruned(model, tmp_path / "mine", PruneRecord(), force=True)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "years of work"
