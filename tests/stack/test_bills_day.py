"""The Bills page as a cashier on duty meets it, in a real Chromium on the `make up`
stack of this module (free ports, databases of its own, always stopped): the Airflow UI set to
简体中文, the time zone +08:00 (Asia/Shanghai) and dark mode, as the person chooses them in the
UI (its localStorage), the browser itself in English. The day:
- the page speaks Chinese, statuses and reasons included, every time in Asia/Shanghai, and it is
  dark like the UI around it;
- "today" finds today's red orders, one that went red at 00:01 Shanghai time (the day before in
  UTC) included;
- an inserted order is found by its id from the opening page (the search looks in every status);
- 120 orders red for the same missing PDF are made due again in one action (one confirmation),
  recorded once as the action and per order with the person's name;
- a run link opens the run in the top window (one Airflow UI, not one inside the other);
- a viewer is offered no action, and an action's page refuses them with a page, not JSON.
Screenshots: artifacts/bills-day-*.png.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg2
import pytest
import requests

from factories import make_order, write_pdf
from nontax_dev.airflow_run import ROOT
from nontax_dev.stack.stack import Stack
from stack_helpers import logged_in_page, own_stack_config, running
from wechat_nontax.store.connection import connect_dsn
from wechat_nontax.store.orders import OrderStore

pytestmark = pytest.mark.e2e

ARTIFACTS = ROOT / "artifacts"
SHANGHAI = ZoneInfo("Asia/Shanghai")
GOOD = 1  # inserted
RED = range(2, 122)  # 120 orders without their PDF
EARLY = 2  # one of them went red at 00:01 Shanghai time today
# What the person chose in the Airflow UI: the language, the time zone, dark mode.
UI_CHOICES = {"i18nextLng": "zh-CN", "timezone": json.dumps("Asia/Shanghai"), "theme": "dark"}
BROWSER = {"locale": "en-US", "timezone_id": "Asia/Shanghai", "color_scheme": "dark"}


def oid(n: int) -> str:
    return make_order(n).order_id


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    users = {"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer"}
    config = own_stack_config(tmp_path_factory.mktemp("stack"), "billsday", extra_env=users)
    with running(config) as stack:
        yield stack


@pytest.fixture(scope="module")
def day(stack: Stack) -> Iterator[dict]:
    """One run: GOOD inserted, the 120 RED orders invalid for their missing PDF; EARLY's last
    change moved to 00:01 today, Shanghai time."""
    stack.api.wait_idle(timeout=120)
    store = OrderStore(connect_dsn(stack.orders_dsn))
    try:
        orders = [make_order(n) for n in (GOOD, *RED)]
        write_pdf(stack.pdf_root, orders[0])
        store.upsert_orders(orders)
        run_id = stack.api.trigger({})
        assert stack.api.wait_run(run_id, timeout=600)["state"] == "failed"
        assert store.get_row(oid(GOOD))["status"] == "inserted"
        early = datetime.now(SHANGHAI).replace(hour=0, minute=1, second=0, microsecond=0)
        with psycopg2.connect(stack.orders_dsn) as conn, conn.cursor() as cur:  # the test's own
            cur.execute(
                "UPDATE nontax.bill_order SET updated_at = %s WHERE order_id = %s",
                (early, oid(EARLY)),
            )
            cur.execute("SELECT count(*) FROM nontax.bill_order WHERE status = 'invalid'")
            assert cur.fetchone()[0] == len(RED)
        passwords = json.loads(
            (stack.config.home / "simple_auth_manager_passwords.json").read_text()
        )
        yield {"store": store, "run_id": run_id, "early": early, "viewer": passwords["viewer"]}
    finally:
        store.close()


def _choose_in_the_ui(page) -> None:
    """The person's choices in the Airflow UI, kept where the UI keeps them."""
    page.evaluate(
        "choices => { for (const [k, v] of Object.entries(choices)) localStorage.setItem(k, v) }",
        UI_CHOICES,
    )


def _follow(page, name: str, then: str) -> None:
    """Click the page's link `name` and wait for `then` on the page it leads to. The text may be
    on the page the click leaves too (the opening page has its own page 1): the frame's new
    address comes first, or under load the next click lands on the old page."""
    inner = page.frames[-1]
    left = inner.url
    page.frame_locator("iframe").get_by_role("link", name=name).click()
    inner.wait_for_url(lambda url: url != left)
    page.frame_locator("iframe").get_by_text(then).wait_for()


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"bills-day-{name}.png"))


def test_a_cashiers_day_in_chinese_at_plus_8_in_dark_mode(stack: Stack, day: dict):
    with logged_in_page(stack, **BROWSER) as page:
        page.wait_for_url(re.compile(r".*/(home)?$"))
        _choose_in_the_ui(page)
        page.goto(f"{stack.url}/plugin/bills")
        frame = page.frame_locator("iframe")
        frame.get_by_role("heading", name="票据", exact=True).wait_for()
        # The UI is dark, and so is the page in it.
        assert page.evaluate("document.documentElement.classList.contains('dark')")
        inner = page.frames[-1]
        assert inner.evaluate("document.documentElement.dataset.theme") == "dark"
        background = inner.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(17, 17, 17)", background
        # Chinese, statuses and reasons included; every time in the UI's zone, which it names.
        frame.get_by_text("需要人工处理的订单").first.wait_for()
        frame.get_by_text("pdf: 未找到 PDF").first.wait_for()
        frame.get_by_text("Asia/Shanghai (UTC+08:00)").first.wait_for()
        assert "无效" in frame.locator("table.orders").inner_text()
        assert "PDF not found" not in frame.locator("body").inner_text()
        _shot(page, "1-overview")

        # Today's red orders under "today", the one red since 00:01 Shanghai time included.
        _follow(page, "今天", then="第 1 页")
        # Newest first: the one red since 00:01 is on the last of today's pages.
        for page_no in range(2, 2 + len(RED) // 50):
            _follow(page, "较早", then=f"第 {page_no} 页")
        frame.get_by_role("link", name=oid(EARLY)).wait_for()
        # In UTC it went red the day before: a filter of UTC days would miss it under today.
        assert day["early"].astimezone(UTC).date() < day["early"].date()
        _shot(page, "2-today")

        # An inserted order by its id, from the opening page.
        page.goto(f"{stack.url}/plugin/bills")
        frame = page.frame_locator("iframe")
        frame.get_by_role("searchbox").fill(oid(GOOD))
        frame.get_by_role("button", name="显示").click()
        frame.get_by_role("link", name=oid(GOOD)).wait_for()
        assert "已开具" in frame.locator("table.orders").inner_text()
        _shot(page, "3-search")

        # The 120 orders red for the missing PDF, made due again in one action.
        page.goto(f"{stack.url}/plugin/bills")
        frame = page.frame_locator("iframe")
        frame.get_by_role(
            "link", name=re.compile("因此原因需要人工处理的全部订单：pdf: 未找到 PDF")
        ).click()
        button = frame.get_by_role("button", name=f"重新设为待开具：{len(RED)} 个订单")
        button.wait_for()
        _shot(page, "4-confirm-many")
        button.click()
        try:
            frame.get_by_text(f"{len(RED)} 个已重新设为待开具，0 个保持原样。").wait_for()
        except Exception:
            _shot(page, "5-action-failed")
            print(page.frames[-1].url, page.frames[-1].content()[:3000])
            raise
        _shot(page, "5-action")
        action_id = int(re.search(r"id=(\d+)", page.frames[-1].url)[1])

        # A run link opens the run in the top window.
        page.goto(f"{stack.url}/plugin/bills")
        frame = page.frame_locator("iframe")
        frame.get_by_role("searchbox").fill(oid(GOOD))
        frame.get_by_role("button", name="显示").click()
        frame.get_by_role("link", name=oid(GOOD)).click()
        frame.get_by_role("link", name=day["run_id"]).first.click()
        page.wait_for_url(re.compile(r"/dags/nontax_insertbill/runs/"))
        assert page.locator("iframe").count() == 0  # one Airflow UI, not one in another
        _shot(page, "6-run")

    store: OrderStore = day["store"]
    statuses = {store.get_row(oid(n))["status"] for n in RED}
    assert statuses == {"authorized"}
    for n in (RED[0], RED[-1]):
        last = store.history(oid(n))[-1]
        assert last.step == "reset" and "admin" in last.errmsg
        assert last.errmsg.endswith(f"action #{action_id}")
    with psycopg2.connect(stack.orders_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT action_id, kind, requested_by FROM nontax.bill_action")
        assert cur.fetchall() == [(action_id, "reset", "admin")]
        cur.execute("SELECT outcome, count(*) FROM nontax.bill_action_order GROUP BY 1")
        assert cur.fetchall() == [("done", len(RED))]


def test_a_viewer_is_offered_no_action_and_refused_with_a_page(stack: Stack, day: dict):
    with logged_in_page(stack, username="viewer", password=day["viewer"], **BROWSER) as page:
        page.wait_for_url(re.compile(r".*/(home)?$"))
        _choose_in_the_ui(page)
        page.goto(f"{stack.url}/plugin/bills")
        frame = page.frame_locator("iframe")
        frame.get_by_role("link", name="票据").first.wait_for()
        assert frame.locator("input[type=checkbox]").count() == 0
        assert frame.get_by_role("button", name=re.compile("重新设为待开具")).count() == 0
        page.goto(f"{stack.url}/bills/order?id={oid(GOOD)}")
        page.get_by_text("您无可用操作").wait_for()
        assert page.get_by_role("link", name="冲红作废票据…").count() == 0
        _shot(page, "7-viewer-order")
        # Typed by hand all the same: a page that says what happened, in Chinese, not JSON.
        answer = page.goto(f"{stack.url}/bills/void?id={oid(GOOD)}")
        assert answer.status == 403
        page.get_by_role("heading", name="无权操作").wait_for()
        assert '{"detail"' not in page.content()
        _shot(page, "8-viewer-refused")
    assert day["store"].get_row(oid(GOOD))["status"] == "inserted"


def test_errors_are_pages_that_say_what_to_do(stack: Stack, day: dict):
    answer = requests.post(
        f"{stack.url}/auth/token", json={"username": "admin", "password": stack.password},
        timeout=30,
    )  # fmt: skip
    headers = {"Authorization": f"Bearer {answer.json()['access_token']}"}
    chinese = {**headers, "Accept-Language": "zh-CN,zh;q=0.9"}
    missing = requests.get(f"{stack.url}/bills/order", params={"id": "NO_SUCH"}, headers=chinese,
                           timeout=30)  # fmt: skip
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("text/html")
    assert (
        "没有此订单" in missing.text
        and "按 order_id、billing_no 或 billing_code 搜索" in missing.text
    )
    unknown = requests.get(f"{stack.url}/bills/action", params={"id": "999999"}, headers=headers,
                           timeout=30)  # fmt: skip
    assert unknown.status_code == 404 and "no such action" in unknown.text
    nobody = requests.get(f"{stack.url}/bills/", timeout=30)
    assert nobody.status_code == 401 and "Sign in to Airflow again" in nobody.text
    assert timedelta(0) < datetime.now(SHANGHAI) - day["early"]
