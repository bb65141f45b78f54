"""The durable local queue of verified events the order database could not take at once.

One file an event: written under a temporary name, fsynced, renamed into place and the directory
fsynced, so that an event answered `success` survives a crash of the receiver or of the machine.
Replay records each file's event and removes the file only after the database committed it; an
event replayed twice (a crash between the commit and the removal) changes nothing the second
time (nontax.authorization_event's UNIQUE constraint), so nothing is lost and nothing applied
twice. One receiver process owns a spool directory (it holds an exclusive lock on it).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from wechat_nontax.receiver.events import AuthorizationEvent

SUFFIX = ".event.json"
log = logging.getLogger("wechat_nontax.receiver")


class SpoolBusy(RuntimeError):
    """Another receiver process owns this spool directory."""


class Spool:
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = open(self.dir / ".lock", "w")  # noqa: SIM115 - held for the process's life
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise SpoolBusy(f"another receiver owns the spool {self.dir}") from None
        for leftover in self.dir.glob("*.tmp"):  # a write cut short: never answered `success`
            leftover.unlink()

    def close(self) -> None:
        self._lock.close()

    def append(self, event: AuthorizationEvent) -> Path:
        """Keep `event` durably; returns once it is on disk."""
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}{SUFFIX}"
        tmp = self.dir / (name + ".tmp")
        data = json.dumps(event.as_json(), sort_keys=True).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        final = self.dir / name
        os.rename(tmp, final)
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return final

    def files(self) -> list[Path]:
        return sorted(self.dir.glob("*" + SUFFIX))

    def depth(self) -> int:
        return len(self.files())

    def replay(
        self, record: Callable[[AuthorizationEvent], str]
    ) -> list[tuple[AuthorizationEvent, str]]:
        """Record the kept events oldest first, removing each once recorded; stops at the first
        that fails (the database still away) and leaves it and the rest for the next replay."""
        done = []
        for path in self.files():
            try:
                event = AuthorizationEvent.from_json(json.loads(path.read_bytes()))
            except (ValueError, TypeError):
                # Not written by append (which renames only a whole, fsynced file): set aside
                # for a person rather than block every event behind it.
                path.rename(path.with_suffix(".unreadable"))
                log.error("spool file %s is unreadable: set aside as .unreadable", path.name)
                continue
            outcome = record(event)  # raises while the database is away
            path.unlink()
            done.append((event, outcome))
        return done
