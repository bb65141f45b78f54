"""The payers' authorisations as getauthdata answers them: set through the admin API
(`authorized`, `unauthorized`, `rejected`), else authorised unless `authorize_by_default` is
off; an order refused with rejectinsert answers "reject insert" for good.

A part of `SandboxState` (state.py), which holds the lock, the clock and the settings."""

from __future__ import annotations

from typing import Any

from wechat_sandbox import errors as E

AUTHORIZED = "authorized"
UNAUTHORIZED = "unauthorized"  # never authorised (yet)
REJECTED = "rejected"
# The admin API's authorisation statuses and what getauthdata answers for each.
AUTH_STATUSES = {
    AUTHORIZED: "auth success",
    UNAUTHORIZED: "never auth",
    REJECTED: "reject insert",
}


class Authorizations:
    """The authorisations of `SandboxState`."""

    def _clear_authorizations(self) -> None:
        self.authorizations: dict[str, dict[str, Any]] = {}  # explicit ones only
        self._implicit_auth_time: dict[str, int] = {}

    def set_authorization(self, order_id: str, status: str) -> dict[str, Any]:
        if status not in AUTH_STATUSES:
            raise ValueError(f"status must be one of {', '.join(AUTH_STATUSES)}")
        with self._lock:
            record = {"order_id": order_id, "status": status, "auth_time": int(self.clock())}
            self.authorizations[order_id] = record
            return dict(record)

    def clear_authorization(self, order_id: str) -> bool:
        with self._lock:
            return self.authorizations.pop(order_id, None) is not None

    def authorization_status(self, order_id: str) -> str:
        if order_id in self.rejections:
            return REJECTED  # refused by rejectinsert: for good, whatever the admin set later
        record = self.authorizations.get(order_id)
        if record is not None:
            return record["status"]
        return AUTHORIZED if self.settings.authorize_by_default else UNAUTHORIZED

    def auth_data(self, body: Any) -> dict[str, Any]:
        """POST /card/invoice/getauthdata once the token is known to be valid."""
        if not isinstance(body, dict):
            return E.error(E.DATA_FORMAT)
        order_id, s_pappid = body.get("order_id"), body.get("s_pappid")
        if not (E.is_text(order_id) and E.is_text(s_pappid)):
            return E.error(E.DATA_FORMAT)
        with self._lock:
            status = self.authorization_status(order_id)
            record = self.authorizations.get(order_id)
            if status == UNAUTHORIZED:
                auth_time = 0  # no authorisation to date
            elif record is not None:
                auth_time = record["auth_time"]
            else:
                auth_time = self._implicit_auth_time.setdefault(order_id, int(self.clock()))
            return E.ok(invoice_status=AUTH_STATUSES[status], auth_time=auth_time)
