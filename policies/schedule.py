"""When a class runs: pure calendar helpers over ``Schedule``.

A one-off class has the single window ``starts_at``..``ends_at``. A weekly class repeats
that window's *local* start and end times of day (in ``schedule.timezone``) on every
allowed ISO weekday (1 = Monday), from ``starts_at``'s local date until ``term_ends_at``.
Working in local wall time is the point: a class at 07:30 in Hà Nội stays at 07:30 even
if the zone ever changes its UTC offset.

Nothing here reads the clock: ``now`` is always an argument and must be aware.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from policies.model import Schedule

__all__ = [
    "MAX_WEEKLY_SPAN",
    "Window",
    "current_window",
    "current_window_utc",
    "next_start",
    "to_local",
]

Window = tuple[datetime, datetime]

_ONE_DAY = timedelta(days=1)
# A weekly window this long would overlap the next week's occurrence
# (``loader.validate_schedule`` rejects it).
MAX_WEEKLY_SPAN = timedelta(days=7)


def _require_aware(now: datetime) -> None:
    # A naive ``now`` would be compared as if it were local time somewhere unknown;
    # refuse it rather than guess (the gateway always passes an aware UTC clock).
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be an aware datetime")


@dataclass(frozen=True, slots=True)
class _Weekly:
    """A weekly schedule reduced to what the occurrence arithmetic needs."""

    zone: ZoneInfo
    days: frozenset[int]
    first_date: date
    start_time: time
    end_time: time
    span_days: timedelta  # local midnights the window crosses (0 days: same day)
    term_ends_at: datetime | None  # in UTC, so comparisons are between instants

    def occurrence(self, day: date) -> Window:
        """The occurrence on local ``day``, as UTC instants: comparing UTC datetimes
        is exact and far cheaper than comparing zoneinfo-aware ones."""
        return (
            datetime.combine(day, self.start_time, tzinfo=self.zone).astimezone(UTC),
            datetime.combine(day + self.span_days, self.end_time, tzinfo=self.zone).astimezone(UTC),
        )

    def in_term(self, day: date, start: datetime) -> bool:
        return day >= self.first_date and (self.term_ends_at is None or start <= self.term_ends_at)


# NOTE: a bounded memo of a pure function, not state: the same Schedule always
# compiles to the same value. It keeps zone lookups and conversions off the hot path
# (a class's schedule is evaluated on every join attempt).
@lru_cache(maxsize=1024)
def _compile(schedule: Schedule) -> _Weekly | None:
    """None when the schedule can never produce an occurrence (fail closed)."""
    try:
        zone = ZoneInfo(schedule.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return None
    if schedule.ends_at <= schedule.starts_at:
        return None
    days = frozenset(d for d in schedule.weekly if 1 <= d <= 7)
    if not days:
        return None
    start_local = schedule.starts_at.astimezone(zone)
    end_local = schedule.ends_at.astimezone(zone)
    term = schedule.term_ends_at
    return _Weekly(
        zone=zone,
        days=days,
        first_date=start_local.date(),
        start_time=start_local.time(),
        end_time=end_local.time(),
        span_days=end_local.date() - start_local.date(),
        term_ends_at=None if term is None else term.astimezone(UTC),
    )


def current_window(schedule: Schedule, now: datetime) -> Window | None:
    """The occurrence of ``schedule`` that matters at ``now``.

    One-off: ``(starts_at, ends_at)`` whatever ``now`` is. Weekly: the earliest
    occurrence in the term that has not ended yet (the running one, or the next one);
    when the term has no more occurrences, the last one (so ``now`` is after its end).
    None when the schedule has no occurrence at all (no valid weekday, unknown time
    zone, empty window, term ending before the first class): callers treat that as
    "outside the schedule". Weekly windows are returned in the schedule's time zone.
    """
    window = current_window_utc(schedule, now)
    if window is None or not schedule.weekly:
        return None if window is None else (schedule.starts_at, schedule.ends_at)
    return to_local(schedule, window[0]), to_local(schedule, window[1])


def current_window_utc(schedule: Schedule, now: datetime) -> Window | None:
    """``current_window`` as UTC instants: what the schedule rule compares on the hot
    path (UTC datetimes compare without any time-zone lookup)."""
    _require_aware(now)
    if not schedule.weekly:
        if schedule.ends_at <= schedule.starts_at:
            return None
        return schedule.starts_at.astimezone(UTC), schedule.ends_at.astimezone(UTC)
    weekly = _compile(schedule)
    if weekly is None:
        return None
    today = now.astimezone(weekly.zone).date()
    # Start far enough back to catch a window that began on an earlier day and is
    # still running; one week plus that span always reaches the next occurrence.
    day = max(weekly.first_date, today - weekly.span_days - _ONE_DAY)
    for _ in range(weekly.span_days.days + 9):
        if day.isoweekday() in weekly.days:
            start, end = weekly.occurrence(day)
            if not weekly.in_term(day, start):
                break
            if end >= now:
                return start, end
        day += _ONE_DAY
    return _last_occurrence(weekly, today)


def to_local(schedule: Schedule, moment: datetime) -> datetime:
    """``moment`` in the schedule's time zone, for messages and audit facts (falls back
    to ``moment`` unchanged when the zone is unknown)."""
    try:
        return moment.astimezone(ZoneInfo(schedule.timezone))
    except (ZoneInfoNotFoundError, ValueError):
        return moment


def _last_occurrence(weekly: _Weekly, today: date) -> Window | None:
    """The latest occurrence on or before ``today`` that is inside the term."""
    day = today
    if weekly.term_ends_at is not None:
        day = min(day, weekly.term_ends_at.astimezone(weekly.zone).date())
    for _ in range(8):
        if day < weekly.first_date:
            return None
        if day.isoweekday() in weekly.days:
            start, end = weekly.occurrence(day)
            if weekly.in_term(day, start):
                return start, end
        day -= _ONE_DAY
    return None


def next_start(schedule: Schedule, now: datetime) -> datetime | None:
    """The start of the next occurrence strictly after ``now`` (for a countdown), or None
    when no class starts after ``now`` (one-off already started, term over)."""
    _require_aware(now)
    if not schedule.weekly:
        if schedule.ends_at <= schedule.starts_at or schedule.starts_at <= now:
            return None
        return schedule.starts_at
    weekly = _compile(schedule)
    if weekly is None:
        return None
    day = max(weekly.first_date, now.astimezone(weekly.zone).date())
    for _ in range(9):
        if day.isoweekday() in weekly.days:
            start, _ = weekly.occurrence(day)
            if not weekly.in_term(day, start):
                return None
            if start > now:
                return start.astimezone(weekly.zone)
        day += _ONE_DAY
    return None
