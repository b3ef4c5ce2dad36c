"""A dry-run cost estimate from the console's price table: no network call, nothing
written. Token counts are per request; --requests multiplies them."""

from datetime import datetime

from django.core.management.base import CommandError

from console.leakguard import GuardedCommand
from usage import prices


def parse_day(value):
    try:
        return datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        raise CommandError(f"--on takes a date as YYYY-MM-DD (got “{value}”).") from None


def usd(amount):
    return f"${amount:,.6f}"


class Command(GuardedCommand):
    help = (
        "Estimate what requests to a model cost, from the console's price table (Usage › Model prices). "
        "Token counts are per request; cached input tokens are part of the input tokens. No network call."
    )

    def add_arguments(self, parser):
        parser.add_argument("--model", required=True, help="Model name, e.g. gpt-4.1-mini (dated snapshots map to it).")
        parser.add_argument("--input-tokens", type=int, required=True, help="Input tokens per request (with cached).")
        parser.add_argument("--output-tokens", type=int, required=True, help="Output tokens per request.")
        parser.add_argument(
            "--cached-input-tokens", type=int, default=0, help="Of the input tokens, how many are cached (default 0)."
        )
        parser.add_argument("--requests", type=int, default=1, help="Number of requests (default 1).")
        parser.add_argument("--on", help="Price on this day, YYYY-MM-DD (default: today, UTC).")

    def handle(self, *args, model, input_tokens, output_tokens, cached_input_tokens, requests, on, **options):
        try:
            estimate = prices.breakdown(
                model, input_tokens, output_tokens, cached_input_tokens, requests, parse_day(on) if on else None
            )
        except ValueError as e:  # UnknownModel included
            raise CommandError(str(e)) from None
        price = estimate.price
        self.stdout.write(
            f"{model}: {requests:,} request(s), priced as “{price.model}” effective {price.effective_date:%Y-%m-%d}"
            f" for {estimate.day:%Y-%m-%d}"
        )
        if price.source:
            self.stdout.write(f"Source: {price.source}")
        self.stdout.write(f"{'':<18}{'tokens':>16}{'USD per 1M':>14}{'cost':>16}")
        for label, tokens, rate, cost in estimate.lines():
            self.stdout.write(f"{label:<18}{tokens:>16,}{rate:>14,.4f}{usd(cost):>16}")
        self.stdout.write(f"{'Total':<48}{usd(estimate.total):>16}")
