"""The Bills page's catalogue (wechat_nontax.ui.i18n): one gettext catalogue for every text of
the page, statuses and the pipeline's reasons included; the committed .mo is the compiled .po
(a .po edited without `pybabel compile` fails here); the person's language and zone."""

from __future__ import annotations

import gettext
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from wechat_nontax.requests.contract import RequestStatus
from wechat_nontax.store.actions import HELD
from wechat_nontax.ui import i18n
from wechat_nontax.ui.i18n import CHINESE, ENGLISH, Reader, language_of, zone_of
from wechat_nontax.wechat.rules import POLICY
from wechat_nontax.wechat.statuses import Action, Status

UI = Path(i18n.__file__).parent
PO = UI / "locale" / CHINESE / "LC_MESSAGES" / "bills.po"
MO = PO.with_suffix(".mo")
ZH = Reader(CHINESE, ZoneInfo("Asia/Shanghai"))


def _po() -> dict[tuple[str | None, str], str]:
    with PO.open("rb") as f:
        return {(m.context, m.id): m.string for m in read_po(f) if m.id}


def test_the_committed_mo_is_the_compiled_po():
    with MO.open("rb") as f:
        compiled = gettext.GNUTranslations(f)._catalog
    # gettext keys a context's message as "context\x04id"; the header is the empty id.
    mo = {key: value for key, value in compiled.items() if key}
    po = {(f"{ctx}\x04{mid}" if ctx else mid): text for (ctx, mid), text in _po().items()}
    assert mo == po, "run the compile step of docs/development.md (Bills page catalogue)"


def test_every_text_of_the_page_has_its_chinese():
    method_map = [("**.py", "python"), ("**/templates/**.html", "jinja2")]
    found = {
        message
        for _, _, message, _, _ in extract_from_dir(
            str(UI), method_map, keywords={"_": None, "gettext": None, "N_": None}
        )
        if isinstance(message, str)
    }
    assert len(found) > 100
    po = _po()
    missing = sorted(text for text in found if not po.get((None, text)))
    assert missing == [], "extract and translate as docs/development.md says"


@pytest.mark.parametrize("name", [*Status, *RequestStatus])
def test_every_status_has_its_chinese_name(name):
    assert ZH.status(str(name)) != str(name)
    assert Reader(ENGLISH, ZH.zone).status(str(name)) == str(name)


# The steps of an order's history (nontax.bill_attempt's constraint, migration 0012).
STEPS = ("load", "validate", "upload", "insert", "authorization", "reset", "pdf", "recover",
         "operator", "request", "refuse", "void", "auth_link", "payer")  # fmt: skip


def test_every_step_of_the_history_has_its_chinese_name():
    missing = [step for step in STEPS if ZH.step(step) == step]
    assert missing == []
    assert Reader(ENGLISH, ZH.zone).step("validate") == "validate" and ZH.step(None) == ""


def test_the_new_statuses_are_named_in_both_languages():
    assert ZH.status("unauthorized") == "待缴款人授权"
    assert ZH.status("declined") == "缴款人已拒绝"


@pytest.mark.parametrize(
    "reason",
    sorted({r.reason for r in POLICY.values() if r.action in (Action.FAIL, Action.REJECT)}),
)
def test_every_reason_the_policy_stores_for_a_person_is_in_the_catalogue(reason):
    assert ZH.reason(reason) != reason
    # Stored with WeChat's answer after it: the answer is kept as it is.
    assert ZH.reason(f"{reason} (72017 title mismatch)").endswith(" (72017 title mismatch)")


def test_a_reason_is_translated_part_by_part_and_unknown_text_is_shown_as_stored():
    assert ZH.reason("pdf: PDF not found") == "pdf: 未找到 PDF"
    assert ZH.reason("pdf: PDF not found; title: is missing") == "pdf: 未找到 PDF; title: 缺失"
    unknown = "title: 'x' is longer than 32 characters; <b>made up</b>"
    assert ZH.reason(unknown) == unknown
    assert ZH.reason(HELD) != HELD
    assert Reader(ENGLISH, ZH.zone).reason("pdf: PDF not found") == "pdf: PDF not found"
    assert ZH.reason(None) == ""


def test_one_word_for_one_thing_the_reasons_say_make_due_again():
    texts = [rule.reason for rule in POLICY.values()] + [
        rule.exhausted_reason or "" for rule in POLICY.values()
    ]
    assert not [t for t in texts if "re-run" in t or "reset the order" in t]


@pytest.mark.parametrize(
    ("chosen", "accept", "language"),
    [
        (None, None, ENGLISH),
        (None, "zh-CN,zh;q=0.9,en;q=0.8", CHINESE),
        (None, "en-US,en;q=0.9,zh-CN;q=0.8", ENGLISH),
        (None, "fr-FR, zh;q=0.5", CHINESE),  # the first language the page has
        (None, "en;q=0.2, zh-Hans;q=0.9", CHINESE),  # quality order, not header order
        (None, "zh-TW", ENGLISH),  # Traditional Chinese: no catalogue, English
        ("zh-CN", "en-US", CHINESE),  # the Airflow UI's choice first
        ("en", "zh-CN", ENGLISH),
        (None, "zh;q=0, en", ENGLISH),
    ],
)
def test_the_language_is_the_uis_choice_else_the_browsers_else_english(chosen, accept, language):
    assert language_of(chosen, accept) == language


@pytest.mark.parametrize(
    ("chosen", "zone"),
    [
        (None, "Asia/Shanghai"),
        ("UTC", "UTC"),
        ("Europe/Berlin", "Europe/Berlin"),
        ("Not/AZone", "Asia/Shanghai"),
        ("../../etc/passwd", "Asia/Shanghai"),
        ("x" * 100, "Asia/Shanghai"),
    ],
)
def test_the_zone_is_the_uis_choice_else_the_units(chosen, zone):
    assert zone_of(chosen).key == zone
