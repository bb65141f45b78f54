"""Where an order's PDF is: its relative `pdf_path` checked and joined under the configured root.

The root may be a directory or an object-storage URL; the path comes from the order's row and
may not leave the root. String logic alone, the same at load and at issue time: nothing is read
here (`pdfs.read_pdf` opens the file).
"""

from __future__ import annotations

import posixpath
import re
import unicodedata

from wechat_nontax.wechat.errors import InvalidOrderError
from wechat_nontax.wechat.validation import Problem, shown, type_of

# Longest pdf_path accepted (at load and at issue): a file name's limit on common filesystems;
# real paths such as `2017/11/1511169724.pdf` are far shorter.
MAX_PDF_PATH_LEN = 255

# A URL scheme or a drive letter at the start: "file:", "s3:", "C:".
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def pdf_path_problem(relative: object) -> str | None:
    """Why an order's `pdf_path` may not be used (the same reason at load and at issue time),
    or None."""
    if relative is None:
        return "is missing: the order has no PDF location"
    if not isinstance(relative, str):
        return f"must be text, got {type_of(relative)}"
    if not relative.strip():
        return "must not be empty"
    if "\x00" in relative:
        return f"must not contain a NUL byte, got {shown(relative)}"
    if any(unicodedata.category(c) == "Cc" for c in relative):
        return f"must not contain control characters, got {shown(relative)}"
    if "\\" in relative:
        return f"must use '/' as separator, not a backslash, got {shown(relative)}"
    if len(relative) > MAX_PDF_PATH_LEN:
        return f"must be at most {MAX_PDF_PATH_LEN} characters, got {len(relative)}"
    if relative.startswith("/"):
        return f"must be relative to the PDF root, got the absolute path {shown(relative)}"
    if _SCHEME.match(relative):
        return f"must be relative to the PDF root, not a URL or drive, got {shown(relative)}"
    if relative.endswith("/"):
        return f"must name a file, not a directory, got {shown(relative)}"
    normal = posixpath.normpath(relative)
    if normal == ".." or normal.startswith("../"):
        return f"must stay under the PDF root, got {shown(relative)}"
    if normal == ".":
        return f"must name a file, got {shown(relative)}"
    return None


# What a URL reader does with a path beyond the checks above: it decodes `%xx` (`%2e%2e` is
# `..`, then dropped with the segment before it) and ends the path at `?` or `#`. Refused
# under a URL root rather than checked after each decoding: no order needs them there.
_URL_DECODED = frozenset("%?#")


def _url_root_problem(root: str, relative: str) -> str | None:
    if root.startswith("file://") or "://" not in root:
        return None  # read from the filesystem: nothing is decoded
    if _URL_DECODED.intersection(relative):
        return (
            "must not contain percent-encoding, '?' or '#' under an object-storage root (the "
            f"URL reader would decode them to another location), got {shown(relative)}"
        )
    return None


def resolve_pdf_path(root: str, relative: str | None) -> str:
    """The PDF's full location: `relative` joined under `root`, which it may not leave.

    `root` is a directory (`/data/bills`) or an object-storage URL (`s3://bucket/pdfs`); it is
    configuration and taken as given. `relative` comes from the order's row and is refused
    (`InvalidOrderError` on `pdf_path`) when missing, absolute, a URL or drive, with
    backslashes, NUL or control characters, longer than `MAX_PDF_PATH_LEN`, with `..`
    segments that leave the root, or (under a URL root) with `%`, `?` or `#`. Pure string
    logic: nothing is read; `pdfs.read_pdf` refuses symbolic links when it opens the file.
    """
    if not isinstance(root, str) or not root.strip():
        raise ValueError("the PDF root is not configured")
    reason = pdf_path_problem(relative) or _url_root_problem(root, relative)
    if reason is not None:
        raise InvalidOrderError([Problem("pdf_path", reason)])
    separator = "" if root.endswith("/") else "/"
    return f"{root}{separator}{posixpath.normpath(relative)}"
