"""The dashboard's probe counts (keys/probe_hours.py): hours rolled up by beat plus the
rest live, always equal to counting the results themselves."""

import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from django.db.models.functions import TruncDate

from console.upstream import Outcome
from keys import probe_hours
from keys.models import ProbeHour, ProbeResult

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 20, 14, 37, 12, tzinfo=UTC)
SINCE = datetime(2026, 11, 14, tzinfo=UTC)  # midnight six days before NOW: the chart's week
OUTCOMES = [Outcome.OK, Outcome.OK, Outcome.OK, Outcome.RATE_LIMITED, Outcome.INVALID_KEY, Outcome.TIMEOUT]


@pytest.fixture
def probe(make_key):
    key, _ = make_key()
    slots = iter(range(1, 10**6))

    def add(at, outcome=Outcome.OK):
        return ProbeResult.objects.create(key=key, slot=next(slots), started_at=at, outcome=outcome)

    return add


@pytest.fixture
def week(probe):
    """About 300 results over the week before NOW (and a few before it), the last hour included."""
    rng = random.Random(7)
    for _ in range(300):
        probe(NOW - timedelta(seconds=rng.randrange(0, 8 * 24 * 3600)), rng.choice(OUTCOMES))
    for minutes in (1, 5, 30, 59, 61):
        probe(NOW - timedelta(minutes=minutes), Outcome.INVALID_KEY)


def counted():
    """What the results themselves say: per day and outcome since SINCE, and the last hour."""
    by_day = {}
    for day, outcome in (
        ProbeResult.objects.filter(started_at__gte=SINCE, started_at__lte=NOW)
        .annotate(day=TruncDate("started_at"))
        .values_list("day", "outcome")
    ):
        by_day.setdefault(day, Counter())[outcome] += 1
    hour = Counter(
        ProbeResult.objects.filter(started_at__gte=NOW - timedelta(hours=1), started_at__lte=NOW).values_list(
            "outcome", flat=True
        )
    )
    return {d: dict(c) for d, c in by_day.items()}, dict(hour)


def shown():
    counts = probe_hours.outcome_counts(NOW, SINCE)
    return counts.by_day, counts.last_hour


def test_before_any_roll_up_everything_is_counted_live(week):
    assert shown() == counted()
    assert not ProbeHour.objects.exists()


def test_rolled_hours_replace_the_results_and_the_rest_is_live(week, probe):
    expected = counted()
    probe_hours.roll_up(NOW)
    assert shown() == expected
    # Every settled hour of the window is rolled, each with its marker (empty hours too).
    settled = probe_hours.hour_start(NOW - probe_hours.SETTLE)
    markers = set(ProbeHour.objects.filter(outcome="").values_list("hour", flat=True))
    assert max(markers) == settled - timedelta(hours=1)
    assert len(markers) == probe_hours.KEEP_DAYS * 24 + (settled - probe_hours.hour_start(NOW)).total_seconds() // 3600
    # The rolled hours are what is read: their results gone, the chart is unchanged.
    ProbeResult.objects.filter(started_at__lt=settled - timedelta(hours=1)).delete()
    assert shown()[0] == expected[0]


def test_a_result_written_late_is_counted_by_the_next_roll_up(week, probe):
    probe_hours.roll_up(NOW)
    late_hour = probe_hours.hour_start(NOW) - timedelta(hours=2)  # rolled already, within the re-roll
    probe(late_hour + timedelta(minutes=20), Outcome.TIMEOUT)
    assert shown() != counted()  # until the next run, the rolled hour lacks it
    probe_hours.roll_up(NOW + timedelta(minutes=5))
    assert shown() == counted()


def test_a_gap_in_the_rolled_hours_is_counted_live_from_there(week):
    expected = counted()
    probe_hours.roll_up(NOW)
    gap = datetime(2026, 11, 17, 6, tzinfo=UTC)
    ProbeHour.objects.filter(hour=gap).delete()
    assert shown() == expected
    probe_hours.roll_up(NOW)  # the next run fills it
    assert ProbeHour.objects.filter(hour=gap, outcome="").exists()
    assert shown() == expected


def test_the_roll_up_is_idempotent_and_forgets_hours_that_left_the_window(week):
    probe_hours.roll_up(NOW)
    rows = set(ProbeHour.objects.values_list("hour", "outcome", "probes"))
    assert probe_hours.roll_up(NOW) == probe_hours.REROLL_HOURS  # only the last hours again
    assert set(ProbeHour.objects.values_list("hour", "outcome", "probes")) == rows
    later = NOW + timedelta(days=3)
    probe_hours.roll_up(later)
    oldest = probe_hours.hour_start(later - timedelta(days=probe_hours.KEEP_DAYS))
    assert not ProbeHour.objects.filter(hour__lt=oldest).exists()


def test_spans_group_consecutive_hours():
    h = datetime(2026, 11, 20, tzinfo=UTC)
    hours = [h, h + timedelta(hours=1), h + timedelta(hours=5), h + timedelta(hours=2)]
    assert probe_hours.spans(hours) == [(h, h + timedelta(hours=3)), (h + timedelta(hours=5), h + timedelta(hours=6))]
