"""What a stack keeps in its state directory, for its owner only: `stack.json` (the record
`down` works from, from any process) and `secrets.json` (made once, kept across `up`s)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nontax_dev.stack.processes import Proc


@dataclass
class StackState:
    """What `stack.json` records about a stack: enough for `down` from another process."""

    stack_id: str
    url: str
    state_dir: str
    procs: list[Proc] = field(default_factory=list)
    pg_server: str | None = None  # admin DSN of the server used (no password stored if none)
    embedded_pgdata: str | None = None  # set when the stack started an embedded server
    created_databases: list[str] = field(default_factory=list)
    drop_databases_on_down: bool = False
    sandbox_url: str | None = None
    receiver_url: str | None = None  # the callback URL of the stack's receiver
    orders_db: str | None = None  # described, never with a password
    meta_db: str | None = None
    pdf_root: str | None = None
    status: str = "starting"
    broker: str | None = None  # Celery: the Redis server, and the prefix of the stack's keys
    broker_prefix: str | None = None

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        write_private(tmp, json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> StackState | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        data["procs"] = [Proc(**p) for p in data.get("procs", [])]
        return cls(**data)


@dataclass
class Secrets:
    jwt_secret: str
    api_secret_key: str
    fernet_key: str
    admin_password: str

    @classmethod
    def load_or_create(cls, path: Path) -> Secrets:
        """Generated once per state directory, then reused by every `up` of it."""
        with contextlib.suppress(OSError, ValueError, TypeError):
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        alphabet = "abcdefghkmnpqrstuvwxyzABCDEFGHKMNPQRSTUVWXYZ23456789"
        made = cls(
            jwt_secret=secrets.token_urlsafe(48),
            api_secret_key=secrets.token_urlsafe(48),
            fernet_key=base64.urlsafe_b64encode(os.urandom(32)).decode(),
            admin_password="".join(secrets.choice(alphabet) for _ in range(16)),
        )
        write_private(path, json.dumps(asdict(made)))
        return made


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read, 0600 from the moment it exists (a write, then a
    chmod, leaves it readable by everyone in between; an old file keeps its mode on truncate)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


def private_dir(path: Path) -> None:
    """The stack's state directory: secrets, logs and Airflow's home, for its owner only."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
