"""Seed ModelPrice from the committed usage/data/model_prices.csv (prices per 1M tokens,
each row with its source). Rows already present (same model and effective date) are
left as they are: an admin's edit is never overwritten. Reversing removes the seeded
rows that still hold the file's values."""

import csv
from decimal import Decimal
from pathlib import Path

from django.db import migrations

PRICE_FILE = Path(__file__).resolve().parent.parent / "data" / "model_prices.csv"


def rows():
    with open(PRICE_FILE, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            yield {
                "model": row["model"].strip(),
                "effective_date": row["effective_date"].strip(),
                "input_per_1m": Decimal(row["input"]),
                "cached_input_per_1m": Decimal(row["cached_input"]) if row["cached_input"].strip() else None,
                "output_per_1m": Decimal(row["output"]),
                "source": row["source"].strip()[:300],
            }


def seed(apps, schema_editor):
    ModelPrice = apps.get_model("usage", "ModelPrice")
    for row in rows():
        key = {"model": row.pop("model"), "effective_date": row.pop("effective_date")}
        ModelPrice.objects.get_or_create(**key, defaults=row)


def unseed(apps, schema_editor):
    ModelPrice = apps.get_model("usage", "ModelPrice")
    for row in rows():
        ModelPrice.objects.filter(**row).delete()


class Migration(migrations.Migration):
    dependencies = [("usage", "0003_foundation_prices_budget_alerts")]

    operations = [migrations.RunPython(seed, unseed)]
