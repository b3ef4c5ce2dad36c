"""Audit actions as phrases people read ("Logged in", "Changed a key") instead of codes
("auth.login", "key.updated"). The code stays what is stored, filtered on and exported;
the phrase is only how the audit log's list shows it."""

PHRASES = {
    "access.denied": "Refused a request (403)",
    "access.viewed": "Viewed who has access",
    "audit.exported": "Exported the audit log",
    "auth.login": "Logged in",
    "auth.logout": "Logged out",
    "auth.login_failed": "Failed to log in",
    "auth.locked_out": "Locked out after failed logins",
    "auth.2fa_enabled": "Enabled two-factor authentication",
    "auth.2fa_disabled": "Disabled two-factor authentication",
    "auth.recovery_codes_regenerated": "Made new recovery codes",
    "key.probe_requested": "Asked for a probe (Probe now)",
    "key.secret_replaced": "Replaced a key's secret",
    "circuit.closed": "Closed a circuit",
    "organization.sync_requested": "Asked for an organization sync",
    "usage.ingest_requested": "Asked for a usage ingest of a window",
    "report.viewed": "Viewed the rotation report",
    "report.exported": "Exported the rotation report",
    "user.password_changed": "Changed a user's password",
    "user.groups_changed": "Changed a user's groups",
    "user.permissions_changed": "Changed a user's permissions",
    "group.permissions_changed": "Changed a group's permissions",
    "api_token.revoked": "Revoked an API token",
}
VERBS = {"created": "Created", "updated": "Changed", "deleted": "Deleted"}
ARTICLES = {"key": "a key", "api_token": "an API token", "organization": "an organization", "audit": "the audit log"}


def phrase(action):
    """The phrase for an action code; a code nobody named reads as its words."""
    if action in PHRASES:
        return PHRASES[action]
    target, _, verb = action.partition(".")
    noun = ARTICLES.get(target, f"a {target.replace('_', ' ')}")
    if verb in VERBS:
        return f"{VERBS[verb]} {noun}"
    return action.replace(".", ": ").replace("_", " ").capitalize()
