"""What the order store's modules share: the status sets as SQL, the columns of an order, and
the statements prepared on a connection."""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras

from wechat_nontax.requests.contract import BLOCKS_ISSUING
from wechat_nontax.wechat.bill import BILL_FIELDS
from wechat_nontax.wechat.statuses import Status


def sql_list(statuses: Iterable[str]) -> str:
    # Status names are the enum's own constants, never input: safe to spell into SQL.
    return "(" + ", ".join(f"'{s}'" for s in sorted(statuses)) + ")"


DUE_SQL = sql_list(Status.DUE)

# Never sent again nor changed by a write-back, a reload or a reset.
SETTLED_SQL = sql_list(Status.SETTLED)

NEEDS_ATTENTION_SQL = sql_list(Status.NEEDS_ATTENTION)

# What a person's re-run may work on: due orders and those a person may have fixed.
WORKABLE_SQL = sql_list((Status.DUE | Status.NEEDS_ATTENTION) - Status.SETTLED)

ORDER_COLUMNS = ", ".join(BILL_FIELDS) + ", pdf_path"

# An order whose refusal is asked for (`bill_requests.BLOCKS_ISSUING`: pending, or ended
# without being carried out and not withdrawn) is not issued: the refusal was asked for to
# prevent exactly that. A probe of a small partial index per row (migration 0010).
REFUSAL_BLOCKS = (
    "EXISTS (SELECT 1 FROM nontax.bill_request r WHERE r.order_id = {table}.order_id "
    f"AND r.kind = 'refuse' AND r.status IN {sql_list(BLOCKS_ISSUING)})"
)

TIME_HAS_COME = "(not_before IS NULL OR not_before <= now())"


class OrderStoreError(RuntimeError):
    """The connection to the order database is gone: nothing more can be recorded over it."""


def is_connection_lost(exc: BaseException, conn: psycopg2.extensions.connection) -> bool:
    """The connection (or the server behind it) is gone or cannot take writes any more: a
    failover that left us on a read-only standby counts too; a new connection may help."""
    return bool(conn.closed) or isinstance(
        exc,
        psycopg2.OperationalError
        | psycopg2.InterfaceError
        | psycopg2.errors.ReadOnlySqlTransaction,
    )


@dataclass(frozen=True)
class PreparedStatement:
    """A statement with `%(name)s` parameters as PREPARE and EXECUTE: `$n` in the order the
    names first appear (`params`)."""

    name: str
    prepare: str
    execute: str
    params: tuple[str, ...]


_NAMED_PARAM = re.compile(r"%\((\w+)\)s")


@functools.lru_cache(maxsize=64)
def prepared_statement(sql: str) -> PreparedStatement:
    names: list[str] = []

    def positional(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    # psycopg2 reads `%%` as a literal `%` only when it formats; PREPARE is sent as it is.
    body = _NAMED_PARAM.sub(positional, sql).replace("%%", "%")
    name = "nontax_write_" + hashlib.sha256(sql.encode()).hexdigest()[:16]
    arguments = f" ({', '.join(['%s'] * len(names))})" if names else ""
    return PreparedStatement(
        name=name,
        prepare=f"PREPARE {name} AS {body}",
        execute=f"EXECUTE {name}{arguments}",
        params=tuple(names),
    )
