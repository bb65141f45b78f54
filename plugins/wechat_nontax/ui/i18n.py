"""The person's language and clock on the Bills page.

Texts are in one gettext catalogue (`locale/<lang>/LC_MESSAGES/bills.po`, compiled to the
committed `bills.mo`; tests/unit/test_bills_catalogue.py fails when the .mo is older than its
.po or a text has no translation). English is the source language. Statuses are translated by
name; reasons, stored in English by the pipeline, part by part where the catalogue knows the
text, and shown as stored where it does not.

The language is the one the Airflow UI shows (its choice, kept by the page's script in the
cookie `bills_lang`), else the browser's Accept-Language, else English. The time zone is the
UI's choice (cookie `bills_tz`), else the unit's (`settings.TIMEZONE`); every time on the page
is shown in it, and the date filters mean its days.
"""

from __future__ import annotations

import gettext
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import cache
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from wechat_nontax.settings import TIMEZONE

LOCALE_DIR = Path(__file__).parent / "locale"
DOMAIN = "bills"
ENGLISH, CHINESE = "en", "zh_CN"
LANG_COOKIE, TZ_COOKIE = "bills_lang", "bills_tz"

# A zone name as IANA spells them ("Asia/Shanghai", "UTC", "America/Argentina/Buenos_Aires").
_ZONE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+){0,2}")


def language_of(chosen: str | None, accept_language: str | None) -> str:
    """The catalogue for the UI's choice, else the first language of Accept-Language the page
    has (quality order), else English. Chinese is Simplified Chinese: zh, zh-CN, zh-Hans."""
    wanted = [chosen] if chosen else []
    ranked = []
    for i, part in enumerate((accept_language or "").split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        if tag and quality > 0:
            ranked.append((-quality, i, tag))
    wanted += [tag for _, _, tag in sorted(ranked)]
    for tag in wanted:
        parts = tag.strip().replace("_", "-").lower().split("-")
        if parts[0] == "en":
            return ENGLISH
        if parts[0] == "zh" and not {"tw", "hk", "mo", "hant"} & set(parts[1:]):
            return CHINESE
    return ENGLISH


def zone_of(chosen: str | None) -> ZoneInfo:
    """The UI's time zone when it names one, else the unit's."""
    if chosen and len(chosen) <= 64 and _ZONE_NAME.fullmatch(chosen):
        try:
            return ZoneInfo(chosen)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return ZoneInfo(TIMEZONE)


@cache
def catalogue(language: str) -> gettext.NullTranslations:
    if language == ENGLISH:
        return gettext.NullTranslations()
    return gettext.translation(DOMAIN, LOCALE_DIR, languages=[language])


def N_(text: str) -> str:
    """Marks a text for the catalogue where it is written; translated where it is shown."""
    return text


# A reason's parts: "field: problem; field: problem", or a rule's text then "(the answer)".
_PART = re.compile(r"^(?P<field>[a-z_]+): (?P<text>.+)$", re.S)
_ANSWER = re.compile(r"^(?P<text>.+?) (?P<answer>\([^()]*\))$", re.S)


@dataclass(frozen=True)
class Reader:
    """The person reading a page: their language and their time zone."""

    language: str
    zone: ZoneInfo

    @property
    def html_lang(self) -> str:
        return "zh-CN" if self.language == CHINESE else "en"

    def gettext(self, text: str) -> str:
        return catalogue(self.language).gettext(text)

    def ngettext(self, one: str, many: str, n: int) -> str:
        return catalogue(self.language).ngettext(one, many, n)

    def zone_label(self) -> str:
        offset = datetime.now(self.zone).strftime("%z")
        return f"{self.zone.key} (UTC{offset[:3]}:{offset[3:]})"

    def when(self, value: datetime | None) -> str:
        return value.astimezone(self.zone).strftime("%Y-%m-%d %H:%M:%S") if value else ""

    def when_unix(self, unix_time: int | None) -> str:
        if not unix_time:
            return ""
        return datetime.fromtimestamp(unix_time, self.zone).strftime("%Y-%m-%d %H:%M:%S")

    def age(self, value: datetime | None, now: datetime) -> str:
        if value is None:
            return ""
        seconds = max(0, int((now - value).total_seconds()))
        days, rest = divmod(seconds, 86400)
        hours, minutes = rest // 3600, rest % 3600 // 60
        if days:
            return self.gettext("%(days)d d %(hours)d h") % {"days": days, "hours": hours}
        if hours:
            return self.gettext("%(hours)d h %(minutes)d min") % {
                "hours": hours,
                "minutes": minutes,
            }
        return self.gettext("%(minutes)d min") % {"minutes": minutes}

    def day_start(self, day: date) -> datetime:
        """Midnight of `day` in the reader's zone."""
        return datetime.combine(day, datetime.min.time(), self.zone)

    def today(self) -> date:
        return datetime.now(self.zone).date()

    def yesterday(self) -> date:
        return self.today() - timedelta(days=1)

    def status(self, name: str) -> str:
        """A status's name (the catalogue's context "status": a status is one word of its own)."""
        return catalogue(self.language).pgettext("status", name)

    def step(self, name: str | None) -> str:
        """A history step's name (the catalogue's context "step")."""
        return catalogue(self.language).pgettext("step", name) if name else ""

    def reason(self, text: str | None) -> str:
        """A stored reason in the reader's language where the catalogue knows its parts."""
        if not text or self.language == ENGLISH:
            return text or ""
        whole = self._reason_part(text)
        if whole != text:
            return whole
        return "; ".join(self._reason_part(part) for part in text.split("; "))

    def _reason_part(self, part: str) -> str:
        known = self.gettext(part)
        if known != part:
            return known
        if field := _PART.match(part):
            return f"{field['field']}: {self._reason_part(field['text'])}"
        if answered := _ANSWER.match(part):
            rule, answer = answered.group("text", "answer")
            known = self.gettext(rule)
            if known != rule:
                return f"{known} {answer}"
        return part
