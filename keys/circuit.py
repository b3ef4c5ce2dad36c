"""Circuit breaker per API host: stop hammering an API that is down.

State lives in the Circuit table so every worker and the admin see it. A batch loads the
rows for its hosts once (`Breakers.load`), decides in memory while its probes run, and
writes back at the end (`Breakers.save`) — not its whole view (last writer would win),
but what it saw, as updates that add up across batches running at once:

- closed: host failures (server error, network error, timeout) are ADDED to the row's
  `consecutive_failures` (`F() + n`); when the sum reaches CIRCUIT_FAILURE_THRESHOLD, a
  compare-and-swap from closed opens it for CIRCUIT_COOLDOWN_SECONDS.
- open: nothing is sent. After the cool-down one batch wins a compare-and-swap from open
  to half-open and sends a single trial probe; a half-open circuit whose trial batch has
  been silent for a whole cool-down (it died) is taken over by the next batch, again by
  compare-and-swap.
- half-open: the trial's real answer closes it; its failure re-opens it (compare-and-swap
  from half-open). A trial won but never sent (deferred) hands the circuit back open.
- Any real answer from the host (even a 401) closes the circuit and resets the count.

Outcomes the host did not give (skipped, the console's own errors, a secret that cannot
be decrypted) say nothing about the host and are not recorded. By hand, a circuit is
only ever closed (`Circuit.close`), never forced open.
"""

import logging
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from console.upstream import Outcome

from .display import outcome_label
from .models import Circuit, CircuitState

log = logging.getLogger(__name__)

NOT_FROM_HOST = {Outcome.SKIPPED_CIRCUIT_OPEN, Outcome.ERROR, Outcome.DECRYPTION_FAILED}


@dataclass
class Breaker:
    host: str
    state: str
    failures: int
    open_until: object = None
    trial_in_flight: bool = False
    last_outcome: str = ""
    changed: bool = False
    # What this batch saw, to be added to the row: host failures since its last real
    # answer, whether a real answer came at all, and whether it holds the half-open trial.
    new_failures: int = 0
    recovered: bool = False
    holds_trial: bool = False

    def allow(self):
        """May a probe go to this host now? In half-open, only the single trial may."""
        if self.state == CircuitState.CLOSED:
            return True
        if self.state == CircuitState.HALF_OPEN and not self.trial_in_flight:
            self.trial_in_flight = True
            return True
        return False

    def record(self, outcome, now):
        if outcome in NOT_FROM_HOST:
            return
        self.last_outcome = outcome
        self.changed = True
        if outcome in Outcome.host_failures():
            self.failures += 1
            self.new_failures += 1
            if self.state == CircuitState.HALF_OPEN or self.failures >= settings.CIRCUIT_FAILURE_THRESHOLD:
                self.open(now)
        else:
            # Any real answer (even a 401) shows the host is up.
            self.recovered = True
            self.failures = self.new_failures = 0
            self.state = CircuitState.CLOSED

    def open(self, now):
        # In memory only, for the rest of this batch; save() writes the transition.
        self.state = CircuitState.OPEN
        self.open_until = now + timedelta(seconds=settings.CIRCUIT_COOLDOWN_SECONDS)


class Breakers(dict):
    """host → Breaker for one batch."""

    @classmethod
    def load(cls, hosts, now=None):
        now = now or timezone.now()
        breakers = cls()
        rows = current_rows(hosts)
        for host in hosts:
            row = rows[host]
            state = row.state
            if state == CircuitState.OPEN and row.open_until and row.open_until <= now:
                # Cool-down over: whoever flips it to half-open sends the trial probe.
                won = Circuit.objects.filter(pk=row.pk, state=CircuitState.OPEN, open_until=row.open_until).update(
                    state=CircuitState.HALF_OPEN, updated=now
                )
                state = CircuitState.HALF_OPEN if won else CircuitState.OPEN
            elif state == CircuitState.HALF_OPEN:
                # Another worker holds the trial; wait for its verdict, unless that worker
                # has been silent for a whole cool-down (it died): then take the trial over.
                stale = now - timedelta(seconds=settings.CIRCUIT_COOLDOWN_SECONDS)
                won = Circuit.objects.filter(pk=row.pk, state=CircuitState.HALF_OPEN, updated__lte=stale).update(
                    updated=now
                )
                state = CircuitState.HALF_OPEN if won else CircuitState.OPEN
            breakers[host] = Breaker(
                host=host,
                state=state,
                failures=row.consecutive_failures,
                open_until=row.open_until,
                holds_trial=state == CircuitState.HALF_OPEN,
            )
        return breakers

    def save(self, now=None):
        now = now or timezone.now()
        for b in self.values():
            save_breaker(b, now)


def current_rows(hosts):
    """{host: Circuit} as read now, creating the rows not there yet: what load() then
    tries to swap."""
    rows = {c.host: c for c in Circuit.objects.filter(host__in=hosts)}
    for host in set(hosts) - set(rows):
        rows[host], _ = Circuit.objects.get_or_create(host=host)
    return rows


def save_breaker(b, now):
    """Write what one batch saw of one host, as updates that add up (see the module)."""
    row = Circuit.objects.filter(host=b.host)
    if b.holds_trial and not b.changed:
        # We won the trial but sent nothing (e.g. deferred): let the next batch try.
        row.filter(state=CircuitState.HALF_OPEN).update(state=CircuitState.OPEN, open_until=now, updated=now)
        return
    if not b.changed:
        return
    if b.recovered:
        # The host answered: closed, counting only the failures seen after that answer.
        if b.holds_trial:
            log.warning(
                "circuit for %s closed: the trial probe got an answer (%s)", b.host, outcome_label(b.last_outcome)
            )
        row.update(
            state=CircuitState.CLOSED,
            consecutive_failures=b.new_failures,
            open_until=None,
            last_outcome=b.last_outcome,
            updated=now,
        )
    else:
        row.update(
            consecutive_failures=F("consecutive_failures") + b.new_failures, last_outcome=b.last_outcome, updated=now
        )
    if b.holds_trial and b.state == CircuitState.OPEN:
        # Our trial failed: re-open for another cool-down.
        if row.filter(state=CircuitState.HALF_OPEN).update(
            state=CircuitState.OPEN, open_until=now + timedelta(seconds=settings.CIRCUIT_COOLDOWN_SECONDS)
        ):
            log.warning("circuit for %s re-opened: the trial probe failed (%s)", b.host, outcome_label(b.last_outcome))
    if b.new_failures:
        # Failures from every batch add up; whoever's update crosses the threshold opens it.
        opened = row.filter(
            state=CircuitState.CLOSED, consecutive_failures__gte=settings.CIRCUIT_FAILURE_THRESHOLD
        ).update(
            state=CircuitState.OPEN,
            opened_at=now,
            # Until when this batch already told its skipped keys to wait, if it opened it.
            open_until=b.open_until
            if b.state == CircuitState.OPEN
            else now + timedelta(seconds=settings.CIRCUIT_COOLDOWN_SECONDS),
        )
        if opened:
            log.warning(
                "circuit for %s opened after %d host failures in a row (%s): probes to it pause for %d s",
                b.host,
                settings.CIRCUIT_FAILURE_THRESHOLD,
                outcome_label(b.last_outcome),
                settings.CIRCUIT_COOLDOWN_SECONDS,
            )
