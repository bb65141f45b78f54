"""The event receiver as WeChat meets it: a real `nontax receiver` process over HTTP, the
sandbox's pusher on WeChat's side, the real order database. Each bad request is refused and
changes no order; a good event is recorded once however often it arrives, before or after its
order is loaded; the secrets never reach the receiver's log."""

from __future__ import annotations

import base64
import http.client
import os
import secrets
import subprocess
import sys
import time
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
import requests

from factories import make_order
from nontax_dev.airflow_run import ROOT
from nontax_dev.receiver_process import CallbackSecrets, start_receiver
from wechat_sandbox.client import DEFAULT_SECRET
from wechat_sandbox.pusher import authorization_xml

DB_PASSWORD = "db-secret-" + secrets.token_hex(6)  # trust auth ignores it; the log must too


def _aes_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()[:43]


SECRETS = CallbackSecrets(
    token="cb-token-" + secrets.token_hex(8),
    appid="wx-unit-receiver",
    encoding_aes_key=_aes_key(),
    previous_encoding_aes_key=_aes_key(),
)


def with_password(uri: str, password: str) -> str:
    parts = urlsplit(uri)
    netloc = (
        f"{parts.username or 'postgres'}:{quote(password)}@{parts.hostname}:{parts.port or 5432}"
    )
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture(scope="module")
def receiver(orders_db_uri, tmp_path_factory):
    home = tmp_path_factory.mktemp("receiver")
    proc = start_receiver(
        with_password(orders_db_uri, DB_PASSWORD), SECRETS,
        spool_dir=home / "spool", log_path=home / "receiver.log",
    )  # fmt: skip
    yield proc
    proc.stop()
    log = proc.log_text()
    for secret in (SECRETS.token, SECRETS.encoding_aes_key, SECRETS.previous_encoding_aes_key,
                   DB_PASSWORD):  # fmt: skip
        assert secret not in log


@pytest.fixture
def pusher(receiver):
    pusher = receiver.pusher(retry_delay_s=0.1)
    yield pusher
    pusher.close()


def load_unauthorized(cur, n: int) -> str:
    """An order loaded before its payer authorised (the trigger applies any event kept for it)."""
    order = make_order(n)
    cur.execute(
        "INSERT INTO nontax.bill_order (order_id, card_id, appid, fee, title, billing_time, "
        "billing_no, billing_code, pdf_path, status) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 'unauthorized')",
        (order.order_id, order.card_id, order.appid, order.fee, order.title, order.billing_time,
         order.billing_no, order.billing_code, order.pdf_path),
    )  # fmt: skip
    return order.order_id


def order_status(cur, order_id: str) -> str | None:
    cur.execute("SELECT status FROM nontax.bill_order WHERE order_id = %s", (order_id,))
    row = cur.fetchone()
    return row and row[0]


def events(cur) -> list[tuple]:
    cur.execute(
        "SELECT order_id, authorized, openid, applied_at IS NOT NULL, outcome "
        "FROM nontax.authorization_event ORDER BY event_id"
    )
    return cur.fetchall()


def test_the_url_check_answers_echostr_only_to_the_token(receiver, pusher):
    assert pusher.url_check("abc123").text == "abc123"
    refused = pusher.url_check("abc123", token="another-token")
    assert refused.status_code == 403 and "abc123" not in refused.text


def test_an_authorisation_makes_its_order_due_and_a_refusal_declines_it(receiver, pusher, cur):
    yes, no = load_unauthorized(cur, 1), load_unauthorized(cur, 2)
    assert pusher.authorize(yes, openid="o-yes").delivered
    assert pusher.authorize(no, authorized=False, openid="o-no").delivered
    assert (order_status(cur, yes), order_status(cur, no)) == ("authorized", "declined")
    cur.execute("SELECT openid FROM nontax.authorization_event WHERE order_id = %s", (yes,))
    assert cur.fetchone() == ("o-yes",)
    assert f"event of order {yes} recorded: authorized: due now" in receiver.log_text()


def test_wxjava_names_authorizeappid_and_lowercase_source_are_taken(receiver, pusher, cur):
    order_id = load_unauthorized(cur, 3)
    xml = authorization_xml(order_id, appid=SECRETS.appid, appid_field="AuthorizeAppId",
                            source="app")  # fmt: skip
    assert pusher.push(xml).delivered
    cur.execute("SELECT appid, source FROM nontax.authorization_event WHERE order_id = %s",
                (order_id,))  # fmt: skip
    assert cur.fetchone() == (SECRETS.appid, "app")
    assert order_status(cur, order_id) == "authorized"


def test_the_same_event_three_times_is_applied_once(receiver, pusher, cur):
    order_id = load_unauthorized(cur, 4)
    xml = authorization_xml(order_id, appid=SECRETS.appid, create_time=int(time.time()))
    answers = [pusher.push(xml) for _ in range(3)]  # each freshly signed, as WeChat's retries
    assert all(a.delivered for a in answers)
    assert events(cur) == [(order_id, True, "o-payer", True, "authorized: due now")]
    cur.execute(
        "SELECT count(*) FROM nontax.bill_attempt WHERE order_id = %s AND step = 'payer'",
        (order_id,),
    )
    assert cur.fetchone() == (1,)
    assert receiver.log_text().count(f"order {order_id} recorded: no change: the same event") >= 2


def test_an_event_before_its_order_is_kept_and_applied_by_the_load(receiver, pusher, cur):
    order_id = make_order(5).order_id
    assert pusher.authorize(order_id).delivered
    assert order_status(cur, order_id) is None
    assert events(cur) == [(order_id, True, "o-payer", False, None)]
    load_unauthorized(cur, 5)
    assert order_status(cur, order_id) == "authorized"
    assert events(cur) == [(order_id, True, "o-payer", True, "authorized: due now")]


@pytest.mark.parametrize(
    ("status", "extra"),
    [
        ("inserted", "code = 'c-1', openid = 'o', inserted_at = now()"),
        ("refused", "reason = 'refused by the unit'"),
        ("cancelled", "reason = 'voided', code = 'c-2', openid = 'o', inserted_at = now()"),
        ("declined", "reason = 'the payer declined the authorisation in WeChat'"),
    ],
)
def test_an_event_for_a_finished_order_changes_nothing(receiver, pusher, cur, status, extra):
    order_id = load_unauthorized(cur, 6)
    cur.execute(
        f"UPDATE nontax.bill_order SET status = %s, {extra} WHERE order_id = %s",
        (status, order_id),
    )
    cur.execute("SELECT * FROM nontax.bill_order WHERE order_id = %s", (order_id,))
    before = cur.fetchone()
    assert pusher.authorize(order_id).delivered
    assert pusher.authorize(order_id, authorized=False, create_time=int(time.time()) + 1).delivered
    cur.execute("SELECT * FROM nontax.bill_order WHERE order_id = %s", (order_id,))
    assert cur.fetchone() == before
    assert [e[4] for e in events(cur)] == [f"no change: the order is {status}"] * 2


@pytest.mark.parametrize(
    ("forgery", "status", "reason"),
    [
        ("unsigned", 401, "unsigned"),
        ("mis_signed", 403, "mis-signed"),
        ("replayed", 403, "replayed or stale"),
        ("undecryptable", 400, "undecryptable"),
        ("wrong_key", 400, "undecryptable"),
        ("wrong_appid", 403, "wrong appid"),
        ("oversized", 413, "oversized"),
        ("not_xml", 400, "not XML"),
        ("doctype", 400, "DOCTYPE"),
        ("no_order_id", 400, "unknown event shape"),
    ],
)
def test_each_bad_request_is_refused_logged_and_changes_no_order(
    receiver, pusher, cur, forgery, status, reason
):
    order_id = load_unauthorized(cur, 7)
    answer = pusher.push(authorization_xml(order_id, appid=SECRETS.appid), forgery=forgery)
    assert (answer.status, answer.tries) == (status, 1)
    assert order_status(cur, order_id) == "unauthorized"
    assert events(cur) == []
    lines = [line for line in receiver.log_text().splitlines() if f"refused {status} POST" in line]
    assert any(reason in line for line in lines), lines[-3:]


def test_a_body_over_the_limit_is_refused_without_being_read(receiver):
    # Declared too large: refused on the header. Streamed without a length: cut at the limit.
    conn = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=5)
    conn.putrequest("POST", urlsplit(receiver.url).path)
    conn.putheader("Content-Length", "10000000")
    conn.endheaders()
    conn.send(b"<xml>")  # the rest is never sent: the answer must not wait for it
    declared = conn.getresponse()
    conn.close()
    assert declared.status == 413

    def chunks():
        for _ in range(200):
            yield b"<xml>" + b"y" * 4096

    streamed = requests.post(receiver.url, data=chunks(), timeout=5)
    assert streamed.status_code == 413


def test_a_message_signed_for_the_previous_aes_key_is_taken_during_a_rotation(receiver, cur):
    order_id = load_unauthorized(cur, 8)
    old = CallbackSecrets(SECRETS.token, SECRETS.appid, SECRETS.previous_encoding_aes_key)
    pusher = type(receiver.pusher())(
        receiver.url, token=old.token, appid=old.appid, encoding_aes_key=old.encoding_aes_key
    )
    assert pusher.authorize(order_id).delivered
    assert order_status(cur, order_id) == "authorized"


def test_other_events_are_answered_success_and_logged_as_ignored(receiver, pusher, cur):
    xml = (
        b"<xml><ToUserName>gh</ToUserName><FromUserName>o</FromUserName><CreateTime>1</CreateTime>"
        b"<MsgType>event</MsgType><Event>update_invoice_status</Event>"
        b"<Status>INVOICE_REIMBURSE_INIT</Status><CardId>c</CardId><Code>1</Code></xml>"
    )
    assert pusher.push(xml).delivered
    assert events(cur) == []
    assert "ignored update_invoice_status" in receiver.log_text()


def test_health_says_up_with_the_database_and_an_empty_spool(receiver):
    assert receiver.health() == {"status": "up", "database": True, "spool_depth": 0}


def test_the_pusher_command_pushes_a_payers_answer_as_env_sh_names_the_receiver(receiver, cur):
    order_id = load_unauthorized(cur, 9)
    env = {
        **os.environ,
        "NONTAX_STACK_RECEIVER_URL": receiver.url,
        "AIRFLOW_CONN_WECHAT_NONTAX_CALLBACK": SECRETS.connection(),
        "PYTHONPATH": str(ROOT / "include"),
    }
    command = [sys.executable, "-m", "wechat_sandbox.pusher", order_id, "--declined"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "HTTP 200 'success' after 1 tries" in done.stdout
    assert order_status(cur, order_id) == "declined"
    forged = subprocess.run(
        [*command, "--forgery", "mis_signed"], env=env, capture_output=True, text=True, timeout=60
    )
    assert forged.returncode == 1 and "HTTP 403" in forged.stdout


def test_no_secret_reaches_the_receivers_log(receiver, pusher, cur):
    """After genuine, forged and URL-check requests (this module's tests and these): neither the
    callback token, either EncodingAESKey, the database password nor the WeChat app secret."""
    order_id = load_unauthorized(cur, 10)
    assert pusher.authorize(order_id).delivered
    for forgery in ("mis_signed", "wrong_key", "doctype"):
        assert pusher.push(authorization_xml(order_id), forgery=forgery).status >= 400
    pusher.url_check()
    log = receiver.log_text()
    assert "refused" in log and "recorded" in log
    for secret in (SECRETS.token, SECRETS.encoding_aes_key, SECRETS.previous_encoding_aes_key,
                   DB_PASSWORD, DEFAULT_SECRET):  # fmt: skip
        assert secret not in log


def test_the_receiver_never_imports_airflow():
    """It runs apart from Airflow (its own process, its own image service): importing the SDK
    would cost seconds at start and tie it to Airflow's configuration."""
    code = (
        "import sys, wechat_nontax.cli.main, wechat_nontax.receiver.serve, "
        "wechat_nontax.receiver.app; "
        "print(sorted(m for m in sys.modules if m.startswith('airflow')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr
