"""Claims, leases and queueing: a caller gets only the keys its own compare-and-swap
moved; a batch probes a key only while the row holds its lease; publishing never raises
and never leaves a key leased to a batch that was not queued."""

from datetime import timedelta

import pytest
import redis
from django.conf import settings as django_settings
from django.core.checks import run_checks
from django.utils import timezone
from kombu.exceptions import OperationalError

from console.upstream import Outcome
from keys import probe, sweep, tasks
from keys.models import ApiKey, ProbeResult


@pytest.fixture(autouse=True)
def probe_settings(settings, sandbox):
    settings.OPENAI_BASE_URL = sandbox.openai_url
    settings.PROBE_PROJECT_RPM_SHARE = 1.0
    settings.PROBE_BACKOFF_BASE_SECONDS = 0.01
    settings.PROBE_BACKOFF_MAX_SECONDS = 0.05
    redis.from_url(django_settings.REDIS_URL).flushdb()
    return settings


@pytest.fixture
def healthy_keys(make_key, sandbox, project):
    def make(n):
        keys = []
        for _ in range(n):
            key, secret = make_key()
            sandbox.register(secret, fault="healthy", project=project.openai_project_id)
            keys.append(key)
        return keys

    return make


def is_leased(key, now):
    key.refresh_from_db()
    return key.next_probe_at > now + timedelta(seconds=django_settings.PROBE_INTERVAL_SECONDS)


# --- claiming -------------------------------------------------------------------------
def test_a_claimer_gets_only_the_keys_its_own_update_moved(healthy_keys, monkeypatch):
    keys = healthy_keys(4)
    now = timezone.now()
    ApiKey.objects.update(next_probe_at=now - timedelta(minutes=1))
    # Both claimers read the same due rows; the first swaps them all.
    read_by_both = sweep.candidates(ApiKey.objects.due_for_probe(now))
    first = sweep.claim_due(now)
    monkeypatch.setattr(sweep, "candidates", lambda *a, **k: read_by_both)
    second = sweep.claim_due(now)
    assert sorted(c.key_id for c in first) == sorted(str(k.pk) for k in keys)
    assert second == []


def test_a_claim_carries_the_lease_it_wrote(healthy_keys):
    [key] = healthy_keys(1)
    now = timezone.now()
    [claim] = sweep.claim_now([key.pk], now=now)
    key.refresh_from_db()
    assert claim.lease_until() == key.next_probe_at == now + timedelta(seconds=django_settings.PROBE_LEASE_SECONDS)


def test_the_lease_outlasts_the_brokers_redelivery_by_default():
    redelivery = django_settings.CELERY_VISIBILITY_TIMEOUT + django_settings.CELERY_TASK_TIME_LIMIT
    assert django_settings.PROBE_LEASE_SECONDS > redelivery


def test_a_lease_shorter_than_redelivery_is_a_system_error(settings):
    settings.PROBE_LEASE_SECONDS = settings.CELERY_VISIBILITY_TIMEOUT + settings.CELERY_TASK_TIME_LIMIT
    assert "keys.E010" in [e.id for e in run_checks()]
    settings.PROBE_LEASE_SECONDS += 1
    assert "keys.E010" not in [e.id for e in run_checks()]


# --- leases at probe time -------------------------------------------------------------
def test_a_redelivered_batch_does_nothing_for_keys_claimed_again_since(healthy_keys, sandbox):
    [key] = healthy_keys(1)
    now = timezone.now()
    ApiKey.objects.filter(pk=key.pk).update(next_probe_at=now)
    old = sweep.claim_due(now)
    # The lease ran out; a sweep claimed the key again in a new slot.
    later = now + timedelta(seconds=django_settings.PROBE_LEASE_SECONDS + 1)
    new = sweep.claim_due(later)
    assert old[0].slot != new[0].slot
    summary = probe.run_batch(old)  # the old message comes back
    assert (summary.probed, summary.already_done) == (0, 1)
    assert sandbox.stats()["total"] == 0
    probe.run_batch(new)
    assert sandbox.stats()["total"] == 1
    assert list(ProbeResult.objects.values_list("slot", flat=True)) == [new[0].slot]


def test_probe_now_twice_in_the_same_second_probes_twice_and_leaves_no_lease(healthy_keys, sandbox):
    [key] = healthy_keys(1)
    now = timezone.now()
    [first] = sweep.claim_now([key.pk], now=now)
    probe.run_batch([first])
    [second] = sweep.claim_now([key.pk], now=now)
    probe.run_batch([second])
    assert second.slot == first.slot + 1
    assert sandbox.stats()["total"] == 2
    assert ProbeResult.objects.filter(key=key).count() == 2
    assert not is_leased(key, timezone.now())


def test_a_second_probe_now_before_the_first_ran_takes_the_key_over(healthy_keys, sandbox):
    [key] = healthy_keys(1)
    now = timezone.now()
    first = sweep.claim_now([key.pk], now=now)
    second = sweep.claim_now([key.pk], now=now + timedelta(microseconds=1))
    assert first[0].slot == second[0].slot
    assert probe.run_batch(first).already_done == 1
    assert probe.run_batch(second).outcomes == {Outcome.OK: 1}
    assert sandbox.stats()["total"] == 1
    assert not is_leased(key, timezone.now())


def test_a_batch_whose_slot_already_has_a_result_hands_its_lease_back(healthy_keys, sandbox):
    [key] = healthy_keys(1)
    now = timezone.now()
    [claim] = sweep.claim_now([key.pk], now=now)
    ProbeResult.objects.create(key=key, slot=claim.slot, outcome=Outcome.OK)
    assert probe.run_batch([claim]).already_done == 1
    assert sandbox.stats()["total"] == 0
    assert not is_leased(key, timezone.now())
    key.refresh_from_db()
    assert key.next_probe_at > now  # not due at once either: one interval on


# --- publishing -----------------------------------------------------------------------
class FailingAfter:
    """probe_batch.delay that publishes `ok` batches, then raises `exc`."""

    def __init__(self, ok, exc):
        self.ok, self.exc, self.published = ok, exc, []

    def __call__(self, batch):
        if len(self.published) >= self.ok:
            raise self.exc
        self.published.append(batch)


def test_a_partial_enqueue_failure_releases_only_the_unpublished_batches(healthy_keys, monkeypatch, settings):
    settings.PROBE_BATCH_SIZE = 2
    keys = healthy_keys(6)
    now = timezone.now()
    ApiKey.objects.update(next_probe_at=now - timedelta(seconds=1))
    delay = FailingAfter(1, OperationalError("broker gone"))
    monkeypatch.setattr(tasks.probe_batch, "delay", delay)
    assert tasks.sweep() == 2
    published = {c[0] for c in delay.published[0]}
    assert len(published) == 2
    for key in keys:
        key.refresh_from_db()
        if str(key.pk) in published:
            assert key.next_probe_at > timezone.now()  # still leased to the queued batch
        else:
            assert key.next_probe_at <= timezone.now()  # due again, not leased


@pytest.mark.parametrize(
    "exc",
    [
        OperationalError("redis down"),
        FileNotFoundError(2, "No such file or directory", "var/broker/out"),
        OSError(111, "Connection refused"),
        redis.exceptions.ConnectionError("Error 111 connecting"),
    ],
    ids=["kombu", "filesystem", "oserror", "redis"],
)
def test_enqueue_never_raises_for_the_broker_and_leaves_keys_due(healthy_keys, monkeypatch, exc, caplog):
    keys = healthy_keys(3)
    monkeypatch.setattr(tasks.probe_batch, "delay", FailingAfter(0, exc))
    assert tasks.enqueue_probes([k.pk for k in keys]) == 0
    assert ApiKey.objects.due_for_probe(timezone.now()).count() == 3
    assert "broker unreachable" in caplog.text


def test_a_published_batch_carries_ids_slots_and_leases_only(healthy_keys, monkeypatch):
    keys = healthy_keys(2)
    delay = FailingAfter(10, None)
    monkeypatch.setattr(tasks.probe_batch, "delay", delay)
    assert tasks.enqueue_probes([k.pk for k in keys]) == 2
    [batch] = delay.published
    for key_id, slot, lease in batch:
        row = ApiKey.objects.get(pk=key_id)
        assert (isinstance(slot, int), lease) == (True, row.next_probe_at.isoformat())


def test_a_limited_sweep_claims_the_longest_due_keys_first(healthy_keys):
    keys = healthy_keys(3)
    now = timezone.now()
    for minutes, key in zip([1, 3, 2], keys, strict=True):
        ApiKey.objects.filter(pk=key.pk).update(next_probe_at=now - timedelta(minutes=minutes))
    claimed = [c.key_id for c in sweep.claim_due(now, limit=2)]
    assert claimed == [str(keys[1].pk), str(keys[2].pk)]


def test_releasing_claims_leaves_a_key_someone_else_claimed_since(healthy_keys):
    keys = healthy_keys(3)
    now = timezone.now()
    claims = sweep.claim_now([k.pk for k in keys], now=now)
    [taken_over] = sweep.claim_now([keys[0].pk], now=now + timedelta(seconds=1))
    sweep.release(claims, now=now)
    assert set(ApiKey.objects.due_for_probe(now).values_list("pk", flat=True)) == {keys[1].pk, keys[2].pk}
    keys[0].refresh_from_db()
    assert keys[0].next_probe_at == taken_over.lease_until()


def test_a_batch_queued_before_leases_were_carried_is_still_probed(healthy_keys, sandbox):
    [key] = healthy_keys(1)
    [claim] = sweep.claim_now([key.pk])
    summary = probe.run_batch([[claim.key_id, claim.slot]])  # the old message shape
    assert summary.outcomes == {Outcome.OK: 1}
    assert sandbox.stats()["total"] == 1


def test_a_sweep_slot_is_the_time_the_key_was_due_not_the_time_of_the_sweep(healthy_keys):
    [key] = healthy_keys(1)
    now = timezone.now()
    due = now - timedelta(minutes=10)
    ApiKey.objects.filter(pk=key.pk).update(next_probe_at=due)
    [claim] = sweep.claim_due(now)
    assert claim.slot == int(due.timestamp())


def test_a_claimer_that_lost_one_key_still_claims_the_rest(healthy_keys, monkeypatch):
    keys = healthy_keys(3)
    now = timezone.now()
    for minutes, key in enumerate(keys, start=1):
        ApiKey.objects.filter(pk=key.pk).update(next_probe_at=now - timedelta(minutes=10 - minutes))
    read = sweep.candidates(ApiKey.objects.due_for_probe(now))
    assert [pk for pk, _ in read] == [k.pk for k in keys]
    sweep.claim_now([keys[0].pk], now=now)  # someone else takes the first one
    monkeypatch.setattr(sweep, "candidates", lambda *a, **k: read)
    assert [c.key_id for c in sweep.claim_due(now)] == [str(keys[1].pk), str(keys[2].pk)]


def test_a_key_revoked_after_it_was_read_is_not_claimed(healthy_keys, monkeypatch):
    [key] = healthy_keys(1)
    now = timezone.now()
    ApiKey.objects.filter(pk=key.pk).update(next_probe_at=now)
    read = sweep.candidates(ApiKey.objects.due_for_probe(now))
    ApiKey.objects.filter(pk=key.pk).update(revoked_at=now)
    monkeypatch.setattr(sweep, "candidates", lambda *a, **k: read)
    assert sweep.claim_due(now) == []


def test_a_claim_across_several_swap_chunks_claims_every_key_once(healthy_keys, monkeypatch):
    keys = healthy_keys(5)
    monkeypatch.setattr(sweep, "CAS_CHUNK", 2)
    now = timezone.now()
    ApiKey.objects.update(next_probe_at=now - timedelta(minutes=1))
    read = sweep.candidates(ApiKey.objects.due_for_probe(now))
    first = sweep.claim_due(now)
    monkeypatch.setattr(sweep, "candidates", lambda *a, **k: read)
    assert sorted(c.key_id for c in first) == sorted(str(k.pk) for k in keys)
    assert sweep.claim_due(now) == []
