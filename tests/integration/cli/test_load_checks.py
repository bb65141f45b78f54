"""Loading orders: a PDF location that issuing would refuse is refused at load with the same
reason, and a line in another encoding is reported while the others load."""

from __future__ import annotations

import pytest

from factories import make_order, order_line
from wechat_nontax.cli.load import load_lines, read_lines
from wechat_nontax.issuing.pdf_paths import resolve_pdf_path
from wechat_nontax.wechat.errors import InvalidOrderError


def test_bad_pdf_paths_and_a_gbk_line_are_reported_by_line_and_the_rest_loads(store, tmp_path):
    good = [make_order(1), make_order(2)]
    lines = [
        order_line(good[0]).encode(),
        order_line(make_order(3), title="北京市门诊收费").encode("gbk"),
        order_line(make_order(4), pdf_path="/etc/passwd").encode(),
        order_line(make_order(5), pdf_path="2024/../../../etc/passwd").encode(),
        order_line(make_order(6), pdf_path="a/" * 130 + "x.pdf").encode(),
        order_line(good[1]).encode(),
    ]
    path = tmp_path / "orders.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")

    report = load_lines(store, read_lines(str(path)))

    assert report.lines == 6 and report.inserted == 2
    rejected = dict(report.rejected)
    assert set(rejected) == {2, 3, 4, 5}
    assert "not valid UTF-8" in rejected[2] and "GB18030" in rejected[2]
    for number, relative in ((3, "/etc/passwd"), (4, "2024/../../../etc/passwd")):
        with pytest.raises(InvalidOrderError) as issuing:  # the reason issuing would record
            resolve_pdf_path("/srv/bills", relative)
        assert rejected[number] == str(issuing.value)
    assert "absolute" in rejected[3] and "under the PDF root" in rejected[4]
    assert "at most 255 characters" in rejected[5]
    assert store.count_by_status() == {"authorized": 2}
    assert store.get_row(good[1].order_id) is not None
