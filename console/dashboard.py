"""The admin index as a dashboard: what needs attention, how the background work went,
and a few charts — gathered from panels the apps provide.

Like /metrics (console/metrics.py), the console layer imports no app: each app registers
a panel from its AppConfig.ready with `register_panel(name, function, order)`, where
`function(now)` returns a `Panel`. keys: key states and flags, circuits, the last sweep,
keys the probe budget defers, tier mismatches and two charts; usage: projects over or
forecast over budget, the last ingestion and the spend charts; sync: unmanaged and deleted
upstream keys and the last sync.

Every panel runs a fixed number of aggregate queries, whatever the number of keys, so the
whole page does too (tests/test_dashboard.py pins the count at two sizes). A panel that
fails shows as "unavailable" and the rest of the page goes on. Everything a panel returns
is text escaped by the template, or SVG built with format_html (console/dashboard_charts.py).
"""

import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attention:
    """One "Needs attention" count: linked to the list that shows exactly these rows.
    `note` says when the link is the closest list rather than an exact filter; `items` are
    short lines shown under the count (e.g. each open circuit's host and since when)."""

    label: str
    count: int
    url: str
    note: str = ""
    items: tuple = ()


@dataclass(frozen=True)
class Status:
    """One "Background work" line: a title, when it last ran and facts about it."""

    title: str
    facts: tuple  # of str
    failing: bool = False
    url: str = ""


@dataclass
class Panel:
    attention: list = field(default_factory=list)
    status: list = field(default_factory=list)
    charts: list = field(default_factory=list)  # SafeString <svg role="img">


# [(order, name, function(now) -> Panel, permission)], filled by AppConfig.ready.
_panels = []


def register_panel(name, function, order=50, permission=None):
    """`permission`: who may see the panel (e.g. "keys.view_apikey": those who may read the
    lists its counts link to); staff without it do not get its counts."""
    if name not in [p[1] for p in _panels]:
        _panels.append((order, name, function, permission))
        _panels.sort(key=lambda p: p[0])


def gather(now, user=None):
    """The registered panels `user` may see (all when None) merged into one: {"attention",
    "status", "charts", "unavailable"} (names of the panels that failed), or None when the
    user may see none of them."""
    merged = Panel()
    unavailable = []
    shown = [p for p in _panels if user is None or p[3] is None or user.has_perm(p[3])]
    if not shown:
        return None
    for _, name, function, _ in shown:
        try:
            panel = function(now)
        except Exception as e:  # noqa: BLE001 — one panel's failure is not the page's
            log.warning("dashboard panel %s failed (%s)", name, type(e).__name__)
            unavailable.append(name)
            continue
        merged.attention += panel.attention
        merged.status += panel.status
        merged.charts += panel.charts
    return {
        "attention": merged.attention,
        "status": merged.status,
        "charts": merged.charts,
        "unavailable": unavailable,
    }
