"""Writing an output directory without ever losing data.

:class:`OutputDir` does every check on ``--out`` and takes a lock *before* the long work (so a
bad path fails in a second), then writes the result into a hidden temporary directory beside
``out`` and swaps it into place.  The rules:

- ``out`` must not be empty, a symbolic link, a file, an input (or contain one, or lie inside
  one), the working directory, the home directory or ``/`` (or contain them).
- An existing non-empty ``out`` is replaced only with ``force``, and only if depprune wrote it:
  every directory written here holds a :data:`MARKER` file listing its files, and nothing else
  may be in it.  An empty directory is used without ``force``.
- The swap is atomic: Linux ``renameat2(RENAME_EXCHANGE)`` exchanges the new tree with the old
  one (two renames where that call is missing), so at every instant ``out`` is the complete old
  or the complete new directory.  The old tree is deleted afterwards.
- One writer per ``out``: ``flock`` on ``.{name}.depprune-lock`` beside it; a second run fails
  at once.  The lock file, the temporary and the parent directories created here are removed on
  every exit, normal or not.  Temporaries left by a killed run are removed by the next run,
  which reports them (``warn``, by default :func:`warnings.warn` with
  :class:`StaleTemporaryWarning`).
- Modes follow the umask: directories ``0o777 & ~umask``, files ``0o666 & ~umask``.

>>> import tempfile
>>> root = Path(tempfile.mkdtemp())
>>> with OutputDir(root / "out") as od:
...     _ = od.write(lambda tmp: (tmp / "a.txt").write_text("hi"))
>>> sorted(p.name for p in root.iterdir()), sorted(p.name for p in (root / "out").iterdir())
(['out'], ['.depprune-output.json', 'a.txt'])
>>> shutil.rmtree(root)
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

from ..errors import OutputError

MARKER = ".depprune-output.json"
RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_LOCK_TRIES = 20


class StaleTemporaryWarning(UserWarning):
    """A temporary left beside ``out`` by an interrupted (killed) run was removed."""


def current_umask() -> int:
    """The process umask, read from ``/proc`` where possible so that it is never changed.

    >>> 0 <= current_umask() <= 0o777
    True
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def tmp_prefix(name: str) -> str:
    """Prefix of the temporary directories written beside the output ``name``.

    >>> tmp_prefix("pruned")
    '.pruned.depprune-tmp-'
    """
    return f".{name}.depprune-tmp-"


def old_prefix(name: str) -> str:
    """Prefix under which the old output waits during a two-rename swap (no ``renameat2``)."""
    return f".{name}.depprune-old-"


def lock_name(name: str) -> str:
    """Name of the lock file beside the output ``name``.

    >>> lock_name("pruned")
    '.pruned.depprune-lock'
    """
    return f".{name}.depprune-lock"


# ---------------------------------------------------------------- checks on the path


def _within(inner: Path, outer: Path) -> bool:
    """``inner`` is ``outer`` or below it (both absolute and resolved).

    >>> _within(Path("/a/b"), Path("/a")), _within(Path("/a"), Path("/a/b")), _within(Path("/ab"), Path("/a"))
    (True, False, False)
    """
    return inner == outer or outer in inner.parents


def _protected() -> list[tuple[str, Path]]:
    places = [("the working directory", Path.cwd().resolve())]
    try:
        places.append(("the home directory", Path.home().resolve()))
    except (RuntimeError, KeyError):  # no HOME and no passwd entry
        pass
    return places + [("the root directory", Path("/"))]


def _check_not_symlink(given: Path, text: str) -> None:
    if given.is_symlink():
        raise OutputError(
            f"output {text!r} is a symbolic link (to {os.readlink(given)!r}); give a real directory path, not a link"
        )


def check_path(out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = ()) -> Path:
    """The resolved location of ``out``, or :class:`OutputError` if writing there could harm other data.

    ``inputs`` (``None`` entries are skipped) must neither be ``out`` nor contain or lie inside it.

    >>> check_path("/")
    Traceback (most recent call last):
    ...
    pruners.errors.OutputError: output '/' is the root directory (/); give a dedicated directory such as out/pruned
    """
    text = os.fspath(out)
    if text == "":
        raise OutputError("output path '' is empty; give a directory such as out/pruned")
    given = Path(text)
    _check_not_symlink(given, text)
    path = Path(os.path.realpath(given))
    if path.exists() and not path.is_dir():
        raise OutputError(f"output {text!r} exists and is not a directory; give a directory path (new or depprune's own)")
    places = _protected()
    for what, place in places:
        if path == place:
            raise OutputError(f"output {text!r} is {what} ({place}); give a dedicated directory such as out/pruned")
    for what, place in places:
        if _within(place, path):
            raise OutputError(f"output {text!r} contains {what} ({place}); give a dedicated directory such as out/pruned")
    for inp in inputs:
        if inp is None:
            continue
        where = Path(os.path.realpath(inp))
        if path == where:
            raise OutputError(f"output {text!r} is the input {os.fspath(inp)!r}; inputs are never modified, choose another --out")
        if _within(where, path):
            raise OutputError(f"output {text!r} contains the input {os.fspath(inp)!r}; choose an --out outside every input")
        if _within(path, where):
            raise OutputError(f"output {text!r} is inside the input {os.fspath(inp)!r}; choose an --out outside every input")
    return path


def _make_parents(path: Path, text: str) -> list[Path]:
    """Create the missing ancestors of ``path``; return those created here, deepest first."""
    missing = []
    parent = path.parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"cannot create output {text!r}: {parent} is not a directory; choose a path below a directory")
    created: list[Path] = []
    for d in reversed(missing):
        try:
            os.mkdir(d)
        except FileExistsError:
            if not d.is_dir():
                _remove_dirs(created[::-1])
                raise OutputError(
                    f"cannot create output {text!r}: {d} is not a directory; choose a path below a directory"
                ) from None
            continue
        except OSError as e:
            _remove_dirs(created[::-1])
            raise OutputError(
                f"cannot create the directory {d} for output {text!r} ({e.strerror}); choose a writable location"
            ) from e
        created.append(d)
    return created[::-1]


def _remove_dirs(dirs: Iterable[Path]) -> None:
    """Remove the given directories (deepest first) while they are empty."""
    for d in dirs:
        try:
            os.rmdir(d)
        except OSError:
            return


# ---------------------------------------------------------------- the lock


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    fst = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


def _holder(fd: int) -> str:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return text if text.isdigit() else "unknown"


def _acquire(lock: Path, text: str) -> int:
    """An fd holding ``flock(LOCK_EX)`` on ``lock``, which still names that file; else OutputError."""
    for _ in range(_LOCK_TRIES):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o666)
        except OSError as e:
            raise OutputError(
                f"cannot write in {lock.parent} to create output {text!r} ({e.strerror}); choose a writable location"
            ) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(fd)
            os.close(fd)
            raise OutputError(
                f"another depprune run is writing {text} (pid {pid}); wait for it to end or choose another --out"
            ) from None
        except BaseException as e:
            os.close(fd)
            if isinstance(e, OSError):
                raise OutputError(f"cannot lock {lock} for output {text!r} ({e.strerror}); choose a local directory") from e
            raise
        if _same_file(fd, lock):  # not unlinked (by a finishing run) between our open and our lock
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)
    raise OutputError(f"cannot lock {lock} for output {text!r}: it keeps being replaced; retry")


def _release(fd: int, lock: Path) -> None:
    """Unlink the lock file while still holding it (so waiting runs see a new inode), then unlock."""
    try:
        if _same_file(fd, lock):
            os.unlink(lock)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- the contents of out


def _listing(root: Path) -> list[str]:
    """Every file below ``root`` (and every empty directory, with a trailing ``/``), relative, sorted."""
    entries = []
    for here, dirs, files in os.walk(root):
        rel = Path(here).relative_to(root)
        links = [d for d in dirs if os.path.islink(os.path.join(here, d))]  # not descended: list as files
        entries += [(rel / f).as_posix() for f in files + links]
        if not dirs and not files and here != os.fspath(root):
            entries.append(rel.as_posix() + "/")
    return sorted(e for e in entries if e != MARKER)


def _marker_files(path: Path) -> set[str] | None:
    """The files listed in ``path``'s marker, or ``None`` without a valid one."""
    try:
        data = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None
    files = data.get("files") if isinstance(data, dict) else None
    if data.get("written_by") != "depprune" or not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    return set(files)


def _foreign(path: Path, listed: set[str]) -> list[str]:
    """Entries of ``path`` that its marker does not list (directories with a trailing ``/``)."""
    dirs_ok = {p.as_posix() for f in listed for p in Path(f.rstrip("/")).parents} | {f.rstrip("/") for f in listed if f.endswith("/")}
    foreign = []
    for here, dirs, files in os.walk(path):
        rel = Path(here).relative_to(path)
        for d in list(dirs):
            name = (rel / d).as_posix()
            if os.path.islink(os.path.join(here, d)):
                dirs.remove(d)
                files.append(d)
            elif name not in dirs_ok:
                dirs.remove(d)
                foreign.append(name + "/")
        foreign += [(rel / f).as_posix() for f in files if (rel / f).as_posix() not in listed | {MARKER}]
    return sorted(foreign)


def _check_contents(path: Path, text: str, force: bool) -> None:
    """``path`` may be replaced: absent, empty, or (with ``force``) holding only depprune's own files."""
    _check_not_symlink(path, text)
    if not path.exists():
        return
    if not path.is_dir():
        raise OutputError(f"output {text!r} exists and is not a directory; give a directory path (new or depprune's own)")
    if not any(path.iterdir()):
        return
    if not force:
        raise OutputError(f"output {text!r} exists and is not empty; pass --force to overwrite it (if depprune wrote it)")
    listed = _marker_files(path)
    if listed is None:
        raise OutputError(
            f"output {text!r} was not written by depprune (no valid {MARKER}); --force replaces only depprune's own "
            "output: choose another --out or empty it yourself"
        )
    foreign = _foreign(path, listed)
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise OutputError(
            f"output {text!r} holds {', '.join(foreign[:3])}{more}, not written by depprune; --force replaces only "
            "depprune's own output: move them away or choose another --out"
        )


# ---------------------------------------------------------------- writing and swapping


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _discard_old(path: Path) -> None:
    """Delete the previous output, now at a temporary name (a hook point for tests)."""
    _remove(path)


def _write_marker(root: Path) -> None:
    body = {"written_by": "depprune", "files": _listing(root)}
    (root / MARKER).write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")


def _apply_umask(root: Path, mask: int) -> None:
    """Directories ``0o777 & ~mask``, regular files ``0o666 & ~mask`` (``mkdtemp`` makes 0o700)."""
    for here, _, files in os.walk(root):
        os.chmod(here, 0o777 & ~mask)
        for f in files:
            p = os.path.join(here, f)
            if not os.path.islink(p):
                os.chmod(p, 0o666 & ~mask)


def _fsync(path: str | os.PathLike, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_tree(root: Path) -> None:
    """Flush every file and directory below ``root`` to disk, so the swap never exposes unwritten data."""
    for here, _, files in os.walk(root, topdown=False):
        for f in files:
            if not os.path.islink(os.path.join(here, f)):
                _fsync(os.path.join(here, f))
        _fsync(here, directory=True)


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux ``renameat2``; ``False`` where the C library, the kernel or the file system lacks it."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), os.fspath(src), None, os.fspath(dst))


def _swap_by_renames(new: Path, path: Path) -> Path:
    """Replace ``path`` by ``new`` with two renames; return where the old tree now is (under :func:`old_prefix`)."""
    old = Path(tempfile.mkdtemp(prefix=old_prefix(path.name), dir=path.parent))
    os.rename(path, old)  # replaces the empty placeholder
    try:
        os.rename(new, path)
    except BaseException:
        os.rename(old, path)
        raise
    return old


class OutputDir:
    """The output directory ``out``, checked and locked on entry, written atomically by :meth:`write`.

    Parameters
    ----------
    out : str or os.PathLike
        The directory to write.  Checked at construction (see :func:`check_path`).
    force : bool
        Allow replacing a non-empty ``out`` -- only one that depprune wrote.
    inputs : iterable of paths or None
        Paths read by the run (model, tokenizer, calibration file...): ``out`` may not overlap them.
    warn : callable, optional
        Called with one line per stale temporary removed on entry; by default
        :func:`warnings.warn` with :class:`StaleTemporaryWarning`.

    Attributes
    ----------
    path : Path
        ``out`` as given.
    stale : list of Path
        Temporaries of interrupted runs found and removed (or restored) on entry.
    """

    def __init__(
        self,
        out: str | os.PathLike,
        force: bool = False,
        inputs: Iterable[str | os.PathLike | None] = (),
        warn: Callable[[str], object] | None = None,
    ):
        self._resolved = check_path(out, inputs)
        self._text = os.fspath(out)
        self.path = Path(out)
        self.force = force
        self.stale: list[Path] = []
        self._warn = warn
        self._lock = self._resolved.parent / lock_name(self._resolved.name)
        self._fd: int | None = None
        self._created: list[Path] = []
        self._written = False

    @property
    def written(self) -> bool:
        """Whether the new output has been swapped in (``out`` is then the new, complete directory)."""
        return self._written

    def __enter__(self) -> OutputDir:
        if self._fd is not None:
            raise RuntimeError("OutputDir is not re-entrant")
        self._created = _make_parents(self._resolved, self._text)
        try:
            self._fd = _acquire(self._lock, self._text)
            self._clear_stale()
            _check_contents(self._resolved, self._text, self.force)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self._fd is not None:
                _release(self._fd, self._lock)
        finally:
            self._fd = None
            _remove_dirs(self._created)  # only while empty: a written out keeps its parents

    def _note(self, path: Path, message: str) -> None:
        self.stale.append(path)
        if self._warn is None:
            warnings.warn(message, StaleTemporaryWarning, stacklevel=4)
        else:
            self._warn(message)

    def _clear_stale(self) -> None:
        """Under the lock, every temporary named after ``out`` is an interrupted run's: restore or remove it."""
        parent, name = self._resolved.parent, self._resolved.name
        entries = sorted(os.listdir(parent))
        for entry in entries:
            p = parent / entry
            if entry.startswith(old_prefix(name)):
                ours = p.is_dir() and not p.is_symlink() and _marker_files(p) is not None
                if ours and not os.path.lexists(self._resolved):  # only depprune's own tree is put back
                    os.rename(p, self._resolved)
                    self._note(p, f"restored {self._text} from {p}, left by an interrupted run")
                else:
                    _remove(p)
                    self._note(p, f"removed stale temporary {p} (the previous output) from an interrupted run")
        for entry in entries:
            p = parent / entry
            if entry.startswith(tmp_prefix(name)):
                _remove(p)
                self._note(p, f"removed stale temporary {p} from an interrupted run")

    def write(self, fill: Callable[[Path], object]) -> Path:
        """Run ``fill(tmp)`` on a fresh temporary directory, then swap it in as ``out``; return ``out``.

        On any exception (``KeyboardInterrupt`` included) the temporary is removed and ``out``
        is left as it was.
        """
        if self._fd is None:
            raise RuntimeError("OutputDir.write() must be called inside its with block")
        if self._written:
            raise RuntimeError("OutputDir.write() may be called once")
        parent, path = self._resolved.parent, self._resolved
        tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix(path.name), dir=parent))
        try:
            fill(tmp)
            _write_marker(tmp)
            _apply_umask(tmp, current_umask())
            _sync_tree(tmp)
            _check_contents(path, self._text, self.force)  # again: files may have appeared during the work
            try:
                old = self._swap(tmp)
            except OutputError:
                raise
            except OSError as e:
                raise OutputError(f"cannot move the new output into {self._text!r} ({e.strerror}); it is unchanged") from e
            self._written = True
            if old is not None:
                _discard_old(old)
        finally:
            _remove(tmp)
        _fsync(parent, directory=True)
        return self.path

    def _swap(self, tmp: Path) -> Path | None:
        """Put ``tmp`` at ``out`` in one step; return where the previous ``out`` now is, if there was one."""
        path = self._resolved
        if os.path.lexists(path):
            try:
                if _renameat2(tmp, path, RENAME_EXCHANGE):
                    return tmp  # the old tree, under the temporary's name
            except FileNotFoundError:  # out vanished meanwhile: a plain rename below
                pass
            else:
                return _swap_by_renames(tmp, path)
        try:
            os.rename(tmp, path)
            return None
        except OSError as e:
            raise OutputError(f"output {self._text!r} appeared while it was being written ({e.strerror}); run again") from e
