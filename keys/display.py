"""How the key, probe and circuit admins show times and outcomes to people: times with
seconds and the time zone, outcome names instead of codes. Pure: nothing here queries."""

from django.utils import timezone

from console.upstream import Outcome

NEVER = "—"


def moment(when):
    """“2026-11-26 02:31:07 UTC” in the console's time zone (settings.TIME_ZONE); “—” for None."""
    if when is None:
        return NEVER
    local = timezone.localtime(when)
    return f"{local:%Y-%m-%d %H:%M:%S} {local.tzname()}"


def outcome_label(code):
    """“Invalid key” for "invalid_key"; an unknown code as it is; “Never” for none."""
    if not code:
        return "Never"
    return Outcome(code).label if code in Outcome.values else code
