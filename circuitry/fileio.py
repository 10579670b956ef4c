"""Writing files atomically: a temporary file in the target's directory, renamed over it.

Every file circuitry writes (models, specs, reports, plots, JSON records) goes
through `atomic_write`, so a reader never sees half a file and an interrupted
write leaves the old file (or nothing) behind: the temporary file is removed on
any exception, Ctrl-C (SIGINT) included, and, in the main thread, on SIGTERM,
which ends the process as a plain SIGTERM would once the file is removed. The
CLI checks every output path with `check_output` before any work starts. This
module imports nothing of circuitry but `errors`, so every room (model, report,
graph, train) can use it.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from circuitry.errors import UsageError

# a suffix accepted wherever its main spelling is (not named in messages)
SUFFIX_ALIASES = {".html": (".htm",), ".yaml": (".yml",)}


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived while an atomic write was in progress (main thread only)."""


_terminating = False  # a SIGTERM is being handled: later ones wait for the cleanup


def _raise_terminated(signum: int, frame: object) -> None:
    """SIGTERM handler during atomic writes: raise `Terminated` once, so the temporary file is removed."""
    global _terminating
    if _terminating:
        return
    _terminating = True
    raise Terminated(f"signal {signum}")


def _sigterm_to_catch():
    """The SIGTERM handler to restore after an atomic write, or None when this write leaves SIGTERM alone
    (not the main thread, SIGTERM ignored or set outside Python, or an enclosing atomic write handles it)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGTERM)
    if previous in (None, signal.SIG_IGN) or previous is _raise_terminated:
        return None
    return previous


def atomic_write(path: str | Path, write: Callable[[str], object]) -> Path:
    """Call `write(tmp)` on a temporary path beside `path`, then rename it to `path`.

    The temporary file is removed when `write` fails or the process is interrupted (SIGINT, SIGTERM);
    after SIGTERM the previous handler gets the signal again (by default: the process ends, exit 143).
    """
    global _terminating
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = _sigterm_to_catch()
    try:
        if previous is not None:
            _terminating = False
            signal.signal(signal.SIGTERM, _raise_terminated)
        return _write_then_rename(path, write)
    except Terminated:
        if previous is None:
            raise  # an enclosing atomic write passes the signal on
        signal.signal(signal.SIGTERM, previous)
        signal.raise_signal(signal.SIGTERM)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _write_then_rename(path: Path, write: Callable[[str], object]) -> Path:
    """The write itself: temporary file, `write(tmp)`, permissions as for a new file, rename."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


# ------------------------------------------------------------------ output paths, checked before any work
def check_output(path: str | Path, option: str, suffixes: Sequence[str] | None = None,
                 directory: bool = False) -> Path:
    """Check that the output `path` given with `option` (e.g. '--html') can be written; a UsageError otherwise.

    A file output (the default) must not be an existing directory or other non-file, must end in one of
    `suffixes` (case-insensitive; '.htm' and '.yml' count as '.html' and '.yaml'), and its parent must be
    an existing, writable directory. A `directory` output may exist (a writable directory) or not; missing
    directories on the way are created when it is written, so its nearest existing ancestor must be a
    writable directory. Nothing is created here.
    """
    text = str(path)
    where = f"{option} {text}"
    if not text:
        raise UsageError(f"{option}: empty path; give a {'directory' if directory else 'file'} name")
    path = Path(text)
    try:
        if directory:
            _check_directory_output(path, where)
        else:
            _check_file_output(path, text, where, suffixes)
    except (OSError, ValueError) as exc:  # a name too long, a NUL byte, a directory that cannot be read
        why = getattr(exc, "strerror", None) or str(exc)
        raise UsageError(f"{where}: cannot be written ({why}); choose another place") from None
    return path


def _check_file_output(path: Path, text: str, where: str, suffixes: Sequence[str] | None) -> None:
    """The checks of `check_output` for a file output."""
    example = path / ("output" + (suffixes[0] if suffixes else ""))
    if path.is_dir():
        raise UsageError(f"{where}: is a directory; give a file name such as {example}")
    if text.endswith(("/", os.sep)):
        raise UsageError(f"{where}: names a directory; give a file name such as {example}")
    if path.exists() and not path.is_file():
        raise UsageError(f"{where}: exists and is not a regular file; give another file name")
    if suffixes and not _has_suffix(path, suffixes):
        raise UsageError(f"{where}: must end in {' or '.join(suffixes)}")
    parent = path.parent
    if not parent.is_dir():
        ancestor = _nearest_existing(parent)
        if ancestor is not None and not ancestor.is_dir():
            raise UsageError(f"{where}: {ancestor} is not a directory; give a path in a directory")
        raise UsageError(f"{where}: no such directory {parent} (create it first)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{where}: directory {parent} is not writable (permission denied); "
                         "choose another place")


def _check_directory_output(path: Path, where: str) -> None:
    """The checks of `check_output` for a directory output (created with its parents when written)."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{where}: is a file, not a directory; give a directory name")
    ancestor = _nearest_existing(path)
    if ancestor is not None and not ancestor.is_dir():
        raise UsageError(f"{where}: {ancestor} is not a directory; give a path in a directory")
    if ancestor is not None and not os.access(ancestor, os.W_OK | os.X_OK):
        target = "directory" if ancestor == path else f"cannot create it: directory {ancestor}"
        raise UsageError(f"{where}: {target} is not writable (permission denied); choose another place")


def _has_suffix(path: Path, suffixes: Sequence[str]) -> bool:
    """Whether `path` ends in one of `suffixes` or their aliases, ignoring case."""
    accepted = {s.lower() for s in suffixes}
    accepted |= {a for s in accepted for a in SUFFIX_ALIASES.get(s, ())}
    return path.suffix.lower() in accepted


def _nearest_existing(path: Path) -> Path | None:
    """`path` or its nearest ancestor that exists (None when none does, e.g. a path on a missing drive)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return None


def path_kind(path: Path) -> str | None:
    """'dir', 'file' or None (nothing there); a UsageError for a path that cannot be looked at (a
    name too long, a NUL byte, no permission) or that is not a regular file (a device, a pipe or a
    socket, which could be read without end)."""
    try:
        if "\0" in str(path):
            raise ValueError("a NUL character in the name")
        if path.is_dir():
            return "dir"
        if path.exists() and not path.is_file():
            raise ValueError("not a regular file, but a device, a pipe or a socket")
        return "file" if path.exists() else None
    except (OSError, ValueError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        text = repr(str(path))[1:-1]
        shown = text if len(text) <= 120 else f"{text[:120]}... ({len(text)} characters)"
        raise UsageError(f"{shown}: not a usable path ({why})") from None
