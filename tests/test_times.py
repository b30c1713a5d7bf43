"""Time options shared by import, report and check."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gpuaudit.errors import ConfigError
from gpuaudit.importers.times import parse_time

NOW = datetime(2026, 6, 3, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        ("now-2h", NOW - timedelta(hours=2)),
        ("2h", NOW - timedelta(hours=2)),
        ("1w", NOW - timedelta(weeks=1)),
        ("1700000000", datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
        ("2026-06-03T14:21:07", datetime(2026, 6, 3, 14, 21, 7, tzinfo=UTC)),
        ("2026-06-03T16:21:07+02:00", datetime(2026, 6, 3, 14, 21, 7, tzinfo=UTC)),
        ("2026-06-03T14:21:07Z", datetime(2026, 6, 3, 14, 21, 7, tzinfo=UTC)),
    ],
)
def test_parse_time(text, expected):
    assert parse_time(text, option="--since", now=NOW) == expected


def test_bad_time_names_the_option():
    with pytest.raises(ConfigError, match="--since: cannot parse time 'yesterday'"):
        parse_time("yesterday", option="--since", now=NOW)
