"""Calendar helpers: one-off and weekly windows in the class's own time zone."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from policies import Schedule, current_window, next_start
from policies.schedule import current_window_utc
from tests.policies.builders import ICT, ONE_OFF, WEEKLY

HCM = ZoneInfo("Asia/Ho_Chi_Minh")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def local(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    """A wall time in Hà Nội."""
    return datetime(year, month, day, hour, minute, tzinfo=HCM)


def test_one_off_window_is_its_start_and_end_whatever_now() -> None:
    for now in (utc(2020, 1, 1), utc(2026, 11, 23, 1), utc(2030, 1, 1)):
        assert current_window(ONE_OFF, now) == (ONE_OFF.starts_at, ONE_OFF.ends_at)
    assert next_start(ONE_OFF, utc(2026, 11, 23)) == ONE_OFF.starts_at
    assert next_start(ONE_OFF, utc(2026, 11, 23, 0, 30)) is None  # starting now: not "next"


def test_one_off_empty_window_has_no_occurrence() -> None:
    empty = replace(ONE_OFF, ends_at=ONE_OFF.starts_at)
    assert current_window(empty, utc(2026, 11, 23)) is None
    assert next_start(empty, utc(2026, 11, 23)) is None


# WEEKLY: Mondays and Wednesdays 07:30-09:00 in Hà Nội (UTC+7, so 00:30-02:00 UTC),
# from Monday 2026-09-07, term ends 2027-01-15 00:00 local.
@pytest.mark.parametrize(
    ("now", "window"),
    [
        # Monday 23 Nov, 07:40 local: today's class is running.
        (utc(2026, 11, 23, 0, 40), (local(2026, 11, 23, 7, 30), local(2026, 11, 23, 9, 0))),
        # Sunday 22 Nov 23:00 UTC is already Monday 06:00 in Hà Nội: Monday's class.
        (utc(2026, 11, 22, 23, 0), (local(2026, 11, 23, 7, 30), local(2026, 11, 23, 9, 0))),
        # Monday 09:00 local exactly: still Monday's (the end is inclusive).
        (utc(2026, 11, 23, 2, 0), (local(2026, 11, 23, 7, 30), local(2026, 11, 23, 9, 0))),
        # Monday 09:01 local: the next one is Wednesday.
        (utc(2026, 11, 23, 2, 1), (local(2026, 11, 25, 7, 30), local(2026, 11, 25, 9, 0))),
        # Thursday: the next Monday.
        (utc(2026, 11, 26, 3), (local(2026, 11, 30, 7, 30), local(2026, 11, 30, 9, 0))),
        # Before the term starts: the first class (Monday 7 Sept).
        (utc(2026, 8, 1), (local(2026, 9, 7, 7, 30), local(2026, 9, 7, 9, 0))),
        # After the last class (Wed 13 Jan 2027): the last class, already over.
        (utc(2027, 1, 14), (local(2027, 1, 13, 7, 30), local(2027, 1, 13, 9, 0))),
        (utc(2027, 6, 1), (local(2027, 1, 13, 7, 30), local(2027, 1, 13, 9, 0))),
    ],
)
def test_weekly_window_in_hanoi_time(now: datetime, window: tuple[datetime, datetime]) -> None:
    got = current_window(WEEKLY, now)
    assert got == window
    assert got is not None
    assert all(d.tzinfo == HCM for d in got)  # shown in the class's own zone
    assert current_window_utc(WEEKLY, now) == tuple(d.astimezone(UTC) for d in window)


def test_weekly_term_end_excludes_classes_after_it() -> None:
    # Term ending at 08:00 local on Monday 11 Jan 2027: that class started before the
    # end and still counts; Wednesday's does not.
    sched = replace(WEEKLY, term_ends_at=local(2027, 1, 11, 8, 0))
    assert current_window(sched, utc(2027, 1, 12)) == (
        local(2027, 1, 11, 7, 30),
        local(2027, 1, 11, 9, 0),
    )
    assert next_start(sched, utc(2027, 1, 10)) == local(2027, 1, 11, 7, 30)
    assert next_start(sched, utc(2027, 1, 11, 1)) is None


def test_weekly_term_ending_before_the_first_class() -> None:
    sched = replace(WEEKLY, term_ends_at=local(2026, 9, 6))
    assert current_window(sched, utc(2026, 9, 7)) is None
    assert next_start(sched, utc(2026, 9, 1)) is None


def test_weekly_first_class_is_not_before_starts_at_date() -> None:
    # starts_at is a Monday; a Wednesday-only schedule first runs on Wed 9 Sept.
    sched = replace(WEEKLY, weekly=(3,))
    assert current_window(sched, utc(2026, 1, 1)) == (
        local(2026, 9, 9, 7, 30),
        local(2026, 9, 9, 9, 0),
    )
    assert next_start(sched, utc(2026, 1, 1)) == local(2026, 9, 9, 7, 30)


def test_weekly_next_start_for_a_countdown() -> None:
    # During Monday's class the next start is Wednesday's.
    assert next_start(WEEKLY, utc(2026, 11, 23, 0, 40)) == local(2026, 11, 25, 7, 30)
    assert next_start(WEEKLY, utc(2026, 11, 23, 0, 0)) == local(2026, 11, 23, 7, 30)
    assert next_start(WEEKLY, utc(2027, 2, 1)) is None


def test_weekly_window_crossing_midnight() -> None:
    # Saturdays 22:00 to Sunday 01:00 local.
    sched = Schedule(
        starts_at=local(2026, 9, 5, 22, 0),
        ends_at=local(2026, 9, 6, 1, 0),
        weekly=(6,),
    )
    # Sunday 00:30 local is inside Saturday's window.
    assert current_window(sched, local(2026, 9, 13, 0, 30).astimezone(UTC)) == (
        local(2026, 9, 12, 22, 0),
        local(2026, 9, 13, 1, 0),
    )


def test_weekly_keeps_local_time_across_a_dst_change() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    # 08:00 Berlin on Monday 7 Sept 2026 (summer time, UTC+2), every Monday.
    sched = Schedule(
        starts_at=datetime(2026, 9, 7, 8, 0, tzinfo=berlin),
        ends_at=datetime(2026, 9, 7, 9, 0, tzinfo=berlin),
        timezone="Europe/Berlin",
        weekly=(1,),
    )
    window = current_window_utc(sched, utc(2026, 11, 23, 0, 0))
    # In November Berlin is UTC+1: the class is at 07:00 UTC, still 08:00 local.
    assert window == (utc(2026, 11, 23, 7, 0), utc(2026, 11, 23, 8, 0))


@pytest.mark.parametrize(
    "sched",
    [
        replace(WEEKLY, weekly=(0, 8)),  # no valid weekday
        replace(WEEKLY, timezone="Nowhere/Special"),  # unknown zone: fail closed
        replace(WEEKLY, ends_at=WEEKLY.starts_at),  # empty window
    ],
    ids=["bad_weekdays", "unknown_zone", "empty"],
)
def test_unusable_weekly_schedules_have_no_window(sched: Schedule) -> None:
    assert current_window(sched, utc(2026, 11, 23)) is None
    assert next_start(sched, utc(2026, 11, 23)) is None


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        current_window(WEEKLY, datetime(2026, 11, 23))  # noqa: DTZ001
    with pytest.raises(ValueError, match="aware"):
        next_start(ONE_OFF, datetime(2026, 11, 23))  # noqa: DTZ001


@settings(max_examples=200, deadline=None)
@given(
    now=st.datetimes(min_value=datetime(2026, 6, 1), max_value=datetime(2027, 3, 1),
                     timezones=st.just(UTC)),
    days=st.sets(st.integers(1, 7), min_size=1).map(lambda s: tuple(sorted(s))),
)  # fmt: skip
@example(now=utc(2027, 1, 14, 17), days=(5,))  # term over: the last Friday's class
def test_weekly_windows_are_on_allowed_days_at_the_local_time(
    now: datetime, days: tuple[int, ...]
) -> None:
    sched = replace(WEEKLY, weekly=days)
    window = current_window(sched, now)
    assert window is not None
    start, end = window
    assert start.isoweekday() in days
    assert (start.time(), end.time()) == (time(7, 30), time(9, 0))
    assert start.date() >= WEEKLY.starts_at.astimezone(ICT).date()
    assert WEEKLY.term_ends_at is not None
    assert start <= WEEKLY.term_ends_at
    upcoming = next_start(sched, now)
    if now < start:
        # The next class: it is also what the countdown shows.
        assert upcoming == start
    elif now <= end:
        # The running class; the countdown points past it.
        assert upcoming is None or upcoming > end
    else:
        # Only once the term has no more classes does the window lie in the past.
        assert upcoming is None
    if upcoming is not None:
        assert upcoming > now
        assert upcoming.isoweekday() in days
