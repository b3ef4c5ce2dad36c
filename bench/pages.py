"""The admin pages the page benchmark times and tests/test_page_queries.py counts.

One list for both, so a page added to the benchmark is a page whose query count is
pinned. Nothing heavy is imported here (no Django setup, no seeding): the test imports
this module alone.

`pages(world)` takes the ids of the objects a page is about (an organization, a project,
a key) and returns (label, path, reviewer_status): the status a security reviewer gets,
200 where reviewers may read the page, 403 where it is an admin's only.
"""

from typing import NamedTuple


class Page(NamedTuple):
    label: str
    path: str
    reviewer_status: int = 200


KEYS = "/admin/keys/apikey/"
ROLES = ("admin", "reviewer")

# Every value of every key-list filter (keys/admin.py, keys/states_admin.py, usage/admin.py).
KEY_FILTERS = [
    *(("status", v) for v in ("active", "expired", "not_revoked", "revoked")),
    *(("rotation", v) for v in ("compliant", "due_soon", "overdue", "expired", "revoked")),
    *(("probe", v) for v in ("ok", "failing", "rate_limited", "never")),
    *(("flag", v) for v in ("overdue", "unused", "usage_unknown", "failing", "orphaned", "leaked")),
    ("leaked_at__isempty", "0"),
    ("tier_mismatch", "yes"),
    *(("provider__exact", v) for v in ("openai", "azure")),
    *(("kind__exact", v) for v in ("project", "service_account", "admin")),
    *(("project__environment__exact", v) for v in ("production", "staging", "development", "research")),
    *(("budget_state", v) for v in ("none", "within", "near", "forecast", "over")),
]
BUDGET_STATES = ("none", "within", "near", "forecast", "over")


def pages(world):
    """The pages, for `world` = {"org": pk, "project": pk, "key": pk}."""
    org, project, key = world["org"], world["project"], world["key"]
    return [
        Page("dashboard", "/admin/"),
        Page("key list", KEYS),
        *(Page(f"key list, {name}={value}", f"{KEYS}?{name}={value}") for name, value in KEY_FILTERS),
        Page("key list, organization", f"{KEYS}?organization__id__exact={org}"),
        Page("key list, search", f"{KEYS}?q=k00001"),
        Page("key list, sorted by last probe", f"{KEYS}?o=4"),
        Page("key page", f"{KEYS}{key}/change/"),
        Page("project list", "/admin/accounts/project/"),
        *(Page(f"project list, budget {s}", f"/admin/accounts/project/?budget_state={s}") for s in BUDGET_STATES),
        Page("project page", f"/admin/accounts/project/{project}/change/"),
        Page("organization list", "/admin/accounts/organization/"),
        *(
            Page(f"organization list, budget {s}", f"/admin/accounts/organization/?budget_state={s}")
            for s in BUDGET_STATES
        ),
        Page("organization page", f"/admin/accounts/organization/{org}/change/"),
        Page("rotation report", f"{KEYS}rotation-report/"),
        Page("rotation report, overdue", f"{KEYS}rotation-report/?state=overdue"),
        Page("rotation report CSV", f"{KEYS}rotation-report/?format=csv"),
        Page("reconciliation", "/admin/usage/modelprice/reconciliation/"),
        Page("budget alerts", "/admin/usage/budgetalert/"),
        Page("audit log", "/admin/accounts/auditevent/"),
        Page("audit log, action", "/admin/accounts/auditevent/?action__exact=key.updated"),
        Page("audit log, search", "/admin/accounts/auditevent/?q=k00001"),
        Page("audit log CSV", "/admin/accounts/auditevent/export/?action__exact=key.revoked"),
        Page("probe results", "/admin/keys/proberesult/"),
        Page("probe results, outcome", "/admin/keys/proberesult/?outcome__exact=invalid_key"),
        Page("usage buckets", "/admin/usage/usagebucket/"),
        Page("usage buckets, unregistered", "/admin/usage/usagebucket/?registered=no"),
        Page("cost buckets", "/admin/usage/costbucket/"),
    ]
