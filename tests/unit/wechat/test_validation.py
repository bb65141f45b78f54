"""Order validation: each kind of bad value, the PDF, and where a PDF may be read from."""

from __future__ import annotations

import dataclasses
import json
import posixpath
import re
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wechat_nontax.issuing.pdf_paths import resolve_pdf_path
from wechat_nontax.wechat.bill import Order, insertbill_body
from wechat_nontax.wechat.errors import InvalidOrderError
from wechat_nontax.wechat.validation import (
    DEFAULT_LIMITS,
    MAX_REFUSAL_REASON_CHARS,
    REIMBURSE_STATUSES,
    Limits,
    Problem,
    check_card_allowed,
    check_order_fields,
    check_pdf,
    check_refusal,
    check_status_change,
    format_problems,
    parse_card_ids,
    reimburse_status,
    validate_order,
)

NOW = 1_700_000_000  # 2023-11-15 06:13:20 UTC+8

VALID = {
    "order_id": "1511169724",
    "card_id": "pjZ8Yt7xiy3b9UfffRIA4Tm2xTnw",
    "appid": "wxc0b84a53ed8e8d29",
    "fee": 123,
    "title": "灌哥发票",
    "billing_time": 1_699_990_000,
    "billing_no": "1511169724",
    "billing_code": "aabbccdd",
}


def problems_with(**changes: object) -> list[Problem]:
    return check_order_fields({**VALID, **changes}, now=NOW)


def test_a_valid_order_has_no_problems():
    assert check_order_fields(VALID, now=NOW) == []
    assert validate_order(Order(**VALID, pdf_path="a.pdf"), now=NOW) == []


@pytest.mark.parametrize(
    "changes",
    [
        {"fee": 1},
        {"fee": DEFAULT_LIMITS.max_fee},
        {"billing_time": DEFAULT_LIMITS.earliest_billing_time},
        {"billing_time": NOW + DEFAULT_LIMITS.max_future_s},
        {"title": "某" * 64},
        {"title": "Hôpital Saint-Louis · 门诊 (2)"},
        {"title": "市　第一医院"},  # an ideographic space inside is text
        {"order_id": "o" * 64},
        {"order_id": "ORD_2024-0001"},
        {"card_id": "p" * 64},
        {"appid": "a" * 32},
        {"billing_no": "0" * 32},
        {"billing_code": "AB-12_cd"},
        {"pdf_path": None, "status": "anything", "extra": b"\x00"},  # other keys are ignored
    ],
    ids=str,
)
def test_boundary_values_are_valid(changes):
    assert problems_with(**changes) == []


BAD_VALUES = [
    # (field, value, words the reason must contain)
    ("fee", 0, ["positive", "got 0"]),
    ("fee", -5, ["positive", "got -5"]),
    ("fee", 12.5, ["integer", "float 12.5"]),
    ("fee", 12.0, ["integer", "float 12.0"]),
    ("fee", "12", ["integer", "str '12'"]),
    ("fee", True, ["integer", "bool True"]),
    ("fee", DEFAULT_LIMITS.max_fee + 1, ["at most 1000000000", "yuan"]),
    ("fee", 10**30, ["at most"]),
    ("fee", [123], ["integer", "list"]),
    ("billing_time", 151116972, ["10-digit", "9 digits", "151116972"]),
    ("billing_time", 15111697240, ["10-digit", "11 digits"]),
    ("billing_time", 1511169724000, ["milliseconds"]),
    ("billing_time", NOW + 2 * 86400, ["future", "UTC+8"]),
    ("billing_time", NOW + DEFAULT_LIMITS.max_future_s + 1, ["future"]),
    ("billing_time", 1_400_000_000, ["before 2017-01-01", "2014-05-14"]),
    ("billing_time", DEFAULT_LIMITS.earliest_billing_time - 1, ["before 2017-01-01 00:00:00"]),
    ("billing_time", "abc", ["integer", "str 'abc'"]),
    ("billing_time", "1699990000", ["integer", "str"]),
    ("billing_time", 1_699_990_000.0, ["integer", "float"]),
    ("billing_time", True, ["integer", "bool"]),
    ("billing_time", -1_699_990_000, ["positive"]),
    ("title", "", ["empty"]),
    ("title", "   ", ["empty"]),
    ("title", "\t\n", ["empty"]),
    ("title", "某" * 65, ["at most 64", "got 65"]),
    ("title", "灌哥\x00发票", ["control", "U+0000"]),
    ("title", "灌哥\n发票", ["control", "U+000A"]),
    ("title", "灌哥\x1b[31m发票", ["control", "U+001B"]),
    ("title", "\u202e票发哥灌", ["control", "U+202E"]),  # right-to-left override
    ("title", "灌哥\u200b发票", ["U+200B"]),  # zero-width space
    ("title", "灌哥\u2028发票", ["U+2028"]),  # line separator
    ("title", " 灌哥发票", ["whitespace"]),
    ("title", "灌哥发票 ", ["whitespace"]),
    ("title", 42, ["text", "int 42"]),
    ("billing_no", "", ["empty"]),
    ("billing_no", "1" * 33, ["at most 32", "got 33"]),
    ("billing_no", "15111\x0069724", ["only", "'\\x00'"]),
    ("billing_no", "'; DROP TABLE bill_order; --", ["only", '"\'"', "';'", "' '"]),
    ("billing_no", "1511 169724", ["only", "' '"]),
    ("billing_no", "１５１１", ["only"]),  # full-width digits
    ("billing_no", "١٥١١", ["only"]),  # Arabic-Indic digits: isdigit() but not ASCII
    ("billing_no", 1511169724, ["text", "int"]),
    ("billing_code", "", ["empty"]),
    ("billing_code", "a" * 33, ["at most 32"]),
    ("billing_code", "aabb\nccdd", ["only", "'\\n'"]),
    ("billing_code", "aabb%cc", ["only", "'%'"]),
    ("billing_code", "1 OR 1=1", ["only", "'='"]),
    ("order_id", "", ["empty"]),
    ("order_id", "o" * 65, ["at most 64"]),
    ("order_id", "订单1", ["only", "'订'"]),
    ("order_id", "a/b", ["only", "'/'"]),
    ("order_id", "a.b", ["only", "'.'"]),
    ("card_id", "pjZ8 Yt7", ["only"]),
    ("card_id", "p" * 65, ["at most 64"]),
    ("card_id", "pjZ8+Yt7=", ["only", "'+'", "'='"]),
    ("appid", "wx.c0b84a53ed8e8d29", ["only", "'.'"]),
    ("appid", "a" * 33, ["at most 32"]),
    ("appid", "", ["empty"]),
]


@pytest.mark.parametrize(
    ("field", "value", "words"), BAD_VALUES, ids=[f"{f}={v!r}"[:60] for f, v, _ in BAD_VALUES]
)
def test_each_bad_value_is_one_readable_problem_on_its_field(field, value, words):
    problems = problems_with(**{field: value})
    assert [p.field for p in problems] == [field]
    reason = problems[0].reason
    for word in words:
        assert word in reason
    assert "\n" not in reason
    assert "\x00" not in reason
    assert len(reason) < 300


@pytest.mark.parametrize("field", list(VALID))
@pytest.mark.parametrize("missing", ["absent", "none"])
def test_missing_fields(field, missing):
    fields = {k: v for k, v in VALID.items() if k != field}
    if missing == "none":
        fields[field] = None
    assert check_order_fields(fields, now=NOW) == [Problem(field, "is missing")]


def test_all_problems_are_reported_in_field_order():
    bad = {
        "order_id": "",
        "card_id": "bad card",
        "appid": None,
        "fee": 0,
        "title": " ",
        "billing_time": "abc",
        "billing_no": "'; DROP TABLE x",
        "billing_code": "x" * 40,
    }
    problems = check_order_fields(bad, now=NOW)
    assert [p.field for p in problems] == [
        "order_id",
        "card_id",
        "appid",
        "fee",
        "title",
        "billing_time",
        "billing_no",
        "billing_code",
    ]
    assert check_order_fields({}, now=NOW) == [Problem(f, "is missing") for f in VALID]


def test_long_bad_values_are_truncated_in_the_reason():
    problems = problems_with(billing_no="'" + "x" * 500)
    assert len(problems[0].reason) < 200
    assert "..." in problems[0].reason


def test_limits_are_configurable():
    tight = Limits(max_fee=100, max_title_len=2, earliest_billing_time=1_699_999_000)
    problems = check_order_fields(VALID, now=NOW, limits=tight)
    assert [p.field for p in problems] == ["fee", "title", "billing_time"]


def test_validate_order_checks_the_dataclasss_fields():
    order = Order(**{**VALID, "fee": -1, "title": ""}, pdf_path=None)
    assert [p.field for p in validate_order(order, now=NOW)] == ["fee", "title"]


def test_format_problems_is_one_line():
    problems = problems_with(fee=0, title="")
    assert format_problems(problems) == (
        "fee: must be a positive number of fen (分), got 0; title: must not be empty or blank, "
        "got ''"
    )
    assert format_problems([]) == ""
    assert str(problems[0]) == "fee: must be a positive number of fen (分), got 0"


# -- the PDF ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (None, "PDF not found"),
        (b"", "empty"),
        (b"<html>not a pdf</html>", "not a PDF"),
        (b"%PDF", "not a PDF"),
        (b" %PDF-1.4", "not a PDF"),
        (b"%PDF-1.4\n" + b"x" * (2 * 1024 * 1024), "more than the limit of 2097152 bytes"),
    ],
    ids=["none", "empty", "html", "short", "leading-space", "too-large"],
)
def test_bad_pdfs(data, words):
    problem = check_pdf(data)
    assert problem is not None
    assert problem.field == "pdf"
    assert words in problem.reason


@pytest.mark.parametrize(
    "data", [b"%PDF-1.4\n%%EOF", b"%PDF-" + b"x" * (2 * 1024 * 1024 - 5), bytearray(b"%PDF-1.7")]
)
def test_good_pdfs(data):
    assert check_pdf(data) is None


def test_pdf_limit_is_configurable():
    assert check_pdf(b"%PDF-1.4 1234", limits=Limits(max_pdf_bytes=8)) is not None


# -- where the PDF is -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("root", "relative", "expected"),
    [
        ("/data/pdfs", "a/b.pdf", "/data/pdfs/a/b.pdf"),
        ("/data/pdfs/", "x.pdf", "/data/pdfs/x.pdf"),
        ("/data/pdfs", "./x.pdf", "/data/pdfs/x.pdf"),
        ("/data/pdfs", "a//b.pdf", "/data/pdfs/a/b.pdf"),
        ("/data/pdfs", "a/../x.pdf", "/data/pdfs/x.pdf"),
        ("/data/pdfs", "2024/票据 1.pdf", "/data/pdfs/2024/票据 1.pdf"),
        ("/data/pdfs", "x..pdf", "/data/pdfs/x..pdf"),
        ("/data/pdfs", "..x/y.pdf", "/data/pdfs/..x/y.pdf"),
        ("include/demo/pdfs", "1.pdf", "include/demo/pdfs/1.pdf"),
        ("/", "x.pdf", "/x.pdf"),
        ("s3://bucket/pdfs", "2024/01/x.pdf", "s3://bucket/pdfs/2024/01/x.pdf"),
        ("s3://bucket/pdfs/", "x.pdf", "s3://bucket/pdfs/x.pdf"),
        ("s3://bucket", "x.pdf", "s3://bucket/x.pdf"),
        ("gs://bucket/a/b", "c/../d.pdf", "gs://bucket/a/b/d.pdf"),
    ],
)
def test_good_pdf_paths(root, relative, expected):
    assert resolve_pdf_path(root, relative) == expected


@pytest.mark.parametrize(
    ("relative", "words"),
    [
        ("../x.pdf", "under the PDF root"),
        ("a/../../x.pdf", "under the PDF root"),
        ("..", "under the PDF root"),
        ("a/b/../../../x.pdf", "under the PDF root"),
        ("/etc/passwd", "absolute"),
        ("//host/share/x.pdf", "absolute"),
        ("C:\\x", "backslash"),
        ("a\\..\\..\\x.pdf", "backslash"),
        ("C:/x.pdf", "URL or drive"),
        ("file:///x", "URL or drive"),
        ("s3://other-bucket/x.pdf", "URL or drive"),
        ("http://evil.example/x.pdf", "URL or drive"),
        ("a\x00.pdf", "NUL"),
        ("a\n.pdf", "control"),
        ("", "empty"),
        ("   ", "empty"),
        (None, "missing"),
        (42, "text"),
        ("a/", "directory"),
        (".", "file"),
        ("a/..", "file"),
    ],
    ids=repr,
)
def test_pdf_paths_that_leave_the_root_are_refused(relative, words):
    for root in ("/data/pdfs", "s3://bucket/pdfs"):
        with pytest.raises(InvalidOrderError) as caught:
            resolve_pdf_path(root, relative)
        [problem] = caught.value.problems
        assert problem.field == "pdf_path"
        assert words in problem.reason
        assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("root", ["", "  ", None])
def test_an_unconfigured_root_is_a_configuration_error(root):
    with pytest.raises(ValueError, match="not configured") as caught:
        resolve_pdf_path(root, "x.pdf")
    assert not isinstance(caught.value, InvalidOrderError)


# -- properties -------------------------------------------------------------------------------

_ID = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", min_size=1
)
_TITLE = st.text(
    alphabet=st.characters(exclude_categories=("Cc", "Cf", "Cs", "Zl", "Zp")),
    min_size=1,
    max_size=64,
).filter(lambda t: t.strip() == t and t)

valid_orders = st.builds(
    Order,
    order_id=_ID.filter(lambda s: len(s) <= 64),
    card_id=_ID.filter(lambda s: len(s) <= 64),
    appid=_ID.filter(lambda s: len(s) <= 32),
    fee=st.integers(min_value=1, max_value=DEFAULT_LIMITS.max_fee),
    title=_TITLE,
    billing_time=st.integers(
        min_value=DEFAULT_LIMITS.earliest_billing_time, max_value=NOW + DEFAULT_LIMITS.max_future_s
    ),
    billing_no=_ID.filter(lambda s: len(s) <= 32),
    billing_code=_ID.filter(lambda s: len(s) <= 32),
    pdf_path=st.none() | st.just("x.pdf"),
)


@given(valid_orders, st.from_regex(r"[0-9]{1,19}", fullmatch=True))
def test_any_valid_order_passes_and_its_body_round_trips(order, media_id):
    assert validate_order(order, now=NOW) == []
    body = insertbill_body(order, media_id)
    wire = json.loads(json.dumps(body, ensure_ascii=False))
    assert wire == body
    data = wire["card_ext"]["user_card"]["invoice_user_data"]
    assert type(data["fee"]) is int
    assert data["fee"] == order.fee
    assert type(data["billing_time"]) is int
    assert data["billing_time"] == order.billing_time
    assert data["title"] == order.title


bad_fees = st.one_of(
    st.integers(max_value=0),
    st.integers(min_value=DEFAULT_LIMITS.max_fee + 1),
    st.floats(allow_nan=True),
    st.decimals(allow_nan=False),
    st.text(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.binary(max_size=4),
)


@given(bad_fees)
def test_any_fee_that_is_not_a_positive_int_within_the_maximum_is_a_problem(fee):
    problems = problems_with(fee=fee)
    assert [p.field for p in problems] == ["fee"]


@given(st.integers(min_value=1, max_value=DEFAULT_LIMITS.max_fee))
def test_any_positive_int_fee_within_the_maximum_passes(fee):
    assert problems_with(fee=fee) == []


_PATH_TEXT = st.one_of(
    st.text(),
    st.lists(st.sampled_from(["a", "b", ".", "..", "/", "\\", ":", "\x00", "票", " "])).map(
        "".join
    ),
    st.lists(st.sampled_from(["..", ".", "a", "b.pdf", "", "c:"]), max_size=6).map("/".join),
)


@pytest.mark.parametrize("root", ["/data/pdfs", "s3://bucket/pdfs", "/data/pdfs/"])
@given(relative=_PATH_TEXT)
def test_an_accepted_pdf_path_always_stays_under_the_root(root, relative):
    try:
        resolved = resolve_pdf_path(root, relative)
    except InvalidOrderError as exc:
        refused = exc.problems
    else:
        refused = None
    if refused is not None:
        assert [p.field for p in refused] == ["pdf_path"]
        return
    assert resolved.startswith(root)
    inside = resolved[len(root.rstrip("/")) + 1 :]
    assert resolved.startswith(root.rstrip("/") + "/")
    assert inside
    assert ".." not in inside.split("/")
    assert "\\" not in inside
    assert "\x00" not in inside
    assert posixpath.normpath(inside) == inside


def test_limits_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_LIMITS.max_fee = 1  # type: ignore[misc]


# -- any value in any field: accepted only when the body can carry it as it is ----------------

_ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.decimals(allow_nan=False),
    st.text(),
    st.text(alphabet="abcXYZ019_-'; =%\x00\n\u202e票", max_size=70),
    st.from_regex(r"[A-Za-z0-9_-]{1,70}", fullmatch=True),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=2),
)
_SAFE_ID_RE = re.compile(r"[A-Za-z0-9_-]+")
_ID_LIMITS = {
    "order_id": DEFAULT_LIMITS.max_order_id_len,
    "card_id": DEFAULT_LIMITS.max_card_id_len,
    "appid": DEFAULT_LIMITS.max_appid_len,
    "billing_no": DEFAULT_LIMITS.max_billing_no_len,
    "billing_code": DEFAULT_LIMITS.max_billing_code_len,
}


@given(field=st.sampled_from(list(VALID)), value=_ANY_VALUE)
def test_any_value_in_any_field_is_refused_on_that_field_or_fits_the_body(field, value):
    problems = problems_with(**{field: value})
    assert all(p.field == field for p in problems)  # the other fields are not affected
    if problems:
        [problem] = problems
        assert problem.reason and "\n" not in problem.reason and len(problem.reason) < 300
        return
    # Accepted: the value obeys the rule the module documents, and goes into the body as is.
    if field in ("fee", "billing_time"):
        assert type(value) is int
    if field == "fee":
        assert 1 <= value <= DEFAULT_LIMITS.max_fee
    elif field == "billing_time":
        assert len(str(value)) == 10
        assert DEFAULT_LIMITS.earliest_billing_time <= value <= NOW + DEFAULT_LIMITS.max_future_s
    elif field == "title":
        assert isinstance(value, str) and value == value.strip() and value
        assert len(value) <= DEFAULT_LIMITS.max_title_len
        assert not any(unicodedata.category(c) in {"Cc", "Cf", "Cs", "Zl", "Zp"} for c in value)
    else:
        assert isinstance(value, str) and _SAFE_ID_RE.fullmatch(value)
        assert len(value) <= _ID_LIMITS[field]
    order = Order(**{**VALID, field: value}, pdf_path="x.pdf")
    body = json.loads(json.dumps(insertbill_body(order, "1234567890123456789"), ensure_ascii=False))
    data = body["card_ext"]["user_card"]["invoice_user_data"]
    assert {**body, **data}[field] == value


# -- the account's card ids (the WeChat Connection's extra card_ids) --------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ([], None),
        (" , ", None),
        ("pA", frozenset({"pA"})),
        ("pA, pB,", frozenset({"pA", "pB"})),
        (["pA", " pB "], frozenset({"pA", "pB"})),
    ],
)
def test_card_ids_from_configuration(value, expected):
    assert parse_card_ids(value) == expected


@pytest.mark.parametrize("value", [42, {"pA": 1}, ["pA", 3], True])
def test_card_ids_of_the_wrong_type_are_a_configuration_error(value):
    with pytest.raises(ValueError, match="card_ids must be"):
        parse_card_ids(value)


def test_an_unknown_card_is_a_problem_only_when_cards_are_configured():
    assert check_card_allowed("pUnknown", None) is None
    assert check_card_allowed("pA", frozenset({"pA"})) is None
    problem = check_card_allowed("pUnknown", frozenset({"pA"}))
    assert problem is not None and problem.field == "card_id"
    assert "'pUnknown'" in problem.reason and "card_ids" in problem.reason


# ---------------------------------------------------------------- requests after the insert
@pytest.mark.parametrize(
    ("reason", "url"),
    [
        ("已退款，不再开具票据", None),
        ("理" * MAX_REFUSAL_REASON_CHARS, None),
        ("refunded before issue", "https://unit.example/orders/1?x=1"),
        (" padded reasons are fine ", "http://unit.example"),
    ],
)
def test_a_good_refusal_has_no_problems(reason, url):
    assert check_refusal("1511169724", reason, url) == []


@pytest.mark.parametrize(
    ("order_id", "reason", "url", "field", "says"),
    [
        ("1511169724", "", None, "reason", "empty or blank"),
        ("1511169724", "   ", None, "reason", "empty or blank"),
        ("1511169724", None, None, "reason", "must be text"),
        ("1511169724", "理" * (MAX_REFUSAL_REASON_CHARS + 1), None, "reason", "at most 100"),
        ("1511169724", "two\nlines", None, "reason", "control or invisible"),
        ("1511169724", "bidi\u202eoverride", None, "reason", "U+202E"),
        ("1511169724", "r", "ftp://unit.example", "url", "http:// or https://"),
        ("1511169724", "r", "https://unit.example/a b", "url", "without spaces"),
        ("1511169724", "r", "https://u.example/" + "x" * 1100, "url", "at most 1024"),
        ("", "r", None, "order_id", "must not be empty"),
        ("15'; DROP", "r", None, "order_id", "may contain only"),
    ],
)
def test_a_bad_refusal_says_which_field_and_why(order_id, reason, url, field, says):
    [problem] = check_refusal(order_id, reason, url)
    assert problem.field == field and says in problem.reason


def test_every_problem_of_a_refusal_at_once():
    assert [p.field for p in check_refusal(None, "", 5)] == ["order_id", "reason", "url"]


@pytest.mark.parametrize(
    ("value", "full"),
    [
        ("CANCEL", "INVOICE_REIMBURSE_CANCEL"),
        ("INVOICE_REIMBURSE_CANCEL", "INVOICE_REIMBURSE_CANCEL"),
        ("INIT", "INVOICE_REIMBURSE_INIT"),
        ("LOCK", "INVOICE_REIMBURSE_LOCK"),
        ("CLOSURE", "INVOICE_REIMBURSE_CLOSURE"),
        ("RELEASE", None),  # there is none: unlocking is INIT
        ("cancel", None),
        (None, None),
    ],
)
def test_reimburse_status_names(value, full):
    assert reimburse_status(value) == full


def test_a_status_change_is_checked_field_by_field():
    card = "pjZ8Yt7xiy3b9UfffRIA4Tm2xTnw"
    assert check_status_change(card, "1234567890123", "CANCEL") == []
    assert set(REIMBURSE_STATUSES) == {"INIT", "LOCK", "CLOSURE", "CANCEL"}
    problems = check_status_change("", "12 34", "RELEASE")
    assert [p.field for p in problems] == ["card_id", "code", "status"]
    assert "INIT, LOCK, CLOSURE, CANCEL" in problems[2].reason
