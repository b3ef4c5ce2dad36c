"""Probe-result retention (keys/retention.py): rollup numbers against hand computations,
transitions kept, idempotent reruns, interrupted runs resumed, the newest days intact —
on both paths (set-based SQL on PostgreSQL, and the Python one SQLite uses)."""

from datetime import UTC, date, datetime, timedelta

import pytest

from keys import retention, tasks
from keys.models import ProbeDaily, ProbeResult, ProbeTransition

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 6, 20, 12, 0, tzinfo=UTC)  # keep 7 days: cutoff 2026-06-13 00:00 UTC


def at(day, hour=0, minute=0):
    return datetime(2026, 6, day, hour, minute, tzinfo=UTC)


def add(key, when, outcome, duration_ms, **fields):
    return ProbeResult.objects.create(
        key=key, slot=int(when.timestamp()), started_at=when, outcome=outcome, duration_ms=duration_ms, **fields
    )


@pytest.fixture
def history(make_key):
    """Key A: four probes on the 10th, one on the 11th, one a minute before midnight on
    the 12th, two kept (13th 00:00 and the 19th). Key B: its history before was already
    rolled up to a transition to invalid_key; then invalid_key twice and ok on the 12th."""
    a, _ = make_key(name="A")
    b, _ = make_key(name="B")
    add(a, at(10, 1), "ok", 100, request_id="req_a1")
    add(a, at(10, 2), "ok", 200)
    add(a, at(10, 3), "timeout", 400, message="The API did not answer within the timeout.")
    add(a, at(10, 4), "ok", 300)
    add(a, at(11, 5), "ok", 50)
    add(a, at(12, 23, 59), "rate_limited", 10, http_status=429)
    kept = [add(a, at(13, 0), "ok", 70).pk, add(a, at(19, 8), "invalid_key", 80).pk]
    ProbeTransition.objects.create(key=b, slot=1, started_at=at(1, 0), outcome="invalid_key", previous_outcome="ok")
    add(b, at(12, 1), "invalid_key", 5, http_status=401)
    add(b, at(12, 2), "invalid_key", 15, http_status=401)
    add(b, at(12, 3), "ok", 25, http_status=200)
    return a, b, kept


def days_of(key):
    return {
        row.day: (row.probes, row.failures, row.p50_ms, row.p95_ms)
        for row in ProbeDaily.objects.filter(key=key).order_by("day")
    }


def transitions_of(key):
    return list(
        ProbeTransition.objects.filter(key=key)
        .order_by("started_at")
        .values_list("started_at", "previous_outcome", "outcome")
    )


def test_percentiles_are_continuous_like_percentile_cont():
    assert retention.percentile([100, 200, 300, 400], 0.5) == 250
    assert retention.percentile([100, 200, 300, 400], 0.95) == pytest.approx(385)  # 300 + 0.85 × 100
    assert retention.percentile([7], 0.95) == 7
    assert retention.percentile([], 0.5) == 0


def test_the_cutoff_is_midnight_utc_keep_days_back():
    assert retention.cutoff(NOW, 7) == at(13)
    assert retention.cutoff(at(20, 0, 0), 7) == at(13)
    assert retention.cutoff(at(20, 23, 59), 1) == at(19)


@pytest.mark.parametrize("engine", ["sql", "python"])
def test_rollup_numbers_match_hand_computations(history, engine):
    a, b, kept = history
    summary = retention.run(NOW, keep_days=7, batch_keys=1, engine=engine)

    assert days_of(a) == {
        # ok 100, ok 200, timeout 400, ok 300 → sorted 100 200 300 400: p50 250, p95 385; timeout failed
        date(2026, 6, 10): (4, 1, 250.0, pytest.approx(385.0)),
        date(2026, 6, 11): (1, 0, 50.0, 50.0),
        # rate_limited: alive, not a failure
        date(2026, 6, 12): (1, 0, 10.0, 10.0),
    }
    # invalid_key twice (failures), ok once: 5 15 25 → p50 15, p95 24
    assert days_of(b) == {date(2026, 6, 12): (3, 2, 15.0, pytest.approx(24.0))}
    assert summary.rolled_up == 9
    assert summary.days == 4
    assert summary.transitions == 5


@pytest.mark.parametrize("engine", ["sql", "python"])
def test_outcome_transitions_are_kept_with_their_details(history, engine):
    a, b, kept = history
    retention.run(NOW, keep_days=7, engine=engine)

    assert transitions_of(a) == [
        (at(10, 1), "", "ok"),  # the key's first result
        (at(10, 3), "ok", "timeout"),
        (at(10, 4), "timeout", "ok"),
        (at(12, 23, 59), "ok", "rate_limited"),
    ]
    # B's earlier history ended on invalid_key: its two invalid_key results are no change.
    assert transitions_of(b) == [(at(1), "ok", "invalid_key"), (at(12, 3), "invalid_key", "ok")]
    first = ProbeTransition.objects.get(key=a, started_at=at(10, 1))
    assert first.request_id == "req_a1"
    timeout = ProbeTransition.objects.get(key=a, started_at=at(10, 3))
    assert timeout.message == "The API did not answer within the timeout."
    assert timeout.duration_ms == 400
    assert ProbeTransition.objects.get(key=a, started_at=at(12, 23, 59)).http_status == 429


@pytest.mark.parametrize("engine", ["sql", "python"])
def test_prune_leaves_the_newest_days_intact(history, engine):
    a, b, kept = history
    before = {r.pk: r for r in ProbeResult.objects.filter(started_at__gte=at(13))}
    retention.run(NOW, keep_days=7, engine=engine)
    assert sorted(ProbeResult.objects.values_list("pk", flat=True)) == sorted(kept) == sorted(before)
    assert not ProbeDaily.objects.filter(day__gte=date(2026, 6, 13)).exists()
    for row in ProbeResult.objects.all():
        assert (row.outcome, row.duration_ms, row.started_at) == (
            before[row.pk].outcome,
            before[row.pk].duration_ms,
            before[row.pk].started_at,
        )


@pytest.mark.parametrize("engine", ["sql", "python"])
def test_a_rerun_changes_nothing(history, engine):
    retention.run(NOW, keep_days=7, engine=engine)
    snapshot = (
        list(ProbeDaily.objects.order_by("key_id", "day").values()),
        list(ProbeTransition.objects.order_by("key_id", "started_at").values()),
        sorted(ProbeResult.objects.values_list("pk", flat=True)),
    )
    again = retention.run(NOW, keep_days=7, engine=engine)
    assert (again.rolled_up, again.days, again.transitions) == (0, 0, 0)
    assert snapshot == (
        list(ProbeDaily.objects.order_by("key_id", "day").values()),
        list(ProbeTransition.objects.order_by("key_id", "started_at").values()),
        sorted(ProbeResult.objects.values_list("pk", flat=True)),
    )


@pytest.mark.parametrize("engine", ["sql", "python"])
def test_an_interrupted_run_leaves_whole_chunks_and_resumes(history, engine, monkeypatch):
    a, b, kept = history
    real = retention.roll_chunk_sql if engine == "sql" else retention.roll_chunk_python
    calls = []

    def dies_on_the_second_chunk(ids, before):
        calls.append(ids)
        result = real(ids, before)  # the chunk's writes happen, then the worker "dies"
        if len(calls) == 2:
            raise SystemExit("worker killed")
        return result

    monkeypatch.setattr(retention, f"roll_chunk_{engine}", dies_on_the_second_chunk)
    with pytest.raises(SystemExit):
        retention.run(NOW, keep_days=7, batch_keys=1, engine=engine)
    first, second = calls[0][0], calls[1][0]
    # The first chunk is done; the second rolled back whole: its old rows are still there.
    assert not ProbeResult.objects.filter(key_id=first, started_at__lt=at(13)).exists()
    assert ProbeResult.objects.filter(key_id=second, started_at__lt=at(13)).exists()
    assert not ProbeDaily.objects.filter(key_id=second).exists()

    monkeypatch.setattr(retention, f"roll_chunk_{engine}", real)
    retention.run(NOW, keep_days=7, batch_keys=1, engine=engine)
    assert days_of(a)[date(2026, 6, 10)] == (4, 1, 250.0, pytest.approx(385.0))
    assert days_of(b) == {date(2026, 6, 12): (3, 2, 15.0, pytest.approx(24.0))}
    assert len(transitions_of(a)) == 4
    assert len(transitions_of(b)) == 2
    assert sorted(ProbeResult.objects.values_list("pk", flat=True)) == sorted(kept)


def retained():
    days = {
        (d.key_id, d.day): (d.probes, d.failures, round(d.p50_ms, 6), round(d.p95_ms, 6))
        for d in ProbeDaily.objects.all()
    }
    return days, set(ProbeTransition.objects.values_list("key_id", "slot", "previous_outcome", "outcome"))


def test_both_paths_agree_on_a_generated_history(make_key):
    """Many keys, random-ish outcomes and durations over 4 old days: SQL and Python give
    the same rollups and transitions."""
    import random

    rng = random.Random(12)
    keys = [make_key(name=f"k{i}")[0] for i in range(6)]
    outcomes = ["ok", "ok", "ok", "timeout", "invalid_key", "rate_limited"]
    rows = []
    for key in keys:
        for hour in range(4 * 24):
            when = at(8) + timedelta(hours=hour)
            rows.append(
                ProbeResult(
                    key=key,
                    slot=int(when.timestamp()),
                    started_at=when,
                    outcome=rng.choice(outcomes),
                    duration_ms=rng.randrange(1, 2000),
                )
            )
    ProbeResult.objects.bulk_create(rows)
    retention.run(NOW, keep_days=7, batch_keys=4, engine="sql")
    by_sql = (
        {
            (d.key_id, d.day): (d.probes, d.failures, round(d.p50_ms, 6), round(d.p95_ms, 6))
            for d in ProbeDaily.objects.all()
        },
        set(ProbeTransition.objects.values_list("key_id", "slot", "previous_outcome", "outcome")),
    )
    ProbeDaily.objects.all().delete()
    ProbeTransition.objects.all().delete()
    ProbeResult.objects.bulk_create(rows)
    retention.run(NOW, keep_days=7, batch_keys=4, engine="python")
    by_python = (
        {
            (d.key_id, d.day): (d.probes, d.failures, round(d.p50_ms, 6), round(d.p95_ms, 6))
            for d in ProbeDaily.objects.all()
        },
        set(ProbeTransition.objects.values_list("key_id", "slot", "previous_outcome", "outcome")),
    )
    assert by_sql == by_python
    assert len(by_sql[0]) == 6 * 4
    assert sum(p for p, *_ in by_sql[0].values()) == len(rows)


def test_a_chunk_costs_the_same_queries_whatever_its_rows(make_key, django_assert_num_queries):
    for n in (1, 40):
        key, _ = make_key(name=f"n{n}")
        for i in range(n):
            add(key, at(9) + timedelta(minutes=5 * i), "ok", i)
        # key ids, SAVEPOINT, rollup, transitions, delete, RELEASE, key ids (none left)
        with django_assert_num_queries(7):
            done = retention.run(NOW, keep_days=7, batch_keys=10, engine="sql")
        assert done.rolled_up == n
        key.delete()


def test_the_daily_task_uses_the_setting(history, settings, monkeypatch):
    from django.utils import timezone

    a, b, kept = history
    monkeypatch.setattr(timezone, "now", lambda: NOW)
    settings.PROBE_RESULTS_KEEP_DAYS = 9  # cutoff the 11th: only the 10th goes
    tasks.prune_probe_results()
    assert set(days_of(a)) == {date(2026, 6, 10)}
    assert not days_of(b)
    assert ProbeResult.objects.filter(key=a).count() == 4
