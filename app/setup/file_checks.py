"""How the download knows a file is right: the hash the Hub lists for it, and the record of the
cached files this app has hashed already (so a resumed download does not hash 50 GB again)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from app.setup.download_plan import RemoteFile
from engine import paths

log = logging.getLogger("canvas_chat.download")


def verified_record_path() -> Path:
    return paths.data_dir() / "verified-downloads.json"


class VerifiedFiles:
    """Which cached files this app has hashed already: {hash: [size, mtime_ns]}, in the data folder."""

    def __init__(self, path: Path):
        self.path = path
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            self._entries: dict[str, list[int]] = data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            self._entries = {}

    @staticmethod
    def _stamp(path: Path) -> list[int] | None:
        try:
            stat = path.stat()
        except OSError:
            return None
        return [stat.st_size, stat.st_mtime_ns]

    def covers(self, path: Path, remote: RemoteFile) -> bool:
        stamp = self._stamp(path)
        return stamp is not None and stamp[0] == remote.size and self._entries.get(remote.blob) == stamp

    def add(self, path: Path, remote: RemoteFile) -> None:
        stamp = self._stamp(path)
        if stamp is None:
            return
        self._entries[remote.blob] = stamp
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_suffix(".tmp")
            temporary.write_text(json.dumps(self._entries), encoding="utf-8")
            os.replace(temporary, self.path)
        except OSError as exc:
            log.warning("could not record verified file %s: %s", path, exc)


class FileDigest:
    """The hash the Hub lists for a file: sha256 for LFS files, the git blob sha1 otherwise."""

    def __init__(self, remote: RemoteFile):
        self.remote = remote
        self.reset()

    def reset(self) -> None:
        self.bytes = 0
        if self.remote.sha256:
            self._hash = hashlib.sha256()
        else:
            self._hash = hashlib.sha1(f"blob {self.remote.size}\0".encode())

    def update(self, data: bytes) -> None:
        self._hash.update(data)
        self.bytes += len(data)

    def matches(self) -> bool:
        expected = self.remote.sha256 or self.remote.git_oid
        return self._hash.hexdigest() == expected.lower()
