"""Atomic file and folder writes (a temp beside the target, then one rename) and the marker
of folders segbalance created, the only folders it ever replaces; likewise an existing file
is replaced only when it is recognisably segbalance's own output (:func:`check_replaceable_file`).
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from segbalance.errors import UserError
from segbalance.version import __version__

# Text and binary writes only: reading or appending through a rename makes no sense.
WRITE_MODES = ("w", "wb")

#: Written into every folder segbalance creates for a run or an export. ``--overwrite``
#: replaces only folders that carry it, so a user's folder is never deleted.
MARKER = ".segbalance"


def _nearest_existing(path: Path) -> Path:
    for parent in path.parents:
        if parent.exists():
            return parent
    return Path(".")


def check_folder_target(path: str | Path) -> None:
    """Refuse a folder that cannot be created or written (cheap: no probe file).

    The atomic writers call it before each write; up-front checks of a command's outputs
    use :func:`check_output_path`, which also probes the folder.

    Raises:
        UserError: ``path`` is a file, lies under a file, or in a folder not writable.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} is a file; give a folder")
    base = path if path.is_dir() else _nearest_existing(path)
    if not base.is_dir():
        raise UserError(f"cannot create {path}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(f"cannot write into {base} (permission denied); choose another place")


def check_file_target(path: str | Path) -> None:
    """Refuse a file path that cannot be written (cheap: no probe file; see above).

    Raises:
        UserError: ``path`` is a folder, lies under a file, or in a folder not writable.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a file name inside it or elsewhere")
    check_folder_target(path.parent)


def check_output_path(path: str | Path, flag: str, *, folder: bool) -> None:
    """Refuse, before any work, an output path that cannot be written.

    ``folder``: the path is a folder (created if missing), else a file. Refused: a folder
    given for a file or a file for a folder, a path under a file, a broken link, and a
    place the process cannot write (probed with a temp file, which also catches root on
    a read-only file system, where permission bits say nothing).

    Raises:
        UserError: naming ``flag``, the path, and what to do.
    """
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file; give a folder (it is created if missing)")
    if not folder and path.is_dir():
        raise UserError(f"{flag} {path} is a folder; name a file (in it or elsewhere)")
    existing = path if folder else path.parent
    while not existing.exists():
        if os.path.lexists(existing):
            raise UserError(f"{flag} {path}: {existing} is a broken link; fix or remove it")
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(
            f"{flag} {path} lies under {existing}, which is a file, not a folder; "
            f"choose another {flag}"
        )
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".segbalance-probe-"):
            pass
    except OSError as err:
        raise UserError(
            f"{flag} {path}: cannot write in {existing} ({err.strerror}); "
            f"choose a folder you can write to"
        ) from err


def _create_temp(final: Path, suffix: str) -> tuple[int, Path]:
    """Create an empty temp file beside ``final``; its mode is what a plain ``open`` gives.

    ``tempfile.mkstemp`` would make it 0600, and the rename keeps that mode; opening with
    0o666 lets the kernel apply the umask (and any default ACL) exactly as for ``open``.
    """
    check_file_target(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = final.with_name(f".{final.name}.{secrets.token_hex(4)}{suffix or final.suffix}")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temp name beside {final}")


def _fsync(path: Path) -> None:
    """Flush a file another writer has closed to disk before it is renamed into place."""
    fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_write(
    path: str | Path, mode: str = "w", *, encoding: str | None = None, newline: str | None = None
) -> Iterator[IO[Any]]:
    """Open ``path`` for writing so that it appears only complete, or not at all.

    The data goes to a temp file in the same folder, is fsynced and renamed over ``path``
    when the block ends; an exception removes the temp file and leaves ``path`` as it was.
    Nesting two of these renames the inner file first (a sidecar before its CSV).

    Example:
        >>> with atomic_write("out/report.txt") as fh:
        ...     fh.write("done\\n")
    """
    if mode not in WRITE_MODES:
        raise ValueError(f"atomic_write mode must be one of {WRITE_MODES}, got {mode!r}")
    final = Path(path)
    fd, tmp = _create_temp(final, "")
    try:
        if mode == "wb":
            fh: IO[Any] = os.fdopen(fd, "wb")
        else:
            fh = os.fdopen(fd, "w", encoding=encoding, newline=newline)
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str, encoding: str | None = None) -> None:
    """Write a text file atomically (the same encoding and newlines as ``Path.write_text``)."""
    with atomic_write(path, "w", encoding=encoding) as fh:
        fh.write(text)


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """A temp path for a writer that wants a file name (``model.save``, ``savefig``, PIL).

    The temp file lies beside ``path`` and ends in ``suffix`` (default ``path``'s own, for
    writers that pick the format from it). When the block ends it gets the umask's mode,
    is fsynced and renamed over ``path``; an exception removes it instead.

    Example:
        >>> with atomic_path("plots/stats.png") as tmp:
        ...     fig.savefig(tmp)  # doctest: +SKIP
    """
    final = Path(path)
    fd, tmp = _create_temp(final, suffix)
    try:
        try:
            mode = os.fstat(fd).st_mode & 0o7777
        finally:
            os.close(fd)
        yield tmp
        os.chmod(tmp, mode)  # a writer that re-created the file may have set its own
        _fsync(tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def replace_dir(new: str | Path, out: str | Path) -> None:
    """Move the finished folder ``new`` to ``out``, replacing an old ``out`` only then.

    The old folder is moved aside first and deleted once the new one is in place; if the
    move fails, the old one is put back.
    """
    new, out = Path(new), Path(out)
    if not out.exists():
        os.replace(new, out)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
    try:
        os.replace(out, aside / "old")
        try:
            os.replace(new, out)
        except BaseException:
            os.replace(aside / "old", out)
            raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A not yet existing temp folder path beside ``path``; swapped in when the block ends.

    Write the whole folder at the yielded path; an exception removes it and leaves an old
    ``path`` untouched.

    Example:
        >>> with atomic_dir("serving/nails/1") as tmp:
        ...     archive.write_out(str(tmp))  # doctest: +SKIP
    """
    final = Path(path)
    check_folder_target(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    holder = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield holder / final.name
        replace_dir(holder / final.name, final)
    finally:
        shutil.rmtree(holder, ignore_errors=True)


def mark_dir(path: str | Path, kind: str) -> None:
    """Record in ``path`` that segbalance created it (``kind``: run, export, ...)."""
    write_text(Path(path) / MARKER, json.dumps({"created_by": "segbalance", "kind": kind}) + "\n")


def marked_kind(path: str | Path) -> str | None:
    """The kind segbalance recorded when it created the folder ``path``; None if it did not.

    A marker without a readable kind (an older or damaged one) counts as not ours.
    """
    try:
        value = json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    kind = value.get("kind") if isinstance(value, dict) else None
    return kind if isinstance(kind, str) else None


def is_marked(path: str | Path, kind: str) -> bool:
    """True when segbalance created the folder ``path`` as a ``kind`` (run, export, ...).

    The kind matters: an export must never replace a training run's folder.
    """
    return marked_kind(path) == kind


def check_replaceable(path: str | Path, flag: str, kind: str) -> None:
    """Refuse to replace ``path`` unless it is missing, empty, or a ``kind`` folder of ours.

    Raises:
        UserError: naming the folder (and what it is, when segbalance made it as another
            kind).
    """
    path = Path(path)
    if not path.is_dir() or not any(path.iterdir()) or is_marked(path, kind):
        return
    other = marked_kind(path)
    article = "an" if kind[:1] in "aeiou" else "a"
    what = (
        f"it is a segbalance {other} folder, not {article} {kind}"
        if other
        else f"segbalance did not create it (it has no {MARKER} file), so it may hold your files"
    )
    raise UserError(
        f"{flag} refuses to replace {path}: {what}. Delete or move it yourself, or choose "
        f"another {flag}"
    )


#: Stamped into every figure segbalance writes (PNG text, SVG/PDF creator), so that a
#: later run recognises the file as its own and may replace it.
PRODUCER_PREFIX = "segbalance "

# Where each figure format keeps the producer, and the bytes it turns into there.
_FIGURE_KEY = {"png": "Software", "svg": "Creator", "pdf": "Creator"}
_FIGURE_STAMP = {"svg": b"<dc:title>segbalance ", "pdf": b"/Creator (segbalance "}


def figure_metadata(fmt: str) -> dict[str, str]:
    """The ``savefig(metadata=...)`` that marks a ``fmt`` figure as segbalance's."""
    key = _FIGURE_KEY.get(fmt.lower().lstrip("."))
    return {key: f"{PRODUCER_PREFIX}{__version__}"} if key else {}


def _png_texts(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(keyword, text) of each tEXt chunk of a PNG, up to the image data."""
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind in (b"IDAT", b"IEND"):
            return  # matplotlib writes its text chunks before the pixels
        if kind == b"tEXt" and b"\0" in body:
            key, _, text = body.partition(b"\0")
            yield key, text
        pos += 12 + length


def is_our_figure(path: str | Path) -> bool:
    """True when ``path`` is a PNG/SVG/PDF whose metadata says segbalance wrote it."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    with open(path, "rb") as fh:
        data = fh.read()
    if fmt == "png":
        if not data.startswith(b"\x89PNG\r\n\x1a\n"):
            return False
        stamp = PRODUCER_PREFIX.encode()
        return any(k == b"Software" and t.startswith(stamp) for k, t in _png_texts(data))
    return fmt in _FIGURE_STAMP and _FIGURE_STAMP[fmt] in data


def json_object(path: str | Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when it is not one (or unreadable)."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def json_has_keys(path: str | Path, keys: Iterable[str]) -> bool:
    """True when ``path`` holds a JSON object with every key of ``keys``."""
    value = json_object(path)
    return value is not None and set(keys) <= set(value)


def csv_header(path: str | Path) -> tuple[str, ...]:
    """The first row of a CSV file (empty when it has none or is not text)."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            return tuple(next(csv.reader(fh), []))
    except (OSError, UnicodeDecodeError, csv.Error):
        return ()


def check_replaceable_file(
    path: str | Path, flag: str, what: str, recognise: Callable[[Path], bool]
) -> None:
    """Refuse, before any work, to replace a file segbalance did not write.

    A missing ``path`` passes (and a folder: the output checks refuse it with their own
    message); an existing file passes only when ``recognise`` says it is segbalance's
    earlier output of this kind (``what``, e.g. "an earlier stats JSON").

    Raises:
        UserError: naming ``flag``, the file, and to choose another path.
    """
    path = Path(path)
    if not os.path.lexists(path) or path.is_dir():
        return
    try:
        ours = path.is_file() and recognise(path)
    except (OSError, ValueError):  # unreadable or malformed: not recognisably ours
        ours = False
    if not ours:
        raise UserError(
            f"{flag} {path} exists and is not {what}; it is left as it is. Choose another "
            f"{flag} (or move the file away yourself)"
        )
