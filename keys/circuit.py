"""Circuit breaker per API host: stop hammering an API that is down.

State lives in the Circuit table so every worker and the admin see it. A batch loads the
rows for its hosts once (`Breakers.load`), decides in memory while its probes run, and
writes the new state back at the end (`Breakers.save`). Opening needs
CIRCUIT_FAILURE_THRESHOLD consecutive server/network/timeout outcomes on one host, from
any keys; after CIRCUIT_COOLDOWN_SECONDS one worker wins a compare-and-swap to half-open
and sends a single trial probe; its success closes the circuit, its failure re-opens it.
"""

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from console.upstream import Outcome

from .models import Circuit, CircuitState


@dataclass
class Breaker:
    host: str
    state: str
    failures: int
    open_until: object = None
    opened_at: object = None
    trial_in_flight: bool = False
    last_outcome: str = ""
    changed: bool = False

    def allow(self):
        """May a probe go to this host now? In half-open, only the single trial may."""
        if self.state == CircuitState.CLOSED:
            return True
        if self.state == CircuitState.HALF_OPEN and not self.trial_in_flight:
            self.trial_in_flight = True
            return True
        return False

    def record(self, outcome, now):
        self.last_outcome = outcome
        self.changed = True
        if outcome in Outcome.host_failures():
            self.failures += 1
            if self.state == CircuitState.HALF_OPEN or self.failures >= settings.CIRCUIT_FAILURE_THRESHOLD:
                self.open(now)
        elif outcome != Outcome.SKIPPED_CIRCUIT_OPEN:
            # Any real answer (even a 401) shows the host is up.
            self.failures = 0
            self.state = CircuitState.CLOSED
            self.open_until = None
            self.trial_in_flight = False

    def open(self, now):
        if self.state != CircuitState.OPEN:
            self.opened_at = now
        self.state = CircuitState.OPEN
        self.open_until = now + timedelta(seconds=settings.CIRCUIT_COOLDOWN_SECONDS)
        self.trial_in_flight = False


class Breakers(dict):
    """host → Breaker for one batch."""

    @classmethod
    def load(cls, hosts, now=None):
        now = now or timezone.now()
        breakers = cls()
        rows = {c.host: c for c in Circuit.objects.filter(host__in=hosts)}
        for host in hosts:
            row = rows.get(host)
            if row is None:
                row, _ = Circuit.objects.get_or_create(host=host)
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
                opened_at=row.opened_at,
            )
        return breakers

    def save(self, now=None):
        now = now or timezone.now()
        for b in self.values():
            if b.state == CircuitState.HALF_OPEN and not b.changed:
                # We won the trial but sent nothing (e.g. deferred): let the next batch try.
                b.state, b.open_until, b.changed = CircuitState.OPEN, now, True
            if not b.changed:
                continue
            Circuit.objects.filter(host=b.host).update(
                state=b.state,
                consecutive_failures=b.failures,
                open_until=b.open_until,
                opened_at=b.opened_at,
                last_outcome=b.last_outcome,
                updated=now,
            )
