"""The circuit breaker's shared state: batches running at once add up their failures,
transitions are compare-and-swaps (never a stale overwrite), one trial at a time, and a
circuit closed by hand brings the keys it skipped back."""

from datetime import timedelta

import pytest
import redis
from django.conf import settings as django_settings
from django.utils import timezone

from console.upstream import Outcome
from keys import probe, sweep
from keys.circuit import Breakers
from keys.models import ApiKey, Circuit, CircuitState

HOST = "api.example.test"


@pytest.fixture(autouse=True)
def breaker_settings(settings):
    settings.CIRCUIT_FAILURE_THRESHOLD = 4
    settings.CIRCUIT_COOLDOWN_SECONDS = 60
    return settings


def circuit():
    return Circuit.objects.get(host=HOST)


def test_failures_of_batches_running_at_once_add_up_and_open_the_circuit(db):
    now = timezone.now()
    a, b = Breakers.load({HOST}, now=now), Breakers.load({HOST}, now=now)
    for breakers in (a, b):
        for _ in range(2):
            breakers[HOST].record(Outcome.SERVER_ERROR, now)
    a.save(now)
    assert (circuit().state, circuit().consecutive_failures) == (CircuitState.CLOSED, 2)
    assert (circuit().last_outcome, circuit().updated) == (Outcome.SERVER_ERROR, now)
    b.save(now)
    assert (circuit().state, circuit().consecutive_failures) == (CircuitState.OPEN, 4)
    assert circuit().open_until == now + timedelta(seconds=60)
    assert circuit().opened_at == now


def test_a_batch_with_a_stale_view_never_closes_a_circuit_another_opened(db):
    now = timezone.now()
    stale = Breakers.load({HOST}, now=now)  # loaded while closed
    opener = Breakers.load({HOST}, now=now)
    for _ in range(4):
        opener[HOST].record(Outcome.TIMEOUT, now)
    opener.save(now)
    stale[HOST].record(Outcome.NETWORK_ERROR, now)
    stale.save(now)
    assert (circuit().state, circuit().consecutive_failures) == (CircuitState.OPEN, 5)


def test_a_real_answer_closes_the_circuit_and_resets_the_count(db):
    now = timezone.now()
    Circuit.objects.create(host=HOST, consecutive_failures=3)
    breakers = Breakers.load({HOST}, now=now)
    breakers[HOST].record(Outcome.INVALID_KEY, now)
    breakers[HOST].record(Outcome.SERVER_ERROR, now)
    breakers.save(now)
    assert (circuit().state, circuit().consecutive_failures) == (CircuitState.CLOSED, 1)


def test_outcomes_the_host_did_not_give_say_nothing_about_it(db):
    now = timezone.now()
    Circuit.objects.create(host=HOST, consecutive_failures=3)
    breakers = Breakers.load({HOST}, now=now)
    for outcome in (Outcome.ERROR, Outcome.DECRYPTION_FAILED, Outcome.SKIPPED_CIRCUIT_OPEN):
        breakers[HOST].record(outcome, now)
    breakers.save(now)
    assert circuit().consecutive_failures == 3


def test_a_failed_trial_reopens_the_circuit_for_another_cool_down(db):
    now = timezone.now()
    Circuit.objects.create(host=HOST, state=CircuitState.OPEN, open_until=now - timedelta(seconds=1))
    breakers = Breakers.load({HOST}, now=now)
    assert breakers[HOST].allow()
    breakers[HOST].record(Outcome.SERVER_ERROR, now)
    later = now + timedelta(seconds=2)
    breakers.save(later)
    assert circuit().state == CircuitState.OPEN
    assert circuit().open_until == later + timedelta(seconds=60)


def test_a_trial_won_but_never_sent_hands_the_circuit_back_open(db):
    now = timezone.now()
    Circuit.objects.create(host=HOST, state=CircuitState.OPEN, open_until=now - timedelta(seconds=1))
    breakers = Breakers.load({HOST}, now=now)
    assert breakers[HOST].state == CircuitState.HALF_OPEN
    later = now + timedelta(seconds=3)
    breakers.save(later)
    assert (circuit().state, circuit().open_until, circuit().updated) == (CircuitState.OPEN, later, later)
    # …so the next batch can win the trial.
    assert Breakers.load({HOST}, now=later)[HOST].state == CircuitState.HALF_OPEN


def test_a_stale_half_open_trial_is_taken_over_by_one_batch(db):
    now = timezone.now()
    Circuit.objects.create(host=HOST, state=CircuitState.HALF_OPEN, updated=now - timedelta(seconds=61))
    first = Breakers.load({HOST}, now=now)
    second = Breakers.load({HOST}, now=now)
    assert first[HOST].state == CircuitState.HALF_OPEN
    assert second[HOST].state == CircuitState.OPEN


def test_a_live_half_open_trial_is_left_to_its_batch(db):
    now = timezone.now()
    Circuit.objects.create(host=HOST, state=CircuitState.HALF_OPEN, updated=now - timedelta(seconds=59))
    assert Breakers.load({HOST}, now=now)[HOST].state == CircuitState.OPEN


def test_a_successful_trial_closes_the_circuit_in_the_database(db):
    now = timezone.now()
    Circuit.objects.create(host=HOST, state=CircuitState.OPEN, consecutive_failures=7, open_until=now)
    breakers = Breakers.load({HOST}, now=now)
    assert breakers[HOST].allow()
    breakers[HOST].record(Outcome.OK, now)
    later = now + timedelta(seconds=1)
    breakers.save(later)
    row = circuit()
    assert (row.state, row.consecutive_failures, row.open_until) == (CircuitState.CLOSED, 0, None)
    assert (row.last_outcome, row.updated) == (Outcome.OK, later)


def test_an_open_circuit_half_opens_exactly_when_its_cool_down_ends(db):
    now = timezone.now()
    Circuit.objects.create(host=HOST, state=CircuitState.OPEN, open_until=now)
    assert Breakers.load({HOST}, now=now)[HOST].state == CircuitState.HALF_OPEN


def test_the_batch_that_half_opens_a_circuit_marks_the_trial_as_live(db):
    now = timezone.now()
    Circuit.objects.create(
        host=HOST, state=CircuitState.OPEN, open_until=now - timedelta(seconds=1), updated=now - timedelta(hours=1)
    )
    assert Breakers.load({HOST}, now=now)[HOST].state == CircuitState.HALF_OPEN
    # A fresh trial, not a stale one: nobody takes it over yet.
    assert Breakers.load({HOST}, now=now)[HOST].state == CircuitState.OPEN
    assert circuit().updated == now


def test_half_opening_one_host_leaves_other_hosts_alone(db):
    now = timezone.now()
    for host in (HOST, "other.example.test"):
        Circuit.objects.create(host=host, state=CircuitState.OPEN, open_until=now - timedelta(seconds=1))
    Breakers.load({HOST}, now=now)
    assert Circuit.objects.get(host="other.example.test").state == CircuitState.OPEN


@pytest.mark.parametrize(
    "state, updated_ago", [(CircuitState.OPEN, 0), (CircuitState.HALF_OPEN, 120)], ids=["cool-down", "stale-trial"]
)
def test_a_batch_that_read_the_circuit_before_another_took_the_trial_does_not_take_it(
    db, monkeypatch, state, updated_ago
):
    from keys import circuit as circuits

    now = timezone.now()
    Circuit.objects.create(
        host=HOST, state=state, open_until=now - timedelta(seconds=1), updated=now - timedelta(seconds=updated_ago)
    )
    read_before = circuits.current_rows({HOST})
    assert Breakers.load({HOST}, now=now)[HOST].state == CircuitState.HALF_OPEN
    monkeypatch.setattr(circuits, "current_rows", lambda hosts: read_before)
    assert Breakers.load({HOST}, now=now)[HOST].state == CircuitState.OPEN


@pytest.mark.parametrize(
    "read_state, now_state, open_for",
    [(CircuitState.OPEN, CircuitState.OPEN, 60), (CircuitState.HALF_OPEN, CircuitState.CLOSED, 0)],
    ids=["re-opened-since", "closed-since"],
)
def test_a_circuit_that_changed_since_it_was_read_is_not_half_opened(db, monkeypatch, read_state, now_state, open_for):
    from keys import circuit as circuits

    now = timezone.now()
    Circuit.objects.create(
        host=HOST, state=read_state, open_until=now - timedelta(seconds=1), updated=now - timedelta(seconds=120)
    )
    read_before = circuits.current_rows({HOST})
    Circuit.objects.filter(host=HOST).update(state=now_state, open_until=now + timedelta(seconds=open_for))
    monkeypatch.setattr(circuits, "current_rows", lambda hosts: read_before)
    assert Breakers.load({HOST}, now=now)[HOST].state == CircuitState.OPEN
    assert circuit().state == now_state


def test_taking_over_one_stale_trial_leaves_other_hosts_trials_alone(db):
    now = timezone.now()
    stale = now - timedelta(seconds=120)
    for host in (HOST, "other.example.test"):
        Circuit.objects.create(host=host, state=CircuitState.HALF_OPEN, updated=stale)
    Breakers.load({HOST}, now=now)
    assert Circuit.objects.get(host="other.example.test").updated == stale


def test_failures_counted_while_another_batch_holds_the_trial_do_not_end_that_trial(db):
    now = timezone.now()
    ours = Breakers.load({HOST}, now=now)  # loaded while closed
    opened_at = now - timedelta(seconds=90)
    Circuit.objects.filter(host=HOST).update(
        state=CircuitState.HALF_OPEN, opened_at=opened_at, open_until=now - timedelta(seconds=30), updated=now
    )
    for _ in range(4):
        ours[HOST].record(Outcome.TIMEOUT, now)
    ours.save(now)
    row = circuit()
    assert (row.state, row.opened_at, row.consecutive_failures) == (CircuitState.HALF_OPEN, opened_at, 4)


def test_a_circuit_a_batch_opened_stays_open_until_the_time_its_skipped_keys_were_given(db):
    now = timezone.now()
    breakers = Breakers.load({HOST}, now=now)
    for _ in range(4):
        breakers[HOST].record(Outcome.NETWORK_ERROR, now)
    breakers.save(now + timedelta(seconds=5))
    assert circuit().open_until == breakers[HOST].open_until == now + timedelta(seconds=60)


# --- with keys: skipping, scheduling and closing by hand --------------------------------
@pytest.fixture
def sandbox_keys(make_key, sandbox, project, settings):
    settings.OPENAI_BASE_URL = sandbox.openai_url
    settings.PROBE_PROJECT_RPM_SHARE = 1.0
    redis.from_url(django_settings.REDIS_URL).flushdb()

    def make(n):
        keys = []
        for _ in range(n):
            key, secret = make_key()
            sandbox.register(secret, fault="healthy", project=project.openai_project_id)
            keys.append(key)
        return keys

    return make


def test_a_key_skipped_by_an_open_circuit_comes_back_right_after_the_cool_down(sandbox_keys, sandbox):
    [key] = sandbox_keys(1)
    open_until = timezone.now() + timedelta(seconds=30)
    Circuit.objects.create(host=probe.host_of(key), state=CircuitState.OPEN, open_until=open_until)
    summary = probe.run_batch(sweep.claim_now([key.pk]))
    assert summary.outcomes == {Outcome.SKIPPED_CIRCUIT_OPEN: 1}
    assert sandbox.stats()["total"] == 0
    key.refresh_from_db()
    assert key.next_probe_at == open_until + Circuit.RECHECK_AFTER_OPEN
    assert key.last_probe_outcome == ""  # not the key's outcome


def test_a_far_open_until_never_pushes_a_key_past_one_probe_interval(sandbox_keys, settings):
    [key] = sandbox_keys(1)
    far = timezone.now().replace(year=2099)
    Circuit.objects.create(host=probe.host_of(key), state=CircuitState.OPEN, open_until=far)
    probe.run_batch(sweep.claim_now([key.pk]))
    key.refresh_from_db()
    assert key.next_probe_at <= timezone.now() + timedelta(seconds=settings.PROBE_INTERVAL_SECONDS + 1)


def test_closing_a_circuit_by_hand_makes_the_keys_it_skipped_due(sandbox_keys, make_key, project, sandbox):
    keys = sandbox_keys(3)
    elsewhere, _ = make_key(base_url="http://127.0.0.1:9/v1")
    far = timezone.now().replace(year=2099)
    row = Circuit.objects.create(host=probe.host_of(keys[0]), state=CircuitState.OPEN, open_until=far)
    probe.run_batch(sweep.claim_now([k.pk for k in keys]))
    later = timezone.now() + timedelta(minutes=5)
    ApiKey.objects.filter(pk=elsewhere.pk).update(next_probe_at=later)
    now = timezone.now()
    assert row.close(now) == 3
    row.refresh_from_db()
    assert (row.state, row.open_until, row.consecutive_failures) == (CircuitState.CLOSED, None, 0)
    assert set(ApiKey.objects.due_for_probe(now).values_list("pk", flat=True)) == {k.pk for k in keys}
    elsewhere.refresh_from_db()
    assert elsewhere.next_probe_at == later  # another host's key is left alone
    assert probe.run_batch(sweep.claim_due(now)).outcomes == {Outcome.OK: 3}


def test_closing_a_closed_circuit_changes_no_key(sandbox_keys):
    [key] = sandbox_keys(1)
    row = Circuit.objects.create(host=probe.host_of(key))
    ApiKey.objects.filter(pk=key.pk).update(next_probe_at=timezone.now() + timedelta(seconds=30))
    assert row.close(timezone.now()) == 0
