"""Inline SVG pieces for server-side charts (the dashboard's, a project's spend): no
JavaScript, no CDN. Every text goes through format_html (escaped) and every number is
formatted here, so a chart is safe to mark safe. Colours are presentation attributes, not
`style=`, which the console's Content-Security-Policy would refuse."""

from itertools import count

from django.utils.html import format_html

TEXT = "#424242"

_ids = count(1)


def coordinate(value):
    """A coordinate: plain decimal text, never markup."""
    return f"{float(value):.1f}"


def svg(width, height, title, desc, body, css_class):
    """One accessible chart: role="img", labelled by its <title> and described by its
    <desc> (what it shows, and the figures in words)."""
    uid = next(_ids)
    return format_html(
        '<svg xmlns="http://www.w3.org/2000/svg" class="{css}" role="img" width="{w}" height="{h}" '
        'viewBox="0 0 {w} {h}" aria-labelledby="chart-{uid}-title chart-{uid}-desc">'
        '<title id="chart-{uid}-title">{title}</title><desc id="chart-{uid}-desc">{desc}</desc>{body}</svg>',
        css=css_class,
        w=width,
        h=height,
        uid=uid,
        title=title,
        desc=desc,
        body=body,
    )


def text(x, y, label, anchor="start", size=11, fill=TEXT):
    return format_html(
        '<text x="{}" y="{}" font-size="{}" fill="{}" text-anchor="{}">{}</text>',
        coordinate(x),
        coordinate(y),
        size,
        fill,
        anchor,
        label,
    )
