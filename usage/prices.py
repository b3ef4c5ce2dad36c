"""Model prices and the dry-run cost estimator. No network call, ever.

Prices are USD per 1M tokens (ModelPrice, seeded from usage/data/model_prices.csv and
edited by console admins). The price on a day is the model's newest row whose
`effective_date` is on or before that day.

Model names: an exact row wins. Otherwise a dated snapshot maps to its base model by
dropping the date suffix — `gpt-4.1-mini-2025-04-14` → `gpt-4.1-mini`, `gpt-4-0613` →
`gpt-4` (a trailing `-YYYY-MM-DD` or `-MMDD`). Nothing else is guessed: `o3-mini` is not
`o3`, and an unknown model is an `UnknownModel` error naming it.

Cached tokens: in OpenAI's usage objects `input_cached_tokens` are *part of*
`input_tokens`. So the cached ones are priced at the cached-input rate and only the rest
(input − cached) at the input rate. A model without a cached-input rate prices them at
the input rate.
"""

import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from django.utils.timezone import now as current_time

from .models import ModelPrice

MILLION = Decimal(1_000_000)
SNAPSHOT_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})$")


class UnknownModel(ValueError):
    """No price for this model on this day. The message names both, never anything else."""


def base_model(model):
    """`model` without a dated-snapshot suffix (itself when it has none)."""
    return SNAPSHOT_SUFFIX.sub("", model)


class PriceBook:
    """Prices in memory: load them once (`PriceBook.load()`), price many rows. The
    lookup rule is the module docstring's."""

    def __init__(self, prices):
        self._by_model = {}
        for price in sorted(prices, key=lambda p: p.effective_date, reverse=True):
            self._by_model.setdefault(price.model, []).append(price)

    @classmethod
    def load(cls):
        return cls(ModelPrice.objects.all())

    def models(self):
        return sorted(self._by_model)

    def effective_dates(self):
        """The days on which some model's price takes effect, sorted. Between two of them
        `price_on` gives every model the same price (or UnknownModel) whatever
        the day, so a run of days can be priced once (usage/reconcile.py)."""
        return sorted({price.effective_date for prices in self._by_model.values() for price in prices})

    def price_on(self, model, day):
        """The ModelPrice for `model` on `day`; raises UnknownModel."""
        for name in dict.fromkeys((model, base_model(model))):
            for price in self._by_model.get(name, ()):
                if price.effective_date <= day:
                    return price
        if self._by_model.get(model) or self._by_model.get(base_model(model)):
            raise UnknownModel(f"No price for model “{model}” effective on or before {day:%Y-%m-%d}.")
        raise UnknownModel(
            f"No price for model “{model}”. Add one under Usage › Model prices, or use one of: "
            + ", ".join(self.models()[:20])
            + ("…" if len(self._by_model) > 20 else "")
        )

    def estimate(self, model, input_tokens, output_tokens, cached_input_tokens=0, requests=1, on=None):
        """The Estimate for `requests` requests of these token counts each, at the price
        on day `on` (today, UTC, when None)."""
        for name, value in (
            ("input tokens", input_tokens),
            ("output tokens", output_tokens),
            ("cached input tokens", cached_input_tokens),
            ("requests", requests),
        ):
            if value is None or int(value) != value or value < 0:
                raise ValueError(f"The number of {name} must be a whole number, 0 or more.")
        if cached_input_tokens > input_tokens:
            raise ValueError("Cached input tokens are part of the input tokens: they cannot be more.")
        day = on or current_time().date()
        price = self.price_on(model, day)
        cached_rate = price.cached_input_per_1m if price.cached_input_per_1m is not None else price.input_per_1m
        uncached = input_tokens - cached_input_tokens
        return Estimate(
            model=model,
            price=price,
            day=day,
            requests=requests,
            input_tokens=uncached * requests,
            cached_input_tokens=cached_input_tokens * requests,
            output_tokens=output_tokens * requests,
            input_cost=Decimal(uncached * requests) * price.input_per_1m / MILLION,
            cached_input_cost=Decimal(cached_input_tokens * requests) * cached_rate / MILLION,
            output_cost=Decimal(output_tokens * requests) * price.output_per_1m / MILLION,
            cached_rate=cached_rate,
        )


@dataclass(frozen=True)
class Estimate:
    """A priced estimate. `input_tokens` are the uncached ones (input − cached), all
    counts already multiplied by `requests`."""

    model: str
    price: ModelPrice
    day: date
    requests: int
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    input_cost: Decimal
    cached_input_cost: Decimal
    output_cost: Decimal
    cached_rate: Decimal

    @property
    def total(self):
        return self.input_cost + self.cached_input_cost + self.output_cost

    def lines(self):
        """(label, tokens, rate per 1M, cost) rows for a breakdown table."""
        return [
            ("Input (uncached)", self.input_tokens, self.price.input_per_1m, self.input_cost),
            ("Cached input", self.cached_input_tokens, self.cached_rate, self.cached_input_cost),
            ("Output", self.output_tokens, self.price.output_per_1m, self.output_cost),
        ]


def price_on(model, day):
    """The ModelPrice for `model` on `day` (module docstring's rule); raises UnknownModel."""
    return PriceBook(ModelPrice.objects.filter(model__in={model, base_model(model)})).price_on(model, day)


def breakdown(model, input_tokens, output_tokens, cached_input_tokens=0, requests=1, on=None):
    """The Estimate (per-line costs) for a dry run; see PriceBook.estimate."""
    book = PriceBook(ModelPrice.objects.filter(model__in={model, base_model(model)}))
    if not book.models():
        book = PriceBook.load()  # so the error can list the models that have prices
    return book.estimate(model, input_tokens, output_tokens, cached_input_tokens, requests, on)


def estimate_cost(model, input_tokens, output_tokens, cached_input_tokens=0, requests=1, on=None):
    """USD cost of `requests` requests with these token counts each (per request), at the
    price on `on` (today when None). Raises UnknownModel, or ValueError for bad counts."""
    return breakdown(model, input_tokens, output_tokens, cached_input_tokens, requests, on).total
