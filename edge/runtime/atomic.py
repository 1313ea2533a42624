"""Writing a file so that a reader (or a restart after a crash or power cut) sees the old file or the
whole new one, never a part: write a temporary file beside it, flush it to disk, rename it over the
target, then flush the directory, which is what makes the rename itself survive a power cut
(docs/reliability.md). The one way every durable record, bundle file and checkpoint is written."""
from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", durable: bool = True,
                newline: str | None = None) -> Iterator[IO]:
    """An open temporary file that becomes `path` when the block ends without an error.

    `durable`: fsync the file before the rename and the directory after it. Without it the
    replacement is still all-or-nothing for readers, only not guaranteed to outlive a power cut.
    On an error the temporary file is removed and `path` is left as it was.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_file writes a new file ('wb' or 'w'), not {mode!r}")
    path = Path(path)
    # a unique name, created with the usual permissions (mkstemp would make it owner-only)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, mode, newline=newline) as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        sync_directory(path.parent)


def write_atomic(path: str | os.PathLike, data: bytes | str, durable: bool = True) -> None:
    """`data` as the whole content of `path` (text as UTF-8), replaced atomically."""
    with atomic_file(path, "w" if isinstance(data, str) else "wb", durable) as fh:
        fh.write(data)


def sync_directory(folder: str | os.PathLike) -> None:
    """fsync a directory so the renames and new names in it are on disk (a no-op where the system
    cannot open a directory, as on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
