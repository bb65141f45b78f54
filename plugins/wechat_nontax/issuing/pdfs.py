"""Reading a bill's PDF from the configured root: a local directory or object storage.

The root comes from the `NONTAX_PDF_ROOT` environment variable (or the operator's argument). A
root with a scheme (`s3://bucket/bills`, `gs://...`) is read through Airflow's
`ObjectStoragePath`; a plain path (or a `file://` URL) from the local filesystem. Where the
location may point is decided by `pdf_paths.resolve_pdf_path`, before anything is opened.

Locally the string check is not enough: `open()` follows symbolic links, so a link inside the
root (or a linked directory) would read any file the worker can read and upload it as the bill,
and a FIFO would block the batch for ever. So the path is opened one component at a time from
the root's directory, never following a link (`O_NOFOLLOW`), without blocking (`O_NONBLOCK`),
and only a regular file is read. The root itself is configuration and may be a link.

What the caller gets: the bytes; None when there is no such file; `InvalidOrderError` when the
file can never be read as it is (outside the root, a link, not a regular file, permission
denied, name too long); `PdfUnavailableError` for a failure that may pass (an I/O error, object
storage). No reason ever quotes the file's content.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat

from wechat_nontax.issuing.pdf_paths import resolve_pdf_path
from wechat_nontax.settings import PDF_ROOT_ENV, pdf_root_setting
from wechat_nontax.wechat.errors import InvalidOrderError, PdfUnavailableError
from wechat_nontax.wechat.validation import Problem

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# Never read: the file can only be fixed by a person. Anything else not in _MISSING may pass.
_NEVER_READABLE = {
    errno.ELOOP: "is a symbolic link (links are not followed under the PDF root)",
    errno.EACCES: "cannot be read: permission denied",
    errno.EPERM: "cannot be read: operation not permitted",
    errno.ENAMETOOLONG: "is too long a name for the filesystem",
}
_MISSING = {errno.ENOENT, errno.ENOTDIR}


def default_pdf_root() -> str:
    root = pdf_root_setting()
    if not root:
        raise RuntimeError(
            f"no PDF root: set the environment variable {PDF_ROOT_ENV} (a directory or an "
            "object-storage URL) where the workers run"
        )
    return root


def read_pdf(root: str, relative: str | None, *, max_bytes: int) -> bytes | None:
    """The PDF's bytes, at most `max_bytes + 1` of them (enough to tell it is too large), or
    None when there is no such file. Raises `InvalidOrderError` or `PdfUnavailableError` (see
    the module's docstring)."""
    location = resolve_pdf_path(root, relative)  # refuses absolute paths, `..` leaving root
    if root.startswith("file://"):  # fsspec's local filesystem would follow links: read here
        root = root.removeprefix("file://")
    elif "://" in root:
        return _read_object(location, max_bytes)
    parts = posixpath.normpath(relative).split("/")  # checked: relative, no `..` leaving root
    return _read_local(root, parts, relative, max_bytes)


def _invalid(relative: str | None, reason: str) -> InvalidOrderError:
    return InvalidOrderError([Problem("pdf_path", f"{relative!r} {reason}")])


def _read_local(root: str, parts: list[str], relative: str | None, max_bytes: int) -> bytes | None:
    try:
        dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise PdfUnavailableError(
            f"the PDF root cannot be opened ({errno.errorcode.get(exc.errno, exc.errno)})"
        ) from None
    fd = -1
    try:
        for part in parts[:-1]:
            next_fd = _open_dir(part, dir_fd)
            os.close(dir_fd)
            dir_fd = next_fd
        fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=dir_fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _invalid(relative, "is not a regular file")
        return _read_up_to(fd, max_bytes + 1)
    except OSError as exc:
        if exc.errno in _MISSING:
            return None
        if exc.errno in _NEVER_READABLE:
            raise _invalid(relative, _NEVER_READABLE[exc.errno]) from None
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        raise PdfUnavailableError(f"the PDF could not be read ({name})") from None
    finally:
        for open_fd in (fd, dir_fd):
            if open_fd >= 0:
                os.close(open_fd)


def _open_dir(name: str, dir_fd: int) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except NotADirectoryError:
        # O_DIRECTORY | O_NOFOLLOW on a link says ENOTDIR: tell a link from a plain file.
        if stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            raise OSError(errno.ELOOP, "a symbolic link") from None
        raise


def _read_up_to(fd: int, limit: int) -> bytes:
    chunks, size = [], 0
    while size < limit:
        chunk = os.read(fd, min(limit - size, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _read_object(location: str, max_bytes: int) -> bytes | None:
    from airflow.sdk import ObjectStoragePath

    try:
        with ObjectStoragePath(location).open("rb") as pdf:
            return pdf.read(max_bytes + 1)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    except Exception as exc:  # noqa: BLE001 (any store's error: credentials, network, throttling)
        # Only the type: a store's message may quote a signed URL. Credentials or a store that
        # is down apply to every order alike, so the order stays due rather than invalid.
        raise PdfUnavailableError(
            f"the PDF could not be read from object storage ({type(exc).__name__})"
        ) from None
