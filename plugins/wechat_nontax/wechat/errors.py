"""Typed exceptions for WeChat's refusals and for orders that cannot be sent.

A `WeChatError` carries the errcode (or transport `Signal`) and errmsg of one answer, the step
that got it, and the `Rule` from the policy table; its subclass names the action, so a caller
can `except TokenInvalidError` where it refreshes the token and let the rest through.
`error_for` is the one place that picks the subclass.

Only errcode and errmsg go in; errmsg is still scrubbed of `access_token=`/`secret=` values,
because a transport error's text (the caller's errmsg for a timeout) may quote the URL.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING

from wechat_nontax.wechat.policy import classify_attempt
from wechat_nontax.wechat.rules import Rule
from wechat_nontax.wechat.statuses import Action

if TYPE_CHECKING:
    from wechat_nontax.wechat.validation import Problem

# Longest errmsg kept in str(); WeChat's run to a sentence plus a request id.
_ERRMSG_MAX = 200

# `key` and `sign` are the whole credential of a WeCom or DingTalk robot's webhook URL.
_SECRET_VALUE = re.compile(
    r"""(?P<key>access_token|secret|appsecret|key|sign)(?P<sep>["']?\s*[=:]\s*["']?)[^&\s"',}]+""",
    re.IGNORECASE,
)


def redact(text: str, *secrets: str | None) -> str:
    """`text` with the values of access_token/secret/key/sign parameters, and every one of `secrets`
    wherever it appears, replaced by `***`."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _SECRET_VALUE.sub(r"\g<key>\g<sep>***", text)


class _ScrubQueryStrings(logging.Filter):
    """urllib3 logs each request line at DEBUG, query string and its credentials included."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg = record.getMessage()
            record.args = None
        record.msg = redact(str(record.msg))
        return True


def scrub_url_logs() -> None:
    """Redact the credentials of every URL urllib3 logs (once per process; idempotent)."""
    logger = logging.getLogger("urllib3.connectionpool")
    if not any(isinstance(f, _ScrubQueryStrings) for f in logger.filters):
        logger.addFilter(_ScrubQueryStrings())


class WeChatError(Exception):
    """An answer from WeChat (or its absence) that is not a success.

    `signal` is the errcode or the transport `Signal`; `errcode` is the int errcode or None;
    `step` is the call that got it: "token", "upload", "insert" or "authorization".
    """

    def __init__(
        self,
        signal: int | str,
        errmsg: str = "",
        step: str | None = None,
        rule: Rule | None = None,
    ) -> None:
        self.signal = signal
        self.errcode: int | None = signal if isinstance(signal, int) else None
        self.errmsg = redact(str(errmsg))
        self.step = step
        self.rule: Rule = rule if rule is not None else classify_attempt(signal, 1, step)
        super().__init__(self.signal, self.errmsg)

    @property
    def action(self) -> Action:
        return self.rule.action

    def __str__(self) -> str:
        what = f"errcode {self.errcode}" if self.errcode is not None else str(self.signal)
        errmsg = self.errmsg or self.rule.meaning
        if len(errmsg) > _ERRMSG_MAX:
            errmsg = errmsg[: _ERRMSG_MAX - 3] + "..."
        prefix = f"{self.step}: " if self.step else ""
        return f"{prefix}{what} ({errmsg}): {self.rule.reason}"

    def __reduce__(self):  # keyword state survives pickling (worker processes, XCom-free logs)
        return (type(self), (self.signal, self.errmsg, self.step, self.rule))


class RetryableError(WeChatError):
    """Try the same call again after a delay (busy, minute quota, 5xx, timeout)."""


class TokenInvalidError(WeChatError):
    """The access token was refused: invalidate if still cached, refresh, retry once."""


class QuotaExhaustedError(WeChatError):
    """The daily quota is used up: stop calling today; the orders stay due."""


class AwaitingAuthorizationError(WeChatError):
    """WeChat does not see the user's authorisation of the order yet."""


class AlreadyInsertedError(WeChatError):
    """The bill is already in the user's card package: never insert it again."""


class MediaExpiredError(WeChatError):
    """The PDF's media id is unknown or expired: upload again, retry once."""


class PermanentError(WeChatError):
    """A person must fix the order's data or the configuration before it is tried again."""


class RejectedError(WeChatError):
    """WeChat refuses this order for good."""


class AlreadyDoneError(WeChatError):
    """What the call asked for is done on WeChat's side already (a refusal or a void that an
    earlier try made before its answer was lost): record it as done."""


_ERROR_FOR_ACTION: Mapping[Action, type[WeChatError]] = MappingProxyType(
    {
        Action.RETRY: RetryableError,
        Action.REFRESH_TOKEN: TokenInvalidError,
        Action.STOP_QUOTA: QuotaExhaustedError,
        Action.WAIT_AUTHORIZATION: AwaitingAuthorizationError,
        Action.ALREADY_INSERTED: AlreadyInsertedError,
        Action.REUPLOAD: MediaExpiredError,
        Action.FAIL: PermanentError,
        Action.REJECT: RejectedError,
        Action.ALREADY_DONE: AlreadyDoneError,
    }
)


def error_for(
    signal: int | str, errmsg: str, *, step: str | None = None, answers: int = 1
) -> WeChatError:
    """The exception for an answer: the subclass named by the policy's action.

    `answers` counts consecutive answers of this signal for the same order (1-based); past a
    rule's retry limit the error is a `PermanentError` that says how often it came back. The
    rule is the one for `step` (`policy.classify`).
    """
    rule = classify_attempt(signal, answers, step)
    if rule.action is Action.SUCCESS:
        raise ValueError(f"{signal!r} is a success, not an error")
    return _ERROR_FOR_ACTION[rule.action](signal, errmsg, step, rule)


class PdfUnavailableError(RuntimeError):
    """An order's PDF could not be read this time (an I/O error, object storage unreachable):
    the order may pass later. `reason` names the kind of failure and never quotes the file."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)

    def __reduce__(self):
        return (type(self), (self.reason,))


class _ProblemsError(ValueError):
    """Something that cannot be sent as it is: its problems say which fields and why."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        if not problems:
            raise ValueError(f"an {type(self).__name__} needs at least one problem")
        self.problems: list[Problem] = list(problems)
        super().__init__(self.problems)

    def __str__(self) -> str:
        return "; ".join(str(problem) for problem in self.problems)

    def __reduce__(self):
        return (type(self), (self.problems,))


class InvalidOrderError(_ProblemsError):
    """An order that cannot be sent as it is: its problems say which fields and why."""


class InvalidRequestError(_ProblemsError):
    """A refusal or a status change that cannot be sent as asked (an empty or overlong reason,
    an unknown status...): refused before any call, its problems say which fields and why."""
