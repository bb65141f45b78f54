"""An embedded Postgres for the demo on a machine without one, from the `pgserver` package.

pgserver's wheel carries the Postgres binaries. `pgserver.get_server(pgdata)` runs initdb the
first time, starts the server (or finds it already running on that data directory) and stops it
when its last handle is cleaned up. The server listens on a Unix socket in the data directory
only, never on a TCP port, so it cannot clash with a server on 5432. Run as root, pgserver runs
Postgres as a system user `pgserver` (created with useradd when missing) and makes the
directories above the data directory traversable for it.

The data directory stays between runs (initdb costs seconds); the demo drops and creates its
database in it each time.
"""

from __future__ import annotations

import atexit
import contextlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from wechat_sandbox.process import StoppedOnExit

ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_PGDATA = ROOT / ".run" / "pgdata"
# pgserver's own record of the processes holding the server (see `_forget_dead_holders`).
_HOLDERS_FILE = ".handle_pids.json"


class EmbeddedPostgres(StoppedOnExit):
    """A running pgserver instance: `.uri(dbname)`, `.stop()`; also a context manager."""

    def __init__(self, server: Any, pgdata: Path) -> None:
        self._server = server
        self.pgdata = pgdata
        self._stopped = False

    @property
    def socket_dir(self) -> str:
        return str(self._server.get_postmaster_info().socket_dir)

    @property
    def pid(self) -> int | None:
        return self._server.get_pid()

    def uri(self, dbname: str = "postgres") -> str:
        """A libpq URI for `dbname` as user postgres over the server's Unix socket."""
        return f"postgresql://postgres@/{quote(dbname)}?host={quote(self.socket_dir, safe='/')}"

    def stop(self) -> None:
        """Stop the server (pg_ctl stop, waiting). Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        self._server.cleanup()
        # pgserver also registered that cleanup to run at exit, where it logs a line again; by
        # then whatever handled the logging may be closed (pytest's capture), and the line
        # comes out as a `--- Logging error ---` traceback. It is done: forget it.
        atexit.unregister(self._server._cleanup)
        # cleanup() leaves the server running while pgserver believes another process holds
        # it; nothing else of ours does, so make sure it is down.
        info = _postmaster(self.pgdata)
        if info is not None and info.is_running():
            import pgserver

            with contextlib.suppress(Exception):
                pgserver.pg_ctl(
                    ["-w", "-m", "fast", "stop"],
                    pgdata=self.pgdata,
                    user=self._server.system_user,
                    timeout=30,
                )

    def __repr__(self) -> str:
        return f"EmbeddedPostgres(pgdata={str(self.pgdata)!r}, pid={self.pid})"


def _postmaster(pgdata: Path) -> Any:
    from pgserver.utils import PostmasterInfo

    return PostmasterInfo.read_from_pgdata(pgdata)


def _forget_dead_holders(pgdata: Path) -> None:
    """Drop processes that no longer exist from pgserver's list of holders.

    pgserver stops the server only when the last holder lets go; a demo killed with SIGKILL
    stays in the list forever and would keep every later run from stopping the server.
    """
    import psutil

    holders = pgdata / _HOLDERS_FILE
    try:
        pids = json.loads(holders.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and psutil.pid_exists(pid)]
    if alive != pids:
        holders.write_text(json.dumps(alive))


def start_embedded_postgres(pgdata: Path = DEFAULT_PGDATA) -> EmbeddedPostgres:
    """Start (or reuse) the embedded server on `pgdata`; its `postgres` database answers."""
    import pgserver  # imported here: only the demo's fallback needs it

    pgdata = pgdata.expanduser().resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    if pgdata.exists():
        _forget_dead_holders(pgdata)
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    return EmbeddedPostgres(server, pgdata)
