"""Reading a bill's PDF from the configured root: a local directory or object storage.

The root comes from the `NONTAX_PDF_ROOT` environment variable (or the operator's argument). A
root with a scheme (`s3://bucket/bills`, `gs://...`, `file:///srv/bills`) is read through
Airflow's `ObjectStoragePath`; a plain path from the local filesystem. Where the location may
point is decided by `validation.resolve_pdf_path`, before anything is opened.
"""

from __future__ import annotations

import os

from wechat_nontax.validation import resolve_pdf_path

PDF_ROOT_ENV = "NONTAX_PDF_ROOT"


def default_pdf_root() -> str:
    root = os.environ.get(PDF_ROOT_ENV)
    if not root:
        raise RuntimeError(
            f"no PDF root: set the environment variable {PDF_ROOT_ENV} (a directory or an "
            "object-storage URL) where the workers run"
        )
    return root


def read_pdf(root: str, relative: str | None, *, max_bytes: int) -> bytes | None:
    """The PDF's bytes, at most `max_bytes + 1` of them (enough to tell it is too large), or
    None when there is no such file. Raises `InvalidOrderError` for a location outside `root`."""
    location = resolve_pdf_path(root, relative)
    try:
        if "://" in root:
            from airflow.sdk import ObjectStoragePath

            with ObjectStoragePath(location).open("rb") as pdf:
                return pdf.read(max_bytes + 1)
        with open(location, "rb") as pdf:
            return pdf.read(max_bytes + 1)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
