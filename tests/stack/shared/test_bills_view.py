"""The Bills view on a real api-server: the shared `make up` stack (conftest.py: free
ports, databases of its own, emptied for this module), with SimpleAuthManager users `admin`
(admin) and `viewer` (viewer). What the person on duty sees and does, and what nobody else may:
- no login: 401 on every route; a viewer reads, and gets 403 on every action (its confirmation
  page too) and changes nothing; a POST from another origin is refused and changes nothing;
- the overview lists the red orders with their reasons, filters and searches; an order's page
  shows its history and links to its run; a hostile title and reason are escaped; no secret;
- make due again: the order is due with a history row naming the Airflow user; issue now: a run
  with params {"order_ids": [id]}, recorded in the history with the user, that inserts it;
- a headless Chromium logs in, opens Browse -> Bills, finds a red order with its reason, opens
  it and makes it due again (screenshots in artifacts/bills-*.png).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, urlsplit

import psycopg2
import pytest
import requests

from factories import make_order, write_pdf
from nontax_dev.airflow_api import DAG_ID, AirflowApi
from nontax_dev.airflow_run import ROOT
from nontax_dev.stack.stack import Stack
from stack_helpers import logged_in_page
from wechat_nontax.store.connection import connect_dsn
from wechat_nontax.store.orders import OrderStore

pytestmark = pytest.mark.e2e

ARTIFACTS = ROOT / "artifacts"
HOSTILE_TITLE = '<script>alert("title")</script>门诊<b>收费</b>'
HOSTILE_REASON = '<script>alert("reason")</script> & <img src=x onerror=alert(1)>'
GOOD, RED_A, RED_B, HOSTILE = 1, 2, 3, 4  # order numbers (make_order)
REQUESTS_DAG = "nontax_requests"


def oid(n: int) -> str:
    return make_order(n).order_id


@dataclass
class Desk:
    stack: Stack
    store: OrderStore
    admin: requests.Session
    viewer: requests.Session
    admin_token: str
    first_run: str

    @property
    def url(self) -> str:
        return self.stack.url

    def same_origin(self) -> dict[str, str]:
        return {"Origin": self.url}


def _session(stack: Stack, username: str, password: str) -> tuple[requests.Session, str]:
    answer = requests.post(
        f"{stack.url}/auth/token", json={"username": username, "password": password}, timeout=30
    )
    assert answer.status_code in (200, 201), answer.text
    token = answer.json()["access_token"]
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    return session, token


@pytest.fixture(scope="module")
def desk(stack: Stack) -> Iterator[Desk]:
    """Four orders and one real run: GOOD is inserted; RED_A, RED_B and HOSTILE have no PDF and
    end `invalid` with the run's reason; HOSTILE's reason is then replaced by a hostile one."""
    stack.api.wait_idle(timeout=120)
    store = OrderStore(connect_dsn(stack.orders_dsn))
    orders = [make_order(n) for n in (GOOD, RED_A, RED_B)]
    orders.append(make_order(HOSTILE, title=HOSTILE_TITLE))
    write_pdf(stack.pdf_root, orders[0])
    store.upsert_orders(orders)
    run_id = stack.api.trigger({})
    run = stack.api.wait_run(run_id, timeout=300)
    assert run["state"] == "failed"  # three orders need a person
    for n in (RED_A, RED_B, HOSTILE):
        assert store.get_row(oid(n))["status"] == "invalid"
    with psycopg2.connect(stack.orders_dsn) as conn, conn.cursor() as cur:  # the test's own
        cur.execute(
            "UPDATE nontax.bill_order SET reason = %s, updated_at = now() WHERE order_id = %s",
            (HOSTILE_REASON, oid(HOSTILE)),
        )
    passwords = json.loads((stack.config.home / "simple_auth_manager_passwords.json").read_text())
    admin, admin_token = _session(stack, "admin", stack.password)
    viewer, _ = _session(stack, "viewer", passwords["viewer"])
    try:
        yield Desk(stack, store, admin, viewer, admin_token, run_id)
    finally:
        store.close()
        admin.close()
        viewer.close()


def _routes(order_id: str) -> list[tuple[str, str]]:
    return [
        ("GET", "/bills/"),
        ("GET", f"/bills/order?id={order_id}"),
        ("GET", f"/bills/reset?id={order_id}"),
        ("GET", f"/bills/issue?id={order_id}"),
        ("GET", f"/bills/refuse?id={order_id}"),
        ("GET", f"/bills/void?id={order_id}"),
        ("POST", "/bills/reset"),
        ("POST", "/bills/issue"),
        ("POST", "/bills/refuse"),
        ("POST", "/bills/void"),
    ]


def test_without_login_every_route_answers_401(desk: Desk):
    for method, path in _routes(oid(RED_A)):
        answer = requests.request(
            method, f"{desk.url}{path}", data={"order_id": oid(RED_A), "reason": "x"},
            headers=desk.same_origin(), timeout=30, allow_redirects=False,
        )  # fmt: skip
        assert answer.status_code == 401, (method, path, answer.status_code, answer.text)
    # A forged cookie is no login either.
    answer = requests.get(f"{desk.url}/bills/", cookies={"_token": "forged"}, timeout=30)
    assert answer.status_code in (401, 403)
    assert desk.store.get_row(oid(RED_A))["status"] == "invalid"


def test_a_viewer_reads_and_gets_403_on_every_action(desk: Desk):
    for method, path in _routes(oid(RED_A)):
        answer = desk.viewer.request(
            method, f"{desk.url}{path}", data={"order_id": oid(RED_A), "reason": "x"},
            headers=desk.same_origin(), timeout=30, allow_redirects=False,
        )  # fmt: skip
        expected = (
            200 if path.startswith(("/bills/?", "/bills/order")) or path == "/bills/" else 403
        )
        assert answer.status_code == expected, (method, path, answer.status_code, answer.text)
    assert desk.store.get_row(oid(RED_A))["status"] == "invalid"
    assert len(desk.stack.api.runs()) == 1
    assert _requests(desk) == []


def test_the_overview_lists_what_needs_a_person_filters_and_escapes(desk: Desk):
    plugins = desk.admin.get(f"{desk.url}/api/v2/plugins", timeout=30).json()["plugins"]
    (bills,) = [p for p in plugins if p["name"] == "nontax_bills"]
    assert bills["external_views"][0]["category"] == "browse"
    page = desk.admin.get(f"{desk.url}/bills/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    for n in (RED_A, RED_B, HOSTILE):
        assert oid(n) in html
    assert oid(GOOD) not in html  # inserted: needs nobody
    assert "测试医院门诊收费" in html  # Chinese titles, UTF-8
    assert "¥1.02" in html  # fee 102 fen of order 2, in yuan
    red_a = desk.store.get_row(oid(RED_A))
    assert red_a["reason"] and _escaped(red_a["reason"]) in html
    # Newest change first.
    assert html.index(oid(HOSTILE)) < html.index(oid(RED_A))
    assert _injected_scripts(html) == [] and "<img" not in html
    assert "&lt;script&gt;alert(&#34;reason&#34;)&lt;/script&gt;" in html
    assert "&lt;script&gt;alert(&#34;title&#34;)&lt;/script&gt;" in html
    # Search by billing_no, by billing_code; a filter by status; a date filter.
    by_no = desk.admin.get(f"{desk.url}/bills/", params={"q": f"NO{RED_B:010d}"}, timeout=30).text
    assert oid(RED_B) in by_no and oid(RED_A) not in by_no
    by_code = desk.admin.get(f"{desk.url}/bills/", params={"q": f"C{RED_A:07d}"}, timeout=30).text
    assert oid(RED_A) in by_code and oid(RED_B) not in by_code
    inserted = desk.admin.get(f"{desk.url}/bills/", params={"status": "inserted"}, timeout=30)
    assert oid(GOOD) in inserted.text and oid(RED_A) not in inserted.text
    later = desk.admin.get(f"{desk.url}/bills/", params={"since": "2999-01-01"}, timeout=30)
    assert oid(RED_A) not in later.text and "No order here." in later.text
    hostile_q = desk.admin.get(f"{desk.url}/bills/", params={"q": "'; <script>x"}, timeout=30)
    assert hostile_q.status_code == 200 and _injected_scripts(hostile_q.text) == []
    # Counts by status, kept by the database: as many as the orders.
    counts = re.search(r"<td class=\"num\">([\d,]+)</td></tr>\s*</table>", html)
    assert counts and counts[1] == "4", html[:2000]
    # Pages go on from a mark (the last order shown); a mark that is not one is refused.
    with_mark = desk.admin.get(
        f"{desk.url}/bills/", params={"after": f"2999-01-01T00:00:00+00:00|{oid(RED_A)}"},
        timeout=30,
    )  # fmt: skip
    assert with_mark.status_code == 200 and oid(RED_A) in with_mark.text
    assert "newest" in with_mark.text and "older" not in with_mark.text
    bad_mark = desk.admin.get(f"{desk.url}/bills/", params={"after": "<x>"}, timeout=30)
    assert bad_mark.status_code == 400 and "<x>" not in bad_mark.text
    _no_secret(desk, html)


def test_an_order_page_shows_its_history_and_links_to_its_run(desk: Desk):
    page = desk.admin.get(f"{desk.url}/bills/order", params={"id": oid(HOSTILE)}, timeout=30)
    assert page.status_code == 200
    html = page.text
    assert _injected_scripts(html) == []
    assert "&lt;script&gt;alert(&#34;title&#34;)&lt;/script&gt;门诊&lt;b&gt;收费&lt;/b&gt;" in html
    assert f'href="/dags/{DAG_ID}/runs/{quote(desk.first_run, safe="")}"' in html
    assert "task instance" in html
    for step in ("load",):
        assert f"<td>{step}</td>" in html
    # An order that needs a person may be made due again or refused; it has no bill to void,
    # and issue-now would not take it (a run issues due orders only). An inserted one offers
    # only the void of its bill.
    offered = ("reset", "Make due again"), ("refuse", "Refuse")
    for action, title in offered:
        assert f'href="{action}?id={quote(oid(HOSTILE))}">{title}…</a>' in html
    assert "void?id=" not in html and "issue?id=" not in html
    good = desk.admin.get(f"{desk.url}/bills/order", params={"id": oid(GOOD)}, timeout=30).text
    assert f'href="void?id={quote(oid(GOOD))}">Void the bill…</a>' in good
    assert "reset?id=" not in good and "refuse?id=" not in good
    _no_secret(desk, html)
    missing = desk.admin.get(f"{desk.url}/bills/order", params={"id": "NO_SUCH"}, timeout=30)
    assert missing.status_code == 404


def test_issue_now_of_a_finished_order_is_refused_at_the_post_too(desk: Desk):
    """The confirmation page of an inserted order offers no issue-now; a POST made all the same
    is refused (409) with the reason: no run, no history row."""
    history = desk.store.history(oid(GOOD))
    answer = desk.admin.post(
        f"{desk.url}/bills/issue", data={"order_id": oid(GOOD)}, headers=desk.same_origin(),
        timeout=60, allow_redirects=False,
    )  # fmt: skip
    assert answer.status_code == 409, answer.text
    assert "finished (inserted)" in answer.text
    assert len(desk.stack.api.runs()) == 1
    assert desk.store.history(oid(GOOD)) == history


def test_a_success_message_comes_from_what_was_recorded_not_from_the_link(desk: Desk):
    """A link that says an order was refused, reset or issued, when nothing of the kind is
    recorded for it, shows no message of success."""
    order_id = oid(RED_B)
    for params in (
        {"done": "refuse", "run": "manual__x"},
        {"done": "refuse", "run": "manual__x", "request": "1"},
        {"done": "void", "request": "1"},
        {"done": "reset"},
        {"done": "issue", "run": desk.first_run},
    ):
        page = desk.admin.get(
            f"{desk.url}/bills/order", params={"id": order_id, **params}, timeout=30
        )
        assert page.status_code == 200, (params, page.text)
        assert 'class="flash"' not in page.text, params
        for words in ("asked for", "Made due again", "Run started", "carried out by"):
            assert words not in page.text, (params, words)


def test_bad_input_is_a_400_page_that_says_what_was_wrong(desk: Desk):
    nul = "\x00"
    for path, params, words in (
        ("/bills/", {"q": f"T{nul}1"}, "q: no control characters"),
        ("/bills/", {"until": "9999-12-31"}, "until: a date"),
        ("/bills/", {"after": f"2026-01-01T00:00:00+00:00|T{nul}"}, "page mark: no control"),
        ("/bills/", {"page": "x"}, "page"),
        ("/bills/order", {"id": f"T{nul}"}, "order id: no control characters"),
        ("/bills/reset", {"id": f"T{nul}"}, "order id: no control characters"),
    ):
        page = desk.admin.get(f"{desk.url}{path}", params=params, timeout=30)
        assert page.status_code == 400, (path, params, page.status_code, page.text)
        assert page.headers["content-type"].startswith("text/html")
        assert words in page.text, (path, params, page.text)
    for action in ("reset", "issue", "refuse", "void"):
        answer = desk.admin.post(
            f"{desk.url}/bills/{action}", data={"order_id": f"T{nul}", "reason": "x"},
            headers=desk.same_origin(), timeout=30, allow_redirects=False,
        )  # fmt: skip
        assert answer.status_code == 400, (action, answer.status_code, answer.text)
        assert "order id: no control characters" in answer.text
    assert len(desk.stack.api.runs()) == 1 and _requests(desk) == []


def test_a_red_orders_task_link_opens_its_batch_and_every_run_link_a_real_run(desk: Desk):
    page = desk.admin.get(f"{desk.url}/bills/order", params={"id": oid(RED_A)}, timeout=30)
    task = re.search(r'href="(/dags/[^"]+/tasks/[^"]+)">task instance</a>', page.text)
    assert task, page.text
    assert re.fullmatch(r"/dags/nontax_insertbill/runs/[^/]+/tasks/issue_bills/mapped/\d+", task[1])
    _links_are_real(desk, page.text)
    _links_are_real(desk, desk.admin.get(f"{desk.url}/bills/?status=all", timeout=30).text)


def test_a_post_from_another_origin_is_refused_and_changes_nothing(desk: Desk):
    for headers in (
        {"Origin": "http://evil.example"},
        {"Referer": "http://evil.example/page"},
        {"Origin": "null"},
        {},  # neither Origin nor Referer
    ):
        for action in ("reset", "issue", "refuse", "void"):
            answer = requests.post(
                f"{desk.url}/bills/{action}", data={"order_id": oid(RED_B), "reason": "x"},
                cookies={"_token": desk.admin_token}, headers=headers, timeout=30,
                allow_redirects=False,
            )  # fmt: skip
            assert answer.status_code == 403, (headers, action, answer.text)
    assert desk.store.get_row(oid(RED_B))["status"] == "invalid"
    assert len(desk.stack.api.runs()) == 1
    assert _requests(desk) == []
    # A GET never acts: the confirmation page only.
    answer = desk.admin.get(f"{desk.url}/bills/reset", params={"id": oid(RED_B)}, timeout=30)
    assert answer.status_code == 200 and 'method="post"' in answer.text
    assert desk.store.get_row(oid(RED_B))["status"] == "invalid"


def test_make_due_again_then_issue_now_inserts_the_order_and_names_the_user(desk: Desk):
    order_id = oid(RED_A)
    write_pdf(desk.stack.pdf_root, make_order(RED_A))  # the cause fixed
    answer = desk.admin.post(
        f"{desk.url}/bills/reset", data={"order_id": order_id}, headers=desk.same_origin(),
        timeout=30, allow_redirects=False,
    )  # fmt: skip
    assert answer.status_code == 303, answer.text
    row = desk.store.get_row(order_id)
    assert (row["status"], row["reason"]) == ("authorized", None)
    last = desk.store.history(order_id)[-1]
    assert (last.step, last.outcome) == ("reset", "authorized") and "admin" in last.errmsg

    answer = desk.admin.post(
        f"{desk.url}/bills/issue", data={"order_id": order_id}, headers=desk.same_origin(),
        timeout=60, allow_redirects=False,
    )  # fmt: skip
    assert answer.status_code == 303, answer.text
    (run_id,) = parse_qs(urlsplit(answer.headers["location"]).query)["run"]
    api: AirflowApi = desk.stack.api
    assert api.run(run_id)["conf"] == {"order_ids": [order_id]}
    recorded = [a for a in desk.store.history(order_id) if a.step == "operator"]
    assert [(a.outcome, a.run_id) for a in recorded] == [("issue_now", run_id)]
    assert "admin" in recorded[0].errmsg
    page = desk.admin.get(f"{desk.url}/bills/{answer.headers['location']}", timeout=30)
    assert page.status_code == 200 and "Run started" in page.text
    assert "red while other orders still need a person" in page.text
    run = api.wait_run(run_id, timeout=300)
    assert desk.store.get_row(order_id)["status"] == "inserted"
    # The run is red all the same: RED_B and HOSTILE, of an earlier run, still need a person.
    tries = {t["task_id"]: t["try_number"] for t in api.task_instances(run_id)}
    report = api.log_text(run_id, "report", tries["report"])
    assert run["state"] == "failed" and "orders of earlier runs need a person" in report


def test_a_browser_opens_browse_bills_finds_a_red_order_and_makes_it_due_again(desk: Desk):
    ARTIFACTS.mkdir(exist_ok=True)
    order_id = oid(RED_B)
    reason = desk.store.get_row(order_id)["reason"]
    with logged_in_page(desk.stack) as page:
        page.wait_for_url(re.compile(r".*/(home)?$"))
        page.get_by_role("button", name="Browse").click()
        page.get_by_role("menuitem", name="Bills").click()
        page.wait_for_url("**/plugin/bills")
        frame = page.frame_locator("iframe")
        frame.get_by_text(order_id).first.wait_for()
        frame.get_by_text(reason[:40]).first.wait_for()
        page.screenshot(path=str(ARTIFACTS / "bills-overview.png"))

        frame.get_by_role("link", name=order_id).click()
        frame.get_by_role("heading", name=re.compile(f"Order {order_id}")).wait_for()
        frame.get_by_text("History").wait_for()
        page.screenshot(path=str(ARTIFACTS / "bills-order.png"))

        frame.get_by_role("link", name="Make due again…").click()
        frame.get_by_role("button", name="Make due again").wait_for()
        page.screenshot(path=str(ARTIFACTS / "bills-confirm-reset.png"))
        frame.get_by_role("button", name="Make due again").click()
        frame.locator(".flash", has_text="Made due again").wait_for()
        page.screenshot(path=str(ARTIFACTS / "bills-after-reset.png"))
    row = desk.store.get_row(order_id)
    assert (row["status"], row["reason"]) == ("authorized", None)
    last = desk.store.history(order_id)[-1]
    assert last.step == "reset" and "admin" in last.errmsg


def test_refuse_and_void_from_the_order_page_are_carried_out_once_by_nontax_requests(desk: Desk):
    """HOSTILE (invalid, no bill) is refused and GOOD's bill voided through the view: each POST
    records a request in the admin's name and starts a run of nontax_requests, which carries it
    out on WeChat; the order page shows the request's outcome, its reason escaped. Requests that
    do not fit the order, or whose reason WeChat would not take, are refused with nothing
    recorded."""
    api: AirflowApi = desk.stack.api
    api.set_paused(False, dag_id=REQUESTS_DAG)  # a deployment unpauses it once (README)
    sandbox = desk.stack.sandbox_admin()
    # Refused, with the reason and nothing recorded: a void of an order without a bill, a
    # refusal of an inserted one, a blank reason, a reason longer than WeChat shows.
    for action, order_id, reason, words in (
        ("void", oid(RED_B), "冲红", "has no bill in the card package to void"),
        ("refuse", oid(GOOD), "退费", "void the bill instead"),
        # The kind is the route's: a query string cannot turn a refusal into a void.
        ("refuse?kind=void", oid(GOOD), "退费", "void the bill instead"),
        ("refuse", oid(RED_B), "   ", "reason"),
        ("refuse", oid(RED_B), "退" * 101, "at most 100 characters"),
    ):
        answer = desk.admin.post(
            f"{desk.url}/bills/{action}", data={"order_id": order_id, "reason": reason},
            headers=desk.same_origin(), timeout=30, allow_redirects=False,
        )  # fmt: skip
        assert answer.status_code == 409 and words in answer.text, (action, answer.text)
    assert _requests(desk) == []
    confirm = desk.admin.get(f"{desk.url}/bills/void", params={"id": oid(RED_B)}, timeout=30)
    assert confirm.status_code == 200 and 'method="post"' not in confirm.text
    assert "has no bill in the card package to void" in confirm.text

    hostile_reason = '<b>退费</b> "<script>x</script>"'
    done = {}
    for action, order_id, reason in (
        ("refuse", oid(HOSTILE), hostile_reason),
        ("void", oid(GOOD), "财政平台已冲红"),
    ):
        answer = desk.admin.post(
            f"{desk.url}/bills/{action}", data={"order_id": order_id, "reason": reason},
            headers=desk.same_origin(), timeout=30, allow_redirects=False,
        )  # fmt: skip
        assert answer.status_code == 303, answer.text
        (run_id,) = parse_qs(urlsplit(answer.headers["location"]).query)["run"]
        done[order_id] = api.wait_run(run_id, timeout=300, dag_id=REQUESTS_DAG)
    assert all(run["state"] == "success" for run in done.values()), done
    assert desk.store.get_row(oid(HOSTILE))["status"] == "refused"
    assert desk.store.get_row(oid(GOOD))["status"] == "cancelled"
    assert [(r[0], r[1], r[2]) for r in _requests(desk)] == [
        (oid(HOSTILE), "refuse", "done"),
        (oid(GOOD), "void", "done"),
    ]
    assert all("admin" in r[3] for r in _requests(desk))
    # WeChat saw each once.
    assert set(sandbox.rejections()) == {oid(HOSTILE)}
    voided = sandbox.statuses()[oid(GOOD)]
    assert voided["reimburse_status"] == "INVOICE_REIMBURSE_CANCEL"
    assert sum(h["to"] == "INVOICE_REIMBURSE_CANCEL" for h in voided["history"]) == 1
    page = desk.admin.get(f"{desk.url}/bills/order", params={"id": oid(HOSTILE)}, timeout=30)
    assert "<h2>Requests</h2>" in page.text and "<script>x" not in page.text
    assert _escaped(hostile_reason) in page.text
    assert "None: the order is refused." in page.text  # nothing more to do on it
    _no_secret(desk, page.text)
    # Every run link names the DAG that made the run: the refusal's and void's runs are
    # nontax_requests', the order page's and the overview's alike.
    for order_id in (oid(HOSTILE), oid(GOOD)):
        html = desk.admin.get(f"{desk.url}/bills/order", params={"id": order_id}, timeout=30).text
        assert f'href="/dags/{REQUESTS_DAG}/runs/' in html
        _links_are_real(desk, html)
    _links_are_real(desk, desk.admin.get(f"{desk.url}/bills/?status=all", timeout=30).text)


def test_a_browser_voids_a_bill_from_its_order_page(desk: Desk):
    """RED_A, inserted by the issue-now test above, is voided by a person in the browser: its
    page, "Void the bill…", a reason, the button; the run of nontax_requests it starts cancels
    the bill, and the page then shows the request done."""
    order_id = oid(RED_A)
    assert desk.store.get_row(order_id)["status"] == "inserted"
    api: AirflowApi = desk.stack.api
    with logged_in_page(desk.stack) as page:
        page.wait_for_url(re.compile(r".*/(home)?$"))
        page.goto(f"{desk.url}/bills/order?id={quote(order_id)}")
        page.get_by_role("link", name="Void the bill…").click()
        page.get_by_label(re.compile("Reason")).fill("财政平台已冲红 (退费)")
        page.screenshot(path=str(ARTIFACTS / "bills-confirm-void.png"))
        page.get_by_role("button", name="Void the bill").click()
        page.get_by_text(re.compile(r"Void #\d+ asked for by admin")).wait_for()
        (run_id,) = parse_qs(urlsplit(page.url).query)["run"]
        assert api.wait_run(run_id, timeout=300, dag_id=REQUESTS_DAG)["state"] == "success"
        page.reload()
        page.get_by_text("cancelled").first.wait_for()
        page.screenshot(path=str(ARTIFACTS / "bills-after-void.png"), full_page=True)
    assert desk.store.get_row(order_id)["status"] == "cancelled"
    assert (order_id, "void", "done") in [r[:3] for r in _requests(desk)]


def test_with_nontax_requests_paused_a_refusal_says_so_and_queues_no_run(desk: Desk):
    """Last: it leaves a pending refusal. A run asked of a paused DAG would only sit queued:
    none is asked, and the order page says the DAG is paused, not that a run carries it out."""
    api: AirflowApi = desk.stack.api
    api.set_paused(True, dag_id=REQUESTS_DAG)
    runs = len(api.runs(dag_id=REQUESTS_DAG))
    order_id = oid(RED_B)
    answer = desk.admin.post(
        f"{desk.url}/bills/refuse", data={"order_id": order_id, "reason": "退费"},
        headers=desk.same_origin(), timeout=30, allow_redirects=False,
    )  # fmt: skip
    assert answer.status_code == 303, answer.text
    assert "run" not in parse_qs(urlsplit(answer.headers["location"]).query)
    assert len(api.runs(dag_id=REQUESTS_DAG)) == runs
    page = desk.admin.get(f"{desk.url}/bills/{answer.headers['location']}", timeout=30).text
    assert re.search(r"Refusal #\d+ asked for by admin", page)
    assert "nontax_requests is paused" in page
    assert "the next run of nontax_requests" not in page and "Carried out by the run" not in page


def _links_are_real(desk: Desk, html: str) -> None:
    """Every link to an Airflow run or task instance names one Airflow has."""
    links = set(
        re.findall(r'href="/dags/([^/"]+)/runs/([^/"]+)(/tasks/([^/"]+)(/mapped/(\d+))?)?"', html)
    )
    assert links, html[:2000]
    for dag_id, run_id, _, task_id, _, map_index in links:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"
        if task_id:
            path += f"/taskInstances/{task_id}" + (f"/{map_index}" if map_index else "")
        answer = desk.admin.get(f"{desk.url}{path}", timeout=30)
        assert answer.status_code == 200, (path, answer.status_code)


def _requests(desk: Desk) -> list[tuple]:
    conn = connect_dsn(desk.stack.orders_dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "SELECT order_id, kind, status, requested_by FROM nontax.bill_request "
                "ORDER BY request_id"
            )
            return cur.fetchall()
    finally:
        conn.close()


# The page's one script of its own (it follows the Airflow UI's theme, language and zone).
OWN_SCRIPT = '<script src="static/bills.js" defer></script>'


def _injected_scripts(html: str) -> list[str]:
    """Every <script of the page but its own (an escaping failure would add one)."""
    assert html.count(OWN_SCRIPT) == 1
    return re.findall(r"<script[^>]*>", html.replace(OWN_SCRIPT, "", 1), flags=re.I)


def _escaped(text: str) -> str:
    import html

    return html.escape(text, quote=True).replace("&#x27;", "&#39;").replace("&quot;", "&#34;")


def _no_secret(desk: Desk, html: str) -> None:
    for secret in (desk.stack.password, desk.admin_token, desk.stack.secrets.jwt_secret,
                   desk.stack.secrets.fernet_key):  # fmt: skip
        assert secret not in html
