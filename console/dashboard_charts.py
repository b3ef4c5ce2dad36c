"""Server-side SVG for the dashboard: no JavaScript, no CDN.

Each builder returns a SafeString holding one inline <svg role="img"> with a <title> that
says what it shows and a <desc> giving the figures in words. All text goes through
format_html (escaped); numbers are formatted here. Colours are presentation attributes,
not `style=`, so the console's CSP allows them. Apps' dashboard panels build their charts
with these (the spend-per-day chart reuses usage/charts.py's).
"""

from django.utils.html import format_html
from django.utils.safestring import mark_safe

from console import svg as console_svg
from console.svg import coordinate as _n
from console.svg import text

AXIS = "#757575"
TEXT = "#424242"
MARKER = "#c62828"


def svg(width, height, title, desc, body):
    return console_svg.svg(width, height, title, desc, body, css_class="dashboard-chart")


def legend(x, y, items):
    """(colour, label) swatches in a row."""
    parts = []
    for colour, label in items:
        parts.append(format_html('<rect x="{}" y="{}" width="10" height="10" fill="{}"/>', _n(x), _n(y - 9), colour))
        parts.append(text(x + 14, y, label, size=10))
        x += 22 + 6 * len(label)
    return mark_safe("".join(parts))


def stacked_columns(columns, series, title, width=460, height=220):
    """One column per entry of `columns` [(label, {series key: value})], stacked in the
    order of `series` [(key, label, colour)]. Series with no value anywhere are left out
    of the legend."""
    left, right, top, bottom = 40, 10, 12, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum(values.values()) for _, values in columns]
    most = max(totals, default=0) or 1
    slot = plot_w / max(len(columns), 1)
    bar_w = max(slot * 0.6, 1)
    base = top + plot_h
    parts = [
        format_html(
            '<line x1="{0}" y1="{1}" x2="{0}" y2="{2}" stroke="{4}"/><line x1="{0}" y1="{2}" x2="{3}" y2="{2}" '
            'stroke="{4}"/>',
            _n(left),
            _n(top),
            _n(base),
            _n(left + plot_w),
            AXIS,
        ),
        text(left - 4, top + 8, f"{most:,}", "end", 10),
        text(left - 4, base, "0", "end", 10),
    ]
    used = set()
    for i, (label, values) in enumerate(columns):
        x = left + i * slot + (slot - bar_w) / 2
        y = base
        rects = []
        for key, name, colour in series:
            v = values.get(key, 0)
            if not v:
                continue
            used.add(key)
            h = v / most * plot_h
            y -= h
            rects.append(
                format_html(
                    '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}: {} {}</title></rect>',
                    _n(x),
                    _n(y),
                    _n(bar_w),
                    _n(h),
                    colour,
                    label,
                    f"{v:,}",
                    name,
                )
            )
        parts.append(format_html("<g>{}</g>", mark_safe("".join(rects))))
        parts.append(text(x + bar_w / 2, base + 14, label, "middle", 10))
    parts.append(legend(left, height - 6, [(colour, name) for key, name, colour in series if key in used]))
    desc = (
        "; ".join(
            f"{label}: "
            + (", ".join(f"{values[key]:,} {name}" for key, name, _ in series if values.get(key)) or "none")
            for label, values in columns
        )
        or "No data."
    )
    return svg(width, height, title, desc, mark_safe("".join(parts)))


def bars(rows, title, width=460, bar_h=18, unit=str):
    """Horizontal bars: `rows` [(label, value, colour, marker or None)]. A marker (e.g. a
    budget) is a vertical red tick on the bar's scale; `unit` formats a value."""
    label_w, value_w, top = 150, 120, 6
    height = top + len(rows) * (bar_h + 6) + 8
    plot_w = width - label_w - value_w
    most = max([v for _, v, _, _ in rows] + [m for *_, m in rows if m is not None], default=0) or 1
    parts = []
    for i, (label, value, colour, marker) in enumerate(rows):
        y = top + i * (bar_h + 6)
        w = float(value) / float(most) * plot_w
        name = label if len(label) <= 24 else label[:23] + "…"
        tip = f"{label}: {unit(value)}" + (f" of {unit(marker)}" if marker is not None else "")
        tick = ""
        if marker is not None:
            mx = label_w + float(marker) / float(most) * plot_w
            tick = format_html(
                '<line x1="{0}" y1="{1}" x2="{0}" y2="{2}" stroke="{3}" stroke-width="2"/>',
                _n(mx),
                _n(y - 2),
                _n(y + bar_h + 2),
                MARKER,
            )
        shown = unit(value) + (f" / {unit(marker)}" if marker is not None else "")
        parts.append(
            format_html(
                '<g><title>{}</title>{}<rect x="{}" y="{}" width="{}" height="{}" fill="{}"/>{}{}</g>',
                tip,
                text(label_w - 6, y + bar_h - 5, name, "end"),
                _n(label_w),
                _n(y),
                _n(w),
                bar_h,
                colour,
                tick,
                text(label_w + plot_w + 6, y + bar_h - 5, shown, size=10),
            )
        )
    if not rows:
        parts.append(text(label_w, top + 14, "Nothing to show yet."))
        height = top + 24
    desc = "; ".join(
        f"{label}: {unit(value)}" + (f" of {unit(marker)}" if marker is not None else "")
        for label, value, _, marker in rows
    )
    return svg(width, height, title, desc or "No data.", mark_safe("".join(parts)))
