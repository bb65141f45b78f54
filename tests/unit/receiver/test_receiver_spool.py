"""The spool: kept durably, replayed oldest first, each file removed only once recorded."""

from __future__ import annotations

import pytest

from wechat_nontax.receiver.events import AuthorizationEvent
from wechat_nontax.receiver.spool import Spool, SpoolBusy


def _event(i):
    return AuthorizationEvent(f"order-{i}", True, "wx", f"o-{i}", "gh", "web", 1_800_000_000 + i)


def test_replay_records_oldest_first_and_keeps_what_failed(tmp_path):
    spool = Spool(tmp_path)
    for i in range(3):
        spool.append(_event(i))
    assert spool.depth() == 3
    away_once = {"order-1"}

    def record(event):
        if event.order_id in away_once:
            away_once.discard(event.order_id)
            raise ConnectionError("database away")
        return "ok"

    with pytest.raises(ConnectionError):
        spool.replay(record)
    assert spool.depth() == 2  # order-0 recorded and removed; order-1 and order-2 kept
    done = spool.replay(record)
    assert [e.order_id for e, _ in done] == ["order-1", "order-2"]
    assert spool.depth() == 0
    spool.close()


def test_a_spool_survives_its_process_and_belongs_to_one(tmp_path):
    first = Spool(tmp_path)
    first.append(_event(7))
    with pytest.raises(SpoolBusy):
        Spool(tmp_path)
    first.close()
    (tmp_path / "cut-short.event.json.tmp").write_text("{")  # a write never answered
    second = Spool(tmp_path)
    assert [e.order_id for e, _ in second.replay(lambda e: "ok")] == ["order-7"]
    assert not list(tmp_path.glob("*.tmp"))
    second.close()


def test_an_unreadable_spool_file_is_set_aside_and_blocks_nothing(tmp_path):
    spool = Spool(tmp_path)
    (tmp_path / "00000000000000000001-edited.event.json").write_text('{"order_id": ')
    spool.append(_event(3))
    assert [e.order_id for e, _ in spool.replay(lambda e: "ok")] == ["order-3"]
    assert spool.depth() == 0
    assert [p.name for p in tmp_path.glob("*.unreadable")] == [
        "00000000000000000001-edited.event.unreadable"
    ]
    spool.close()
