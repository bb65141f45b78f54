"""Reading bill PDFs from a real directory: the root cannot be left through a link, nothing
blocks, every read error ends as the order's own reason, and no reason quotes a file."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from factories import MINIMAL_PDF, make_order, write_pdf
from local_http import Answer, recording_server
from wechat_nontax.issuing.batch import BatchIssuer
from wechat_nontax.issuing.batch_settings import Settings
from wechat_nontax.issuing.pdfs import read_pdf
from wechat_nontax.store.connection import connect_dsn
from wechat_nontax.store.orders import OrderStore
from wechat_nontax.wechat.errors import InvalidOrderError, PdfUnavailableError
from wechat_nontax.wechat.hook import WeChatNonTaxHook
from wechat_nontax.wechat.validation import check_pdf

LIMIT = 2 * 1024 * 1024
# What a file outside the root holds: a "PDF" that must never be uploaded, with a secret line.
OUTSIDE = b"%PDF-1.4\nroot:x:0:0:root:/root:/bin/bash\n%%EOF\n"


@pytest.fixture
def tree(tmp_path):
    """root/ (the PDF root) and outside/secret.pdf beside it."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.pdf").write_bytes(OUTSIDE)
    (root / "2024").mkdir()
    (root / "2024" / "good.pdf").write_bytes(MINIMAL_PDF)
    return root, outside


def _refused(root, relative) -> str:
    with pytest.raises(InvalidOrderError) as caught:
        read_pdf(str(root), relative, max_bytes=LIMIT)
    [problem] = caught.value.problems
    assert problem.field == "pdf_path"
    assert "root:x" not in str(caught.value)
    return problem.reason


def test_a_regular_file_is_read_and_a_missing_one_is_none(tree):
    root, _ = tree
    assert read_pdf(str(root), "2024/good.pdf", max_bytes=LIMIT) == MINIMAL_PDF
    assert read_pdf(str(root), "2024/missing.pdf", max_bytes=LIMIT) is None
    assert read_pdf(str(root), "2024/good.pdf/x.pdf", max_bytes=LIMIT) is None  # a file as dir
    assert read_pdf(str(root), "2024/good.pdf", max_bytes=4) == MINIMAL_PDF[:5]


def test_a_link_to_a_file_outside_the_root_is_refused(tree):
    root, outside = tree
    (root / "2024" / "bill.pdf").symlink_to(outside / "secret.pdf")
    assert "symbolic link" in _refused(root, "2024/bill.pdf")


def test_a_linked_directory_leading_outside_is_refused(tree):
    root, outside = tree
    (root / "linked").symlink_to(outside, target_is_directory=True)
    assert "symbolic link" in _refused(root, "linked/secret.pdf")


def test_a_link_loop_is_the_orders_reason(tree):
    root, _ = tree
    (root / "loop.pdf").symlink_to(root / "loop.pdf")
    assert "symbolic link" in _refused(root, "loop.pdf")


def test_a_file_root_url_is_read_locally_without_following_links(tree):
    root, outside = tree
    (root / "bill.pdf").symlink_to(outside / "secret.pdf")
    assert read_pdf(f"file://{root}", "2024/good.pdf", max_bytes=LIMIT) == MINIMAL_PDF
    with pytest.raises(InvalidOrderError):
        read_pdf(f"file://{root}", "bill.pdf", max_bytes=LIMIT)


def test_a_fifo_is_refused_without_blocking(tree):
    root, _ = tree
    fifo = root / "2024" / "fifo.pdf"
    os.mkfifo(fifo)
    outcome: list[BaseException | bytes | None] = []

    def read() -> None:
        try:
            outcome.append(read_pdf(str(root), "2024/fifo.pdf", max_bytes=LIMIT))
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(5)
    if reader.is_alive():  # release the blocked open, so the test ends
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading a FIFO blocked")
    [result] = outcome
    assert isinstance(result, InvalidOrderError), result
    assert "not a regular file" in str(result)


def test_too_long_a_path_is_the_orders_reason(tree):
    root, _ = tree
    assert "at most 255 characters" in _refused(root, "a" * 300 + ".pdf")


def test_an_io_error_may_pass_and_says_only_its_kind(tree, monkeypatch):
    root, _ = tree

    def failing_read(fd, n):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "read", failing_read)
    with pytest.raises(PdfUnavailableError) as caught:
        read_pdf(str(root), "2024/good.pdf", max_bytes=LIMIT)
    assert caught.value.reason == "the PDF could not be read (EIO)"


def test_an_object_storage_error_is_unavailable_not_a_crash(monkeypatch):
    from airflow.sdk import ObjectStoragePath

    def unreachable(self, *args, **kwargs):
        raise ConnectionError("https://bucket.example/x.pdf?X-Amz-Signature=abc unreachable")

    monkeypatch.setattr(ObjectStoragePath, "open", unreachable)
    with pytest.raises(PdfUnavailableError) as caught:
        read_pdf("s3://bucket/bills", "x.pdf", max_bytes=LIMIT)
    assert "Signature" not in caught.value.reason
    assert "ConnectionError" in caught.value.reason


def test_the_not_a_pdf_reason_never_quotes_the_file():
    problem = check_pdf(b"root:x:0:0:root:/root:/bin/bash\n")
    assert problem is not None and "not a PDF" in problem.reason
    assert "root" not in problem.reason


def test_a_linked_pdf_never_reaches_wechat_and_the_batch_goes_on(orders_db, wechat_conn, tree):
    """The whole path: an order whose PDF is a link out of the root ends invalid with its
    reason; the batch's other order is issued; the sandbox received only the good PDF."""
    root, outside = tree
    linked, good = make_order(1), make_order(2)
    write_pdf(root, good)
    (root / linked.pdf_path).parent.mkdir(parents=True, exist_ok=True)
    (root / linked.pdf_path).symlink_to(outside / "secret.pdf")
    store = OrderStore(connect_dsn(orders_db))
    hook = WeChatNonTaxHook()
    try:
        store.upsert_orders([linked, good])
        BatchIssuer(
            hook,
            store,
            Settings(pdf_root=str(root), max_workers=2, time_budget_s=20),
            run_id="run-1",
            read_pdf=lambda r, rel, limit: read_pdf(r, rel, max_bytes=limit),
            sleep=lambda s: None,
        ).run([linked.order_id, good.order_id])
        row = store.get_row(linked.order_id)
        assert row["status"] == "invalid"
        assert "symbolic link" in row["reason"] and "root:x" not in row["reason"]
        assert store.get_row(good.order_id)["status"] == "inserted"
        assert [m["sha256"] for m in wechat_conn.media()] == [_sha256(MINIMAL_PDF)]
    finally:
        hook.close()
        store.close()


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    "relative",
    ["%2e%2e/x.pdf", "%2E%2E/x.pdf", ".%2e/x.pdf", "sub/%2e%2e/%2e%2e/x.pdf", "%252e%252e/x.pdf",
     "a.pdf?v=%2e%2e", "other.pdf#x"],
)  # fmt: skip
def test_an_http_root_is_never_left_through_encoding_or_a_query(relative, monkeypatch):
    """Under an http(s) root the URL library decodes `%2e` and drops dot segments, and `?` or
    `#` end the path (another file is read than the one named): the order is refused before
    any request, and none leaves the root."""
    import fsspec
    from airflow.sdk.io import attach
    from airflow.sdk.io.store import _STORE_CACHE

    # A deployment reading an https root registers fsspec's HTTP filesystem so.
    monkeypatch.setitem(_STORE_CACHE, "http", attach("http", fs=fsspec.filesystem("http")))
    outside = Answer(body=OUTSIDE, headers={"Content-Type": "application/pdf"})
    with recording_server(outside) as server:
        root = f"{server.url}/bills"
        reason = _refused(root, relative)
        assert "percent-encoding" in reason, reason
        assert [r.path for r in server.received] == []
        # A plain name under the same root is read, from under the root.
        assert read_pdf(root, "2024/a.pdf", max_bytes=LIMIT) == OUTSIDE
        assert [r.path for r in server.received if r.method == "GET"][-1] == "/bills/2024/a.pdf"
