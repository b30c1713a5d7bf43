"""Time parsing for the importers: option values (``--at``, ``--start``, ``--end``) and zones."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gpuaudit.errors import ConfigError

# `now`, `now-2h`, or a bare `2h` (= now-2h)
_RELATIVE = re.compile(r"^(?:now\s*(?:-\s*(\d+(?:\.\d+)?)\s*([smhdw]))?|(\d+(?:\.\d+)?)\s*([smhdw]))$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration_s(text: str, *, option: str) -> float:
    """``15s``, ``1m``, ``2h``, ``1d`` or a bare number of seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"{option}: cannot parse duration {text!r}", hint="use e.g. 15s, 1m, 2h")
    return float(m.group(1)) * _UNIT_S.get(m.group(2) or "s", 1.0)


def parse_time(text: str, *, option: str, now: datetime | None = None) -> datetime:
    """An aware UTC datetime from ISO 8601 (naive = UTC), epoch seconds, ``now``, or a duration
    back from now (``now-2h`` or ``2h``). Shared by `import` and the report/check window options."""
    value = text.strip()
    rel = _RELATIVE.fullmatch(value)
    if rel:
        base = now or datetime.now(UTC)
        amount, unit = (rel.group(1), rel.group(2)) if rel.group(3) is None else (rel.group(3), rel.group(4))
        back = float(amount) * _UNIT_S[unit] if amount else 0.0
        return base - timedelta(seconds=back)
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except (ValueError, OverflowError):
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"{option}: cannot parse time {text!r}",
            hint="use ISO 8601 (2025-06-03T14:21:07Z; no zone = UTC), epoch seconds, `now` or `now-2h`",
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def parse_zone(name: str | None) -> tzinfo | None:
    """``None``/``UTC`` → UTC; ``local`` → ``None`` (this machine's zone, DST-aware); else IANA."""
    if name is None or name.upper() == "UTC":
        return UTC
    if name == "local":
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"--tz: unknown time zone {name!r}",
            hint="use an IANA name such as Europe/Paris, or UTC, or local",
        ) from None


def localize(naive: datetime, zone: tzinfo | None) -> datetime:
    """A naive wall-clock time in ``zone`` (``None`` = this machine's zone) as aware UTC."""
    aware = naive.astimezone() if zone is None else naive.replace(tzinfo=zone)
    return aware.astimezone(UTC)


def from_epoch_s(ts_s: float) -> datetime:
    """An epoch time in seconds as an aware UTC datetime, rounded to the millisecond."""
    return datetime.fromtimestamp(round(ts_s * 1000) / 1000, UTC)
