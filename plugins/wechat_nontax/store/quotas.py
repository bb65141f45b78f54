"""WeChat's daily quotas: a used-up quota is recorded once for every worker and run, so that
none calls again before it resets."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from wechat_nontax.observability import metrics
from wechat_nontax.wechat.timing import beijing_time


@dataclass(frozen=True, slots=True)
class QuotaStop:
    """A daily quota used up for one call of an appid, as `nontax.api_quota` records it: no
    such call before `until` (`seconds_left` from now, by the database's clock)."""

    api: str
    until: datetime
    seconds_left: float
    errcode: int | None
    errmsg: str | None

    def reason(self) -> str:
        """Why a call waits for it, for a person: the call, the answer, the reset (Beijing
        time, as WeChat counts the day)."""
        answer = f"errcode {self.errcode}: {self.errmsg}" if self.errcode is not None else "-"
        return (
            f"daily quota of {self.api} used up ({answer}): not sent before "
            f"{beijing_time(self.until)}, when it resets"
        )


_QUOTA_COLUMNS = (
    "api, stopped_until, extract(epoch FROM stopped_until - now())::float8, errcode, errmsg"
)

# Records a daily quota answer for an appid's call (`api`) for `seconds`; a later answer never
# shortens a live stop. Shared with the token cache, which records its endpoint's quota under
# its own row lock.
QUOTA_STOP_SQL = f"""
    INSERT INTO nontax.api_quota AS q (appid, api, stopped_until, errcode, errmsg, run_id)
    VALUES (%(appid)s, %(api)s, now() + make_interval(secs => %(seconds)s),
            %(errcode)s, %(errmsg)s, %(run_id)s)
    ON CONFLICT (appid, api) DO UPDATE SET
        stopped_until = greatest(
            CASE WHEN q.stopped_until > now() THEN q.stopped_until END, excluded.stopped_until),
        errcode = excluded.errcode, errmsg = excluded.errmsg, run_id = excluded.run_id,
        stopped_at = now(), stop_count = q.stop_count + 1,
        stopped_since = CASE WHEN q.stopped_until > now() THEN q.stopped_since ELSE now() END
    RETURNING {_QUOTA_COLUMNS}
"""


class QuotaStops:
    """The order store's record of WeChat's used-up daily quotas."""

    def record_quota_stop(
        self,
        appid: str,
        api: str,
        *,
        seconds: float,
        errcode: int | None,
        errmsg: str | None,
        run_id: str | None,
    ) -> QuotaStop:
        """WeChat said the daily quota of `api` is used up: no batch calls it for `seconds`
        (until the quota resets). A later stop never shortens an earlier one. Safe to send
        twice."""
        rows = self._run(
            QUOTA_STOP_SQL,
            {
                "appid": appid, "api": api, "seconds": seconds, "errcode": errcode,
                "errmsg": errmsg, "run_id": run_id,
            },
        )  # fmt: skip
        metrics.quota_stopped(api)
        return QuotaStop(*rows[0])

    def live_quota_stops(self) -> list[tuple[str, QuotaStop]]:
        """Every daily quota stop in force, of any appid: (appid, stop), for the person on duty."""
        rows = self._run(
            f"SELECT appid, {_QUOTA_COLUMNS} FROM nontax.api_quota WHERE stopped_until > now() "
            "ORDER BY appid, api"
        )
        return [(row[0], QuotaStop(*row[1:])) for row in rows]

    def quota_stops(self, appid: str, apis: Iterable[str]) -> dict[str, QuotaStop]:
        """The calls among `apis` whose daily quota is used up now, by api."""
        rows = self._run(
            f"SELECT {_QUOTA_COLUMNS} FROM nontax.api_quota "
            "WHERE appid = %s AND api = ANY(%s) AND stopped_until > now()",
            (appid, list(apis)),
        )
        return {row[0]: QuotaStop(*row) for row in rows}
