"""Timestamps -> epoch seconds, refusing the two silent mistakes: a wrong epoch unit and a guessed
day/month order.

Epoch numbers come in seconds, milliseconds, microseconds or nanoseconds. With `unit="auto"` the
first value's magnitude picks the unit (a 2020 date is ~1.6e9 s, 1.6e12 ms, 1.6e15 us, 1.6e18 ns;
the bands below do not overlap for any date after 1973), and every later value must fall in the
same band, so a file mixing s and ms stops at the first odd line instead of landing in 1970 or in
the year 50000. Any unit, detected or given, must give a date within YEARS. An 8-digit number that
reads as a YYYYMMDD date is refused in auto mode rather than taken as seconds in 1970.

Date strings: year-first forms (ISO, `2021/03/04`) and month names are unambiguous. A numeric date
with the year last (`03/04/2021`, `04.03.2021`) is a DataError unless `date_format` (strptime
syntax) says how to read it: guessing month-first silently swaps days and months for most of the
world.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

from reasonrec.errors import DataError

UNITS = ("s", "ms", "us", "ns")
PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
YEARS = (1900, 2100)
_LO = int(datetime(YEARS[0], 1, 1, tzinfo=timezone.utc).timestamp())
_HI = int(datetime(YEARS[1], 1, 1, tzinfo=timezone.utc).timestamp())
_YEAR_LAST = re.compile(r"^\s*\d{1,2}[/.\-]\d{1,2}[/.\-]\d{2,4}\b")


def looks_like_yyyymmdd(value) -> bool:
    """20210304 is a date written as a number; as epoch seconds it would silently be 1970-08-22."""
    n = int(value)
    return n == value and 19000101 <= n <= 21001231 and 1 <= n // 100 % 100 <= 12 and 1 <= n % 100 <= 31


def unit_of(value: float) -> str:
    """The unit whose band holds `value`: below 1e11 (the year 5138 in s) s, then ms, us, ns."""
    magnitude = abs(value)
    return "s" if magnitude < 1e11 else "ms" if magnitude < 1e14 else "us" if magnitude < 1e17 else "ns"


class TimeParser:
    """Parses one column: remembers the auto-detected unit and the line that decided it.

    Called once per row of files with millions of rows, hence the plain-string fast path and the
    error context built only when there is an error.
    """

    def __init__(self, unit: str = "auto", date_format: str | None = None):
        if unit not in ("auto", *UNITS):
            raise DataError(f"time unit must be one of {['auto', *UNITS]}, got {unit!r}")
        self.unit, self.date_format = unit, date_format
        self._detected: tuple[str, int] | None = None  # (unit, line that decided it)

    @property
    def resolved_unit(self) -> str | None:
        return self.unit if self.unit != "auto" else (self._detected[0] if self._detected else None)

    def __call__(self, value: Any, *, file: str, line: int, field_name: str) -> int:
        if type(value) is str:
            text = value.strip()
            if (text[:1].isdigit() or text[:1] == "-") and not self.date_format:   # a format says: dates
                try:
                    number = int(text)
                except ValueError:
                    number = _float_or_none(text)
                if number is not None:
                    return self._epoch(number, value, file, line, field_name)
            return self._text(text, value, file, line, field_name)
        if value is None or isinstance(value, bool) or (isinstance(value, float) and value != value):
            raise DataError("missing timestamp" if value is None or value != value else
                            f"cannot parse a timestamp from {value!r}", file=file, line=line, field=field_name)
        if isinstance(value, (int, float, np.integer, np.floating)):
            return self._epoch(value, value, file, line, field_name)
        if isinstance(value, datetime):
            dt = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
            return self._checked(int(dt.timestamp()), value, file, line, field_name)
        if isinstance(value, date):
            return self._checked(int(datetime(value.year, value.month, value.day, tzinfo=timezone.utc).timestamp()),
                                 value, file, line, field_name)
        return self._text(str(value).strip(), value, file, line, field_name)

    def _text(self, text: str, raw: Any, file: str, line: int, field_name: str) -> int:
        where = {"file": file, "line": line, "field": field_name}
        if not text:
            raise DataError("missing timestamp", **where)
        if self.date_format:
            try:
                dt = datetime.strptime(text, self.date_format)
            except ValueError:
                raise DataError(f"date {text!r} does not match --date-format {self.date_format!r}", **where) from None
            return self(dt, file=file, line=line, field_name=field_name)
        if _YEAR_LAST.match(text):
            raise DataError(f"ambiguous date {text!r}: day/month order unknown; pass a date format such as "
                            "--date-format '%d/%m/%Y' or '%m/%d/%Y'", **where)
        return self._checked(_parse_text(text, where), raw, file, line, field_name)

    def _epoch(self, number, raw: Any, file: str, line: int, field_name: str) -> int:
        if number != number or number in (float("inf"), float("-inf")):
            raise DataError(f"expected a finite timestamp, got {raw!r}", file=file, line=line, field=field_name)
        unit = self.unit
        if unit == "auto":
            if looks_like_yyyymmdd(number):
                raise DataError(f"timestamp {raw!r} looks like a YYYYMMDD date, not epoch seconds; pass "
                                "--date-format %Y%m%d (or --time-unit s if it really is epoch)", file=file, line=line,
                                field=field_name)
            seen = unit_of(number)
            if self._detected is None:
                self._detected = (seen, line)
            elif seen != self._detected[0]:
                first_unit, first_line = self._detected
                raise DataError(f"epoch {raw!r} looks like {seen}, but line {first_line} made this column "
                                f"{first_unit}; pass --time-unit to say which", file=file, line=line, field=field_name)
            unit = seen
        return self._checked(int(number // PER_SECOND[unit]), raw, file, line, field_name, unit)

    def _checked(self, seconds: int, raw: Any, file: str, line: int, field_name: str, unit: str | None = None) -> int:
        if not _LO <= seconds < _HI:
            hint = f" read as epoch {unit}; pass the right --time-unit" if unit else ""
            raise DataError(f"timestamp {raw!r} is outside {YEARS[0]}..{YEARS[1]}{hint}", file=file, line=line,
                            field=field_name)
        return seconds


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _parse_text(text: str, where: dict) -> int:
    try:
        return _iso(text)
    except ValueError:
        pass
    try:
        ts = pd.Timestamp(text)
    except (ValueError, TypeError, OverflowError):
        ts = None
    if ts is None or ts is pd.NaT:
        raise DataError(f"cannot parse a timestamp from {text!r}", **where)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return int(ts.value // 10**9)


def _iso(text: str) -> int:
    """`datetime.fromisoformat` is ~50x faster than pd.Timestamp on the common dump formats."""
    dt = datetime.fromisoformat(text)
    dt = dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp())
