"""The admin's date hierarchy on tables of millions of rows, by index probes.

Django's date hierarchy lists the days (or months, or years) that have rows with
`SELECT DISTINCT date_trunc(...)` over every row the list selects: on a million probe
results that reads the whole table (0.4 s at 50,000 keys, docs/PERFORMANCE.md). Here the
candidate periods between the first and the last row are checked with one EXISTS each,
all in one query; each EXISTS stops at the first row of its period that an index on the
field finds. Same answer, same periods, whatever the number of rows: at most 31 days,
12 months, or one per year between the first and the last row.
"""

from datetime import timedelta

from django.db import models
from django.db.models import Exists, Max, Min
from django.utils import timezone

KINDS = ("year", "month", "day")
# More candidate periods than this (days over years of rows, which the admin never asks
# for: it lists days within one month) go to Django's DISTINCT.
MAX_PERIODS = 100


def truncate(moment, kind):
    if kind == "year":
        return moment.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
    if kind == "month":
        return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def following(start, kind):
    """The start of the period after the one starting at `start` (same wall-clock zone)."""
    naive = start.replace(tzinfo=None)
    if kind == "year":
        naive = naive.replace(year=naive.year + 1)
    elif kind == "month":
        naive = (naive.replace(day=28) + timedelta(days=4)).replace(day=1)
    else:
        naive = naive + timedelta(days=1)
    return timezone.make_aware(naive, start.tzinfo) if timezone.is_aware(start) else naive


class IndexedDatesQuerySet(models.QuerySet):
    """A QuerySet whose datetimes() (what the date hierarchy calls) probes an index on the
    field instead of reading every row."""

    def datetimes(self, field_name, kind, order="ASC", tzinfo=None):
        """What Django's datetimes() lists, as a list (the date hierarchy only iterates);
        other kinds (hour, minute…) and over MAX_PERIODS candidates go to Django's."""
        if kind not in KINDS:
            return super().datetimes(field_name, kind, order, tzinfo)
        bounds = self.order_by().aggregate(first=Min(field_name), last=Max(field_name))
        if bounds["first"] is None:
            return []
        zone = tzinfo or (timezone.get_current_timezone() if timezone.is_aware(bounds["first"]) else None)
        first, last = (timezone.localtime(bounds[k], zone) if zone else bounds[k] for k in ("first", "last"))
        periods, start = [], truncate(first, kind)
        while start <= last:
            if len(periods) == MAX_PERIODS:
                return super().datetimes(field_name, kind, order, tzinfo)
            periods.append(start)
            start = following(start, kind)
        checks = {
            f"p{i}": Exists(
                self.order_by().filter(**{f"{field_name}__gte": p, f"{field_name}__lt": following(p, kind)})
            )
            for i, p in enumerate(periods)
        }
        # One row of answers: EXISTS per period, evaluated against the filtered rows.
        found = self.model._base_manager.annotate(**checks).values(*checks).order_by()[:1]
        answers = next(iter(found), {})
        present = [p for i, p in enumerate(periods) if answers.get(f"p{i}")]
        return present if order == "ASC" else present[::-1]
