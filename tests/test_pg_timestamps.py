"""console/pg_timestamps.py: timestamptz read by fromisoformat exactly as Django's loader
reads it (same instant, same tzinfo object, same errors), only inside the block, and
Django's loader back afterwards even when the block fails."""

import pytest
from django.db import connection, transaction

from console.pg_timestamps import IsoTimestamptzLoader, iso_timestamps

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="psycopg's loaders"),
]

VALUES = [
    "2025-03-20 00:00:00+00",
    "2025-03-20 23:59:59.999999+00",
    "2025-03-20 12:34:56.5+00",
    "2024-02-29 08:00:00+05:30",  # sent back in the session's zone (UTC)
    "0999-12-31 23:59:00+00",
    "9999-12-31 23:59:59.999999+00",
    "1970-01-01 00:00:00+00",
]


def loader_class():
    adapters = connection.connection.adapters
    return adapters.get_loader(adapters.types["timestamptz"].oid, 0)


def outcome(value, zone=None):
    """(value, its tzinfo, its isoformat) as read, or the error's type."""
    try:
        with connection.cursor() as cursor, transaction.atomic():
            if zone:
                cursor.execute("SET LOCAL TIME ZONE %s", [zone])
            cursor.execute(f"SELECT '{value}'::timestamptz")
            (read,) = cursor.fetchone()
    except Exception as e:  # noqa: BLE001 - that both loaders fail alike is what is compared
        return type(e)
    return read, read.tzinfo, read.isoformat()


@pytest.mark.parametrize("zone", [None, "Asia/Kolkata", "America/St_Johns"])
def test_the_same_values_and_errors_as_djangos_loader(zone):
    values = [*VALUES, "infinity", "-infinity", "0044-03-15 12:00:00+00 BC"]
    expected = [outcome(value, zone) for value in values]
    with iso_timestamps(connection):
        assert issubclass(loader_class(), IsoTimestamptzLoader)
        got = [outcome(value, zone) for value in values]
    assert got == expected
    assert not issubclass(loader_class(), IsoTimestamptzLoader)
    if zone is None:  # the case the export meets: all read, by fromisoformat
        assert all(isinstance(read, tuple) for read in got[: len(VALUES)])


def test_djangos_loader_is_back_after_a_failure():
    django_loader = loader_class()
    with pytest.raises(RuntimeError), iso_timestamps(connection):
        raise RuntimeError("the export failed")
    assert loader_class() is django_loader
