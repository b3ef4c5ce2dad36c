"""Small server-side SVG charts for the admin's spend sections: no JavaScript, no CDN.

Each builder returns a SafeString holding one inline <svg role="img"> whose <title> says
what it shows and whose <desc> gives the figures in words (what a screen reader reads).
Every piece of text that reaches the markup — titles, project names, amounts — goes
through `format_html`/`escape`; numbers are formatted here, never taken as markup. Colours
are SVG presentation attributes, not `style=`, so the console's CSP (style-src 'self')
allows them.
"""

from dataclasses import dataclass
from decimal import Decimal

from django.utils.html import format_html
from django.utils.safestring import mark_safe

from console import svg
from console.svg import coordinate as _n
from console.svg import text as _text

BILLED = "#1565c0"
ESTIMATED = "#90caf9"
CUMULATIVE = "#2e7d32"
BUDGET = "#c62828"
AXIS = "#757575"
TEXT = "#424242"


@dataclass(frozen=True)
class DaySpend:
    """One day's spend: billed (the Costs API) and estimated (usage × prices, where a
    day has no billed cost)."""

    day: object  # datetime.date
    billed: Decimal = Decimal(0)
    estimated: Decimal = Decimal(0)

    @property
    def total(self):
        return self.billed + self.estimated


@dataclass(frozen=True)
class Total:
    """One bar of a totals chart: a label (a project's name) and its spend."""

    label: str
    billed: Decimal = Decimal(0)
    estimated: Decimal = Decimal(0)

    @property
    def total(self):
        return self.billed + self.estimated


def usd(amount):
    return f"${Decimal(amount):,.2f}"


def _svg(width, height, title, desc, body):
    return svg.svg(width, height, title, desc, body, css_class="spend-chart")


def _legend(x, y, items):
    """Swatches and labels in a row: `items` are (colour, label, kind), kind "box" (a
    bar's colour), "line" or "dashed"."""
    parts = []
    for colour, label, kind in items:
        if kind == "box":
            parts.append(
                format_html('<rect x="{}" y="{}" width="10" height="10" fill="{}"/>', _n(x), _n(y - 9), colour)
            )
        else:
            parts.append(
                format_html(
                    '<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{}" stroke-width="2"{}/>',
                    _n(x),
                    _n(y - 4),
                    _n(x + 14),
                    _n(y - 4),
                    colour,
                    mark_safe(' stroke-dasharray="5 3"') if kind == "dashed" else "",
                )
            )
        parts.append(_text(x + 18, y, label))
        x += 26 + 7 * len(label)
    return mark_safe("".join(parts))


def daily_spend_chart(days, budget, title, width=720, height=260):
    """This month's daily spend (bars: billed, with estimated stacked on top; right axis)
    and the cumulative spend against the budget (a line and a horizontal dashed line;
    left axis). `days`: DaySpend for every day of the month so far; `budget`: USD or None."""
    days = list(days)
    left, right, top, bottom = 64, 64, 28, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    cumulative, running = [], Decimal(0)
    for d in days:
        running += d.total
        cumulative.append(running)
    daily_max = max((d.total for d in days), default=Decimal(0)) or Decimal(1)
    cum_max = max([running, budget or Decimal(0)]) or Decimal(1)
    cum_max *= Decimal("1.05")
    slot = plot_w / max(len(days), 1)
    bar_w = max(slot * 0.7, 1)
    base = top + plot_h

    def y_cum(v):
        return base - float(v / cum_max) * plot_h

    def y_day(v):
        return float(v / daily_max) * plot_h * 0.9

    parts = [
        format_html(
            '<line x1="{0}" y1="{1}" x2="{0}" y2="{2}" stroke="{4}"/><line x1="{0}" y1="{2}" x2="{3}" y2="{2}" '
            'stroke="{4}"/><line x1="{3}" y1="{1}" x2="{3}" y2="{2}" stroke="{4}"/>',
            _n(left),
            _n(top),
            _n(base),
            _n(left + plot_w),
            AXIS,
        ),
        _text(left - 6, top + 4, usd(cum_max), "end", 10),
        _text(left - 6, base, "$0", "end", 10),
        _text(left + plot_w + 6, base - plot_h * 0.9 + 4, usd(daily_max if running else 0), "start", 10),
        _text(left + plot_w + 6, base, "$0", "start", 10),
        _text(left - 6, top - 10, "cumulative", "end", 10, AXIS),
        _text(left + plot_w + 6, top - 10, "daily", "start", 10, AXIS),
    ]
    for i, d in enumerate(days):
        x = left + i * slot + (slot - bar_w) / 2
        hb, he = y_day(d.billed), y_day(d.estimated)
        tip = f"{d.day:%Y-%m-%d}: {usd(d.billed)} billed, {usd(d.estimated)} estimated"
        parts.append(
            format_html(
                '<g><title>{}</title><rect x="{}" y="{}" width="{}" height="{}" fill="{}"/>'
                '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"/></g>',
                tip,
                _n(x),
                _n(base - hb),
                _n(bar_w),
                _n(hb),
                BILLED,
                _n(x),
                _n(base - hb - he),
                _n(bar_w),
                _n(he),
                ESTIMATED,
            )
        )
        if i == 0 or (i + 1) % 5 == 0:
            parts.append(_text(x + bar_w / 2, base + 14, f"{d.day.day}", "middle", 10))
    if cumulative:
        points = " ".join(f"{_n(left + (i + 0.5) * slot)},{_n(y_cum(v))}" for i, v in enumerate(cumulative))
        parts.append(
            format_html('<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>', points, CUMULATIVE)
        )
    if budget:
        yb = y_cum(budget)
        parts.append(
            format_html(
                '<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{}" stroke-width="2" stroke-dasharray="5 3"/>',
                _n(left),
                _n(yb),
                _n(left + plot_w),
                _n(yb),
                BUDGET,
            )
        )
        parts.append(_text(left + 4, yb - 4, f"budget {usd(budget)}", "start", 10, BUDGET))
    parts.append(
        _legend(
            left,
            height - 4,
            [
                (BILLED, "billed", "box"),
                (ESTIMATED, "estimated", "box"),
                (CUMULATIVE, "cumulative", "line"),
                (BUDGET, "budget", "dashed"),
            ],
        )
    )
    billed = sum((d.billed for d in days), Decimal(0))
    estimated = sum((d.estimated for d in days), Decimal(0))
    desc = (
        f"{len(days)} day(s): {usd(billed)} billed and {usd(estimated)} estimated, "
        f"{usd(running)} in all; budget {usd(budget) if budget else 'not set'}."
    )
    return _svg(width, height, title, desc, mark_safe("".join(parts)))


def totals_chart(totals, title, width=720, bar_h=18):
    """Horizontal bars, one per row of `totals` (Total: billed, with estimated after it),
    largest first, each labelled with its name and amount."""
    totals = sorted(totals, key=lambda t: t.total, reverse=True)
    label_w, amount_w, top = 200, 110, 10
    height = top + len(totals) * (bar_h + 6) + 24
    plot_w = width - label_w - amount_w
    most = max((t.total for t in totals), default=Decimal(0)) or Decimal(1)
    rows = []
    for i, t in enumerate(totals):
        y = top + i * (bar_h + 6)
        wb = float(t.billed / most) * plot_w
        we = float(t.estimated / most) * plot_w
        name = t.label if len(t.label) <= 30 else t.label[:29] + "…"
        rows.append(
            format_html(
                '<g><title>{}</title>{}<rect x="{}" y="{}" width="{}" height="{}" fill="{}"/>'
                '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"/>{}</g>',
                f"{t.label}: {usd(t.billed)} billed, {usd(t.estimated)} estimated",
                _text(label_w - 8, y + bar_h - 5, name, "end"),
                _n(label_w),
                _n(y),
                _n(wb),
                bar_h,
                BILLED,
                _n(label_w + wb),
                _n(y),
                _n(we),
                bar_h,
                ESTIMATED,
                _text(label_w + wb + we + 6, y + bar_h - 5, usd(t.total)),
            )
        )
    rows.append(_legend(label_w, height - 6, [(BILLED, "billed", "box"), (ESTIMATED, "estimated", "box")]))
    desc = "; ".join(f"{t.label}: {usd(t.total)}" for t in totals) or "No spend."
    return _svg(width, height, title, desc, mark_safe("".join(rows)))
