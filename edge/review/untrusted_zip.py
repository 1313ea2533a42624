"""Reading a zip archive that came from outside, refusing anything a well-made archive would not hold.

Nothing is extracted to disk. Member names must be plain relative paths (no
absolute paths, drive letters, backslashes, `..` or empty parts, no links, no
duplicates); sizes are capped as declared and again while reading, so a member
that lies about its size is caught too.
"""
from __future__ import annotations

import hashlib
import lzma
import stat
import zipfile
import zlib
from pathlib import Path

from edge.review import ReviewError

MAX_MEMBERS = 100_000
MAX_MEMBER_BYTES = 64 << 20
MAX_TOTAL_BYTES = 4 << 30
_CHUNK = 1 << 20
# What zipfile raises on a damaged archive: bad records, a damaged stream, an unknown version or method.
_DAMAGED = (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, zlib.error, lzma.LZMAError)


class UntrustedZip:
    def __init__(self, path: Path, max_member_bytes: int = MAX_MEMBER_BYTES):
        self.path = Path(path)
        self.max_member_bytes = max_member_bytes
        try:
            self._zf = zipfile.ZipFile(self.path)
        except _DAMAGED as exc:
            raise ReviewError(f"{self.path} is not a readable zip archive ({exc})") from None
        try:
            self.members = self._check_members()
        except ReviewError:
            self._zf.close()
            raise

    def _check_members(self) -> dict[str, zipfile.ZipInfo]:
        infos = self._zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise ReviewError(f"{self.path} holds {len(infos)} members, more than {MAX_MEMBERS}")
        members: dict[str, zipfile.ZipInfo] = {}
        total = 0
        for info in infos:
            name = info.filename
            if not _is_plain_relative(name):
                raise ReviewError(f"{self.path} is refused: member {name!r} is not a plain relative path")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise ReviewError(f"{self.path} is refused: member {name!r} is a link")
            if info.flag_bits & 0x1:
                raise ReviewError(f"{self.path} is refused: member {name!r} is encrypted")
            if info.is_dir():
                continue
            if name in members:
                raise ReviewError(f"{self.path} is refused: member {name!r} appears twice")
            if info.file_size > self.max_member_bytes:
                raise ReviewError(f"{self.path} is refused: member {name!r} is {info.file_size} bytes, "
                                  f"over the {self.max_member_bytes}-byte limit")
            total += info.file_size
            members[name] = info
        if total > MAX_TOTAL_BYTES:
            raise ReviewError(f"{self.path} is refused: it unpacks to {total} bytes, over {MAX_TOTAL_BYTES}")
        return members

    def read(self, name: str, limit: int | None = None) -> bytes:
        """The member's bytes, refusing more than `limit` (default: the member limit) whatever the header says."""
        limit = self.max_member_bytes if limit is None else limit
        info = self.members[name]
        if info.file_size > limit:
            raise ReviewError(f"{self.path} is refused: member {name!r} is over the {limit}-byte limit")
        try:
            with self._zf.open(info) as fh:
                data = fh.read(limit + 1)
        except _DAMAGED as exc:
            raise ReviewError(f"{self.path} is refused: member {name!r} cannot be read ({exc})") from None
        if len(data) > limit:
            raise ReviewError(f"{self.path} is refused: member {name!r} unpacks to more than {limit} bytes")
        return data

    def sha256(self, name: str) -> str:
        return hashlib.sha256(self.read(name)).hexdigest()

    def close(self) -> None:
        self._zf.close()

    def __enter__(self) -> "UntrustedZip":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_plain_relative(name: str) -> bool:
    if not name or "\\" in name or "\x00" in name or name.startswith("/") or ":" in name:
        return False
    parts = name.rstrip("/").split("/")
    return all(p not in ("", ".", "..") for p in parts)
