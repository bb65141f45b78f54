"""The parts of `make demo`, without an Airflow run: the bill PDF, the demo's orders and their
planted problems, the load of its JSON Lines, the verdict, and the choice of database."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import psycopg2
import pytest

from factories import make_order
from nontax_dev import bill_pdf, pg
from nontax_dev.airflow_run import orders_connection
from nontax_dev.demo.database import choose_database
from nontax_dev.demo.orders import VOIDED, DemoData, build_demo, demo_order_id, write_demo_files
from nontax_dev.demo.verdict import judge
from wechat_nontax.cli.load import load_lines, parse_line
from wechat_nontax.issuing.pdfs import read_pdf
from wechat_nontax.store.connection import connect_dsn
from wechat_nontax.store.orders import OrderStore
from wechat_nontax.wechat.errors import InvalidOrderError
from wechat_nontax.wechat.validation import check_pdf, validate_order
from wechat_sandbox.client import DEFAULT_CARD_ID

NOW = 1_780_000_000  # 2026-05-29, a fixed clock for the demo's data
PDFTOTEXT = shutil.which("pdftotext")
BILL = make_order(
    1,
    order_id="DEMO000042",
    fee=1_234_567,
    title="某市第一人民医院 门诊收费",
    billing_time=NOW - 3600,
    billing_no="0026000042",
    billing_code="35010126",
)


def _pdf_text(pdf: bytes, tmp_path: Path) -> str:
    path = tmp_path / "bill.pdf"
    path.write_bytes(pdf)
    done = subprocess.run(
        [PDFTOTEXT, "-layout", str(path), "-"], capture_output=True, text=True, check=True
    )
    return done.stdout


@pytest.fixture(params=["found", "cid"])
def font(request, monkeypatch):
    """Each font path: the CJK font found on this machine (maybe the CID one), and the CID one."""
    if request.param == "cid":
        monkeypatch.setenv(bill_pdf.FONT_ENV, "cid")
    else:
        monkeypatch.delenv(bill_pdf.FONT_ENV, raising=False)
    bill_pdf.bill_font.cache_clear()
    yield bill_pdf.bill_font()
    bill_pdf.bill_font.cache_clear()


# -- the bill PDF -------------------------------------------------------------------------------


def test_a_bill_pdf_is_a_pdf_the_pipeline_accepts(font):
    pdf = bill_pdf.render_bill_pdf(BILL)
    assert pdf.startswith(b"%PDF-")
    assert pdf.rstrip().endswith(b"%%EOF")
    assert 1_000 < len(pdf) < 200_000
    assert check_pdf(pdf) is None
    assert bill_pdf.render_bill_pdf(BILL) == pdf  # reproducible byte for byte


@pytest.mark.skipif(PDFTOTEXT is None, reason="pdftotext (poppler-utils) is not installed")
def test_a_bill_pdf_shows_the_bill_in_chinese(font, tmp_path):
    text = _pdf_text(bill_pdf.render_bill_pdf(BILL), tmp_path)
    for expected in (
        "非税收入一般缴款书（电子）",
        "票据号码：0026000042",
        "票据代码：35010126",
        "DEMO000042",
        "某市第一人民医院",
        "门诊收费",
        "12,345.67",
        "壹万贰仟叁佰肆拾伍元陆角柒分",
        # The date in the UTC+8 calendar: NOW - 3600 is 2026-05-29 03:26 there.
        "2026-05-29",
    ):
        assert expected in text, expected


def test_the_bill_date_is_read_in_utc8(tmp_path):
    if PDFTOTEXT is None:
        pytest.skip("pdftotext (poppler-utils) is not installed")
    # 2026-01-31 20:00 UTC is already 1 February in China.
    late = make_order(2, billing_time=1_769_889_600)
    assert "开票日期：2026-02-01" in _pdf_text(bill_pdf.render_bill_pdf(late), tmp_path)


@pytest.mark.parametrize(
    ("fen", "words"),
    [
        (1, "壹分"),
        (50, "伍角整"),
        (100, "壹元整"),
        (12_345, "壹佰贰拾叁元肆角伍分"),
        (120_005, "壹仟贰佰元零伍分"),
        (1_010, "壹拾元壹角整"),
        (10_000_001, "壹拾万元零壹分"),
        (100_050_000, "壹佰万零伍佰元整"),
        (1_000_000_000, "壹仟万元整"),
    ],
)
def test_amounts_in_capital_numerals(fen, words):
    assert bill_pdf.amount_in_words(fen) == words


def test_a_missing_font_file_is_an_error(monkeypatch, tmp_path):
    not_a_font = tmp_path / "font.ttf"
    not_a_font.write_bytes(b"nope")
    monkeypatch.setenv(bill_pdf.FONT_ENV, str(not_a_font))
    bill_pdf.bill_font.cache_clear()
    try:
        with pytest.raises(ValueError, match="not a TrueType font"):
            bill_pdf.bill_font()
    finally:
        bill_pdf.bill_font.cache_clear()


# -- the demo's orders --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data() -> DemoData:
    return build_demo(NOW)


def test_two_hundred_orders_with_unique_ids_and_billing_pairs(data):
    orders = [d.order for d in data.orders]
    assert len(orders) == 200
    assert [o.order_id for o in orders[:2]] == ["DEMO000001", "DEMO000002"]
    assert len({o.order_id for o in orders}) == 200
    assert len({(o.billing_no, o.billing_code) for o in orders}) == 200
    assert len({o.title for o in orders}) >= 5
    assert all(NOW - 30 * 86_400 <= o.billing_time < NOW for o in orders)
    assert build_demo(NOW) == data  # the same clock gives the same orders


def test_the_good_orders_and_the_wechat_side_problems_pass_validation(data):
    planted = Counter(d.planted.kind for d in data.planted)
    assert len(data.good) == 193 and len(planted) == 7
    for item in data.orders:
        if item.planted is None or item.planted.errcode is not None:
            assert validate_order(item.order, now=NOW) == [], item.order_id
    unknown = next(d.order for d in data.planted if d.planted.kind == "unknown_card")
    assert unknown.card_id != DEFAULT_CARD_ID


def test_the_pdf_problems_are_caught_where_the_pipeline_reads_the_pdf(data, tmp_path, monkeypatch):
    monkeypatch.setattr(bill_pdf, "render_bill_pdf", lambda order: b"%PDF-1.4\n%%EOF\n")
    root = tmp_path / "pdfs"
    written = write_demo_files(data, orders_file=tmp_path / "orders.jsonl", pdf_root=root)
    assert written == 199  # every order but the one whose PDF is missing
    for item in data.orders:
        kind = item.planted.kind if item.planted else None
        if kind == "outside_root":
            assert (root / item.order.pdf_path).resolve().is_file()  # there, but not allowed
            with pytest.raises(InvalidOrderError, match=item.planted.reason_has):
                read_pdf(str(root), item.order.pdf_path, max_bytes=2**21)
            continue
        problem = check_pdf(read_pdf(str(root), item.order.pdf_path, max_bytes=2**21))
        if kind in ("not_pdf", "missing_pdf"):
            assert problem is not None and item.planted.reason_has in str(problem)
        else:
            assert problem is None, item.order_id
    lines = (tmp_path / "orders.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 204
    assert json.loads(lines[0])["order_id"] == "DEMO000001"


def test_the_unloadable_lines_fail_for_their_reasons(data):
    field_errors = [u for u in data.unloadable if "already used" not in u.reason_has]
    assert len(field_errors) == 3
    for bad in field_errors:
        with pytest.raises(ValueError, match=bad.reason_has):
            parse_line(json.dumps(bad.record, ensure_ascii=False), now=NOW)
    (duplicate,) = [u for u in data.unloadable if u not in field_errors]
    order = parse_line(json.dumps(duplicate.record, ensure_ascii=False), now=NOW)
    pairs = {(d.order.billing_no, d.order.billing_code) for d in data.orders}
    assert (order.billing_no, order.billing_code) in pairs


def test_the_demo_file_loads_with_a_line_number_for_each_refused_line(data, orders_db):
    store = OrderStore(connect_dsn(orders_db))
    try:
        report = load_lines(store, [text for text, _ in data.lines()], now=NOW)
        assert (report.lines, report.inserted) == (204, 200)
        expected = data.expected_rejections()
        assert [n for n, _ in report.rejected] == [n for n, _ in expected] == [26, 77, 128, 179]
        for (_, reason), (_, bad) in zip(report.rejected, expected, strict=True):
            assert bad.reason_has in reason
        assert store.count_by_status() == {"authorized": 200}
    finally:
        store.close()


# -- the verdict --------------------------------------------------------------------------------


def _perfect_outcome(data: DemoData):
    rows, bills, sandbox_orders = {}, [], {}
    for item in data.orders:
        oid, planted = item.order_id, item.planted
        if planted is None:
            status = "cancelled" if oid == demo_order_id(VOIDED) else "inserted"
            rows[oid] = {"status": status, "code": f"C{oid}", "reason": None}
            bills.append({"order_id": oid, "code": f"C{oid}"})
            sandbox_orders[oid] = {"successes": 1}
        else:
            rows[oid] = {
                "status": planted.status,
                "reason": f"because: {planted.reason_has or 'WeChat said so'}",
                "last_errcode": planted.errcode,
            }
    rejected = [(n, f"x {bad.reason_has} y") for n, bad in data.expected_rejections()]
    return rejected, rows, bills, sandbox_orders


def test_the_verdict_passes_the_planned_outcome(data):
    rejected, rows, bills, sandbox_orders = _perfect_outcome(data)
    reimburse = {demo_order_id(VOIDED): "INVOICE_REIMBURSE_CANCEL"}
    verdict = judge(data, rejected, rows, bills, sandbox_orders, "failed", reimburse)
    assert verdict.problems == []


def test_the_verdict_catches_a_bill_inserted_twice_and_a_planted_order_gone_wrong(data):
    rejected, rows, bills, sandbox_orders = _perfect_outcome(data)
    bills.append({"order_id": "DEMO000001", "code": "CDEMO000001"})
    rows["DEMO000142"] = {"status": "failed", "reason": "x", "last_errcode": 72035}
    rejected = rejected[1:]
    verdict = judge(data, rejected, rows, bills, sandbox_orders, None, reimburse={})
    text = "\n".join(verdict.problems)
    assert "DEMO000180: voided, but its bill is None in the sandbox" in text
    assert "DEMO000001: status 'inserted', 2 bill(s)" in text
    assert "DEMO000142 (WeChat refuses the order for good)" in text
    assert "line 26 (a fee of 0) was not refused" in text
    assert "the DAG run did not happen" in text


# -- the database -------------------------------------------------------------------------------


def test_connections_for_airflow_keep_a_socket_directory_and_hide_no_field():
    socket = orders_connection("postgresql://postgres@/nontax_demo?host=/run/pg%20data")
    assert json.loads(socket) == {
        "conn_type": "postgres",
        "host": "/run/pg data",
        "port": 5432,
        "login": "postgres",
        "schema": "nontax_demo",
    }
    tcp = json.loads(orders_connection("postgresql://u:s3cret@db:6543/x?sslmode=require"))
    assert (tcp["host"], tcp["port"], tcp["password"], tcp["extra"]) == (
        "db", 6543, "s3cret", {"sslmode": "require"},
    )  # fmt: skip
    assert pg.describe_dsn("postgresql://u:s3cret@db:6543/x") == "u@db:6543/x"


def test_nontax_demo_db_is_used_as_it_is(orders_db, monkeypatch):
    monkeypatch.setenv("NONTAX_DEMO_DB", orders_db)
    with contextlib.ExitStack() as stack:
        chosen = choose_database(stack, print)
    assert chosen.dsn == orders_db
    assert "NONTAX_DEMO_DB" in chosen.where


def test_a_fresh_database_replaces_an_old_one(orders_db):
    server = orders_db.rpartition("/")[0] + "/postgres"
    name = f"nontax_demo_test_{uuid.uuid4().hex[:8]}"
    dsn = pg.fresh_database(server, name)
    try:
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE leftover (id int)")
        conn.close()
        dsn = pg.fresh_database(server, name)  # drops it (even while connected) and creates
        conn = psycopg2.connect(dsn)
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('leftover')")
            assert cur.fetchone() == (None,)
        conn.close()
    finally:
        admin = psycopg2.connect(server)
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_the_embedded_postgres_starts_answers_and_stops(tmp_path):
    pytest.importorskip("pgserver")
    from nontax_dev.embedded_pg import start_embedded_postgres

    started = time.monotonic()
    try:
        embedded = start_embedded_postgres(tmp_path / "pgdata")
    except Exception as exc:  # e.g. no useradd in a container running as root
        pytest.skip(f"pgserver cannot start here: {exc}")
    with embedded:
        dsn = pg.fresh_database(embedded.uri(), "nontax_demo")
        conn = psycopg2.connect(dsn)
        with conn.cursor() as cur:
            cur.execute("SELECT current_database()")
            assert cur.fetchone() == ("nontax_demo",)
        conn.close()
        pid = embedded.pid
    assert time.monotonic() - started < 60
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(embedded.uri(), connect_timeout=2)
    assert pid is not None and _gone(pid)


def _gone(pid: int) -> bool:
    """The process has exited (a zombie waiting to be reaped counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True
