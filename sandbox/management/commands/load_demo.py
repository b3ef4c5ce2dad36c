"""Load the demo organization into the console and register its keys with the sandbox.

Creates (once) the organization “Demo Org” with four projects across environments and
tiers and twelve keys of every kind, with secrets generated at run time, some overdue
for rotation, one revoked. Every run then registers each live demo key with the sandbox
API under its fault plan (healthy, revoked upstream, out of quota, throttled, flaky,
slow), gives the admin key a usage plan (synthetic Usage and Costs API data for the
demo keys' `key_…` ids, plus one key and one project the console does not know), and
seeds the organization's Administration API state, drifted from the inventory (see
DEMO_USERS below): the sandbox keeps keys, plans and state in memory, so a restarted
sandbox needs them again. The
secrets for that come from the database (ApiKey.reveal_secret), so they are never
printed, passed on a command line or written anywhere but the encrypted column.

Running it twice changes nothing in the database: objects are found by name. Everything
is created through the console's own forms and save paths (OrganizationForm, ProjectForm,
ApiKeyForm.save_and_record), as the admin and the commands create it. This is demo
wiring, so it lives with the sandbox; the sandbox's server code imports none of it.
"""

from dataclasses import dataclass, replace
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.core.management.base import CommandError
from django.db import transaction
from django.utils import timezone

from accounts.forms import OrganizationForm, ProjectForm
from accounts.models import Environment, Organization, Tier
from console import upstream
from console.leakguard import GuardedCommand
from keys import crypto, formats
from keys.forms import ApiKeyForm
from keys.models import ApiKey, Kind, Provider

ACTOR = "demo"

ORGANIZATION = {
    "slug": "demo",
    "name": "Demo Org",
    "openai_org_id": "org-DemoDemo000001",
    "rotation_policy_days": 90,
    "monthly_budget_usd": Decimal("2500.00"),
    "alert_emails": "platform-team@example.com",
}


@dataclass(frozen=True)
class ProjectSpec:
    name: str
    openai_project_id: str
    environment: str
    tier: str
    monthly_budget_usd: Decimal | None


PROJECTS = [
    ProjectSpec("Checkout assistant", "proj_DemoCheckout0001", Environment.PRODUCTION, "Tier 2", Decimal("1500.00")),
    ProjectSpec("Support bot", "proj_DemoSupport00001", Environment.STAGING, "Tier 1", Decimal("400.00")),
    ProjectSpec("Research notebooks", "proj_DemoResearch0001", Environment.RESEARCH, "Free", Decimal("50.00")),
    ProjectSpec("Internal tools", "proj_DemoInternal0001", Environment.DEVELOPMENT, "Tier 1", None),
]


@dataclass(frozen=True)
class KeySpec:
    """One demo key. `project` is a ProjectSpec name, or None for the organization's
    admin key. `fault` is the sandbox fault plan; None means the key is revoked in the
    console and is not registered (the sandbox answers 401 for it, as OpenAI would)."""

    name: str
    project: str | None
    kind: str
    fmt: str
    fault: str | None
    issued_days_ago: int
    rotated_days_ago: int | None = None
    revoked_days_ago: int | None = None
    provider: str = Provider.OPENAI
    owner: str = ""
    upstream_key_id: str = ""
    fault_options: tuple = ()


KEYS = [
    KeySpec("checkout-web", "Checkout assistant", Kind.PROJECT, formats.PROJECT, "healthy", 30, owner="web team"),
    KeySpec(
        "checkout-worker",
        "Checkout assistant",
        Kind.SERVICE_ACCOUNT,
        formats.SERVICE_ACCOUNT,
        "healthy",
        150,
        owner="payments",
        upstream_key_id="key_DemoCheckoutWorker",
    ),
    KeySpec(
        "checkout-batch",
        "Checkout assistant",
        Kind.PROJECT,
        formats.PROJECT,
        "slow",
        60,
        owner="data team",
        fault_options=(("delay_ms", 1500),),
    ),
    KeySpec(
        "checkout-2024",
        "Checkout assistant",
        Kind.PROJECT,
        formats.PROJECT,
        None,
        400,
        revoked_days_ago=200,
        owner="web team",
    ),
    KeySpec(
        "support-bot",
        "Support bot",
        Kind.PROJECT,
        formats.PROJECT,
        "healthy",
        200,
        rotated_days_ago=20,
        owner="support",
    ),
    KeySpec(
        "support-ingest", "Support bot", Kind.SERVICE_ACCOUNT, formats.SERVICE_ACCOUNT, "throttled", 45, owner="support"
    ),
    KeySpec("support-laptop", "Support bot", Kind.PROJECT, formats.PROJECT, "revoked", 120, owner="j.doe"),
    KeySpec("research-notebook", "Research notebooks", Kind.PROJECT, formats.PROJECT, "quota", 15, owner="research"),
    KeySpec(
        "research-eval",
        "Research notebooks",
        Kind.PROJECT,
        formats.LEGACY,
        "flaky",
        210,
        owner="research",
        fault_options=(("fail_rate", 0.5),),
    ),
    KeySpec(
        "tools-ci", "Internal tools", Kind.SERVICE_ACCOUNT, formats.SERVICE_ACCOUNT, "healthy", 95, owner="platform"
    ),
    KeySpec(
        "tools-azure",
        "Internal tools",
        Kind.PROJECT,
        formats.AZURE,
        "healthy",
        20,
        provider=Provider.AZURE,
        owner="platform",
    ),
    KeySpec("org-admin", None, Kind.ADMIN, formats.ADMIN, "healthy", 80, owner="platform"),
]


# The upstream `key_…` id of each demo key (what the Usage and Costs APIs report in
# `api_key_id`), so the console can map the demo's usage to its keys.
UPSTREAM_KEY_IDS = {
    "checkout-web": "key_DemoCheckoutWeb001",
    "checkout-batch": "key_DemoCheckoutBatch1",
    "checkout-2024": "key_DemoCheckout20241",
    "support-bot": "key_DemoSupportBot0001",
    "support-ingest": "key_DemoSupportIngest1",
    "support-laptop": "key_DemoSupportLaptop1",
    "research-notebook": "key_DemoResearchNote01",
    "research-eval": "key_DemoResearchEval01",
    "tools-ci": "key_DemoToolsCi000001",
}
KEYS = [replace(spec, upstream_key_id=UPSTREAM_KEY_IDS.get(spec.name, spec.upstream_key_id)) for spec in KEYS]

# The demo organization's synthetic usage (sandbox/usage.py): every live OpenAI key with an
# upstream id, in its project, plus a key and a project the console does not know, so the
# console's "unregistered" rows have something to show.
USAGE_MODELS = ["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini"]
UNREGISTERED_KEY_ID = "key_DemoUnregistered01"
UNREGISTERED_PROJECT_ID = "proj_DemoUnregistered01"
USAGE_SEED = "demo"

# What the Administration API shows for the demo organization (sandbox/admin_api.py), drifted
# from the console's inventory: a key nobody registered (UNMANAGED_KEY_ID in a known project),
# a registered key deleted upstream (DELETED_UPSTREAM, whose secret the sandbox also refuses),
# a key whose owner left its project (OWNER_LEFT: owner_project_access "inactive") and an
# archived project (UNREGISTERED_PROJECT_ID, holding the unregistered usage key).
DEMO_OWNER = "user_DemoOwner000001"
DEMO_LEAVER = "user_DemoLeaver00001"
DEMO_USERS = [
    {"id": DEMO_OWNER, "name": "Demo Owner", "email": "owner@example.com", "role": "owner"},
    {"id": DEMO_LEAVER, "name": "Former Member", "email": "former@example.com", "role": "reader"},
]
UNMANAGED_KEY_ID = "key_DemoUnmanaged0001"
UNMANAGED_PROJECT_ID = "proj_DemoResearch0001"
DELETED_UPSTREAM = "support-laptop"
OWNER_LEFT = "checkout-batch"


def sandbox_root(base_url):
    """The sandbox's root URL from an OpenAI base URL: http://host:8100/v1 → http://host:8100."""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


class Command(GuardedCommand):
    help = "Create the demo organization, projects and keys (idempotent) and register the keys with the sandbox API."

    def add_arguments(self, parser):
        parser.add_argument(
            "--sandbox-url",
            default=None,
            help="Root URL of the sandbox API (default: OPENAI_BASE_URL without /v1).",
        )
        parser.add_argument(
            "--no-sandbox", action="store_true", help="Only create the database objects; register nothing."
        )
        parser.add_argument("--wait", type=float, default=30.0, help="Seconds to wait for the sandbox to answer.")

    def handle(self, *args, sandbox_url, no_sandbox, wait, **options):
        root = sandbox_root(sandbox_url or settings.OPENAI_BASE_URL)
        now = timezone.now()
        with transaction.atomic():
            org, projects, forms = self.create_hierarchy(root, now)
        self.stdout.write(
            f"Demo data: organization “{org.name}”, {len(projects)} projects, "
            f"{ApiKey.objects.in_organization(org).count()} keys ({len(forms)} created now)."
        )
        if any(form.first_probe_queued is False for form in forms):
            self.stdout.write("No worker queue answered: the new keys' first probes will come with the next sweep.")
        if no_sandbox:
            return
        registered = self.register_with_sandbox(org, projects, root, wait)
        self.stdout.write(f"Registered {registered} demo keys with the sandbox at {root}.")

    # --- the database ------------------------------------------------------------
    def create_hierarchy(self, sandbox, now):
        """Find or create the organization, projects and keys; returns (org, {name:
        project}, the forms of the keys created now)."""
        org = Organization.objects.by_slug(ORGANIZATION["slug"])
        if org is None:
            org = self.save(OrganizationForm(data={"rotation_policy_days": 90, **ORGANIZATION}), "organization")

        tiers = {t.name: t for t in Tier.objects.all()}
        projects = {}
        for spec in PROJECTS:
            project = org.projects.by_name_or_id(spec.name)
            if project is None:
                tier = tiers.get(spec.tier)
                data = {
                    "organization": org.pk,
                    "name": spec.name,
                    "openai_project_id": spec.openai_project_id,
                    "environment": spec.environment,
                    "tier": tier.pk if tier else "",
                    "monthly_budget_usd": spec.monthly_budget_usd or "",
                }
                project = self.save(ProjectForm(data=data), f"project “{spec.name}”")
            projects[spec.name] = project

        existing = set(ApiKey.objects.in_organization(org).values_list("name", flat=True))
        forms = []
        for spec in KEYS:
            if spec.name not in existing:
                forms.append(self.create_key(org, projects.get(spec.project), spec, sandbox, now))
        return org, projects, forms

    def save(self, form, what):
        if not form.is_valid():
            raise CommandError(f"Demo {what} was rejected: {form.errors.as_text()}")
        return form.save_and_record(ACTOR)

    def create_key(self, org, project, spec, sandbox, now):
        """Register one key through ApiKeyForm, the path the admin and add_key use;
        returns the form."""
        secret = formats.generate(spec.fmt)
        form = ApiKeyForm(
            data={
                "organization": org.pk,
                "project": project.pk if project else "",
                "name": spec.name,
                "kind": spec.kind,
                "provider": spec.provider,
                "secret": secret,
                "azure_endpoint": sandbox if spec.provider == Provider.AZURE else "",
                "upstream_key_id": spec.upstream_key_id,
                "owner": spec.owner,
                "issued_at": (now - timedelta(days=spec.issued_days_ago)).isoformat(),
            }
        )
        # Form errors describe fields and shapes, never the secret itself.
        key = self.save(form, f"key “{spec.name}”")
        later = {}
        if spec.rotated_days_ago is not None:
            later["rotated_at"] = now - timedelta(days=spec.rotated_days_ago)
        if spec.revoked_days_ago is not None:
            later["revoked_at"] = now - timedelta(days=spec.revoked_days_ago)
        if later:
            ApiKey.objects.filter(pk=key.pk).update(**later)
        return form

    # --- the sandbox -------------------------------------------------------------
    def register_with_sandbox(self, org, projects, root, wait):
        """Register every live demo key with the sandbox under its fault plan; returns
        how many were registered."""
        from sandbox.control import SandboxControl

        control = SandboxControl(root)
        try:
            ready = control.wait_ready(timeout=wait)
        except Exception as e:
            ready, reason = False, type(e).__name__
        else:
            reason = "timed out"
        if ready is False:
            raise CommandError(
                f"The sandbox API at {root} did not answer ({reason}). "
                "Start it with: python manage.py sandbox_api --port 8100"
            )
        keys = {k.name: k for k in ApiKey.objects.in_organization(org).select_related("project__tier")}
        registered = 0
        for spec in KEYS:
            key = keys.get(spec.name)
            if key is None or key.is_revoked() or spec.fault is None:
                continue
            try:
                secret = key.reveal_secret()
            except crypto.CryptoError as e:
                raise CommandError(
                    f"Cannot decrypt demo key “{key.name}”: {e} The database was written with other "
                    "encryption keys; restore CONSOLE_ENCRYPTION_KEYS in .env, or delete db.sqlite3 to start over."
                ) from None
            try:
                control.register(secret, fault=spec.fault, **self.registration_options(org, key, spec))
            except Exception as e:
                raise CommandError(f"The sandbox refused demo key “{key.name}”: {upstream.scrub(e, secret)}") from None
            registered += 1
        self.register_usage(control, org, keys)
        self.register_upstream_state(control, org, keys)
        return registered

    def register_usage(self, control, org, keys):
        """Give the organization's admin key the demo usage plan (sandbox/usage.py)."""
        admin = keys.get("org-admin")
        if admin is None or admin.is_revoked():
            return
        usage_keys = [
            (key.upstream_key_id, key.project.openai_project_id)
            for spec in KEYS
            if spec.fault is not None and spec.kind != Kind.ADMIN
            for key in [keys.get(spec.name)]
            if key is not None
            and not key.is_revoked()
            and key.provider == Provider.OPENAI
            and key.upstream_key_id
            and key.project
            and key.project.openai_project_id
        ]
        usage_keys.append((UNREGISTERED_KEY_ID, UNREGISTERED_PROJECT_ID))
        secret = admin.reveal_secret()
        try:
            control.set_usage(secret, keys=usage_keys, models=USAGE_MODELS, seed=USAGE_SEED)
        except Exception as e:
            raise CommandError(f"The sandbox refused the demo usage plan: {upstream.scrub(e, secret)}") from None

    def register_upstream_state(self, control, org, keys):
        """Give the organization an Administration API state (sandbox/admin_api.py) that
        differs from the console's inventory as a real one drifts: UPSTREAM_DRIFT."""
        live = [
            (spec, key)
            for spec in KEYS
            if spec.fault is not None and spec.kind != Kind.ADMIN and spec.name != DELETED_UPSTREAM
            for key in [keys.get(spec.name)]
            if key is not None and not key.is_revoked() and key.provider == Provider.OPENAI and key.upstream_key_id
        ]
        secrets = [key.reveal_secret() for _, key in live]
        projects = {
            spec.openai_project_id: {"id": spec.openai_project_id, "name": spec.name, "users": [{"id": DEMO_OWNER}]}
            for spec in PROJECTS
        }
        for (spec, key), secret in zip(live, secrets, strict=True):
            project = projects[key.project.openai_project_id]
            upstream_key = {"id": key.upstream_key_id, "name": spec.name, "key": secret}
            if spec.kind == Kind.SERVICE_ACCOUNT:
                account = "svc_acct_" + key.upstream_key_id.removeprefix("key_")
                project.setdefault("service_accounts", []).append({"id": account, "name": spec.owner})
                upstream_key["owner"] = {"service_account": account}
            else:
                upstream_key["owner"] = {"user": DEMO_LEAVER if spec.name == OWNER_LEFT else DEMO_OWNER}
            project.setdefault("api_keys", []).append(upstream_key)
        projects[UNMANAGED_PROJECT_ID]["api_keys"].append(
            {"id": UNMANAGED_KEY_ID, "name": "notebook-2023", "owner": {"user": DEMO_OWNER}}
        )
        projects[UNREGISTERED_PROJECT_ID] = {
            "id": UNREGISTERED_PROJECT_ID,
            "name": "Old experiments",
            "archived": True,
            "users": [{"id": DEMO_OWNER}],
            "api_keys": [{"id": UNREGISTERED_KEY_ID, "name": "experiments", "owner": {"user": DEMO_OWNER}}],
        }
        admin = keys.get("org-admin")
        admin_keys = []
        if admin is not None and not admin.is_revoked():
            secrets.append(admin.reveal_secret())
            admin_keys.append({"id": "key_DemoOrgAdmin00001", "name": "org-admin", "key": secrets[-1]})
        try:
            control.seed_admin(
                org.openai_org_id,
                users=DEMO_USERS,
                projects=list(projects.values()),
                admin_keys=admin_keys,
            )
        except Exception as e:
            raise CommandError(f"The sandbox refused the demo's upstream state: {upstream.scrub(e)}") from None

    def registration_options(self, org, key, spec):
        """Everything the sandbox needs besides the secret and the fault plan."""
        options = dict(spec.fault_options)
        options["provider"] = key.provider
        if key.provider == Provider.OPENAI:
            options["organization"] = org.openai_org_id
            if key.project and key.project.openai_project_id:
                options["project"] = key.project.openai_project_id
        tier = key.project.tier if key.project else None
        if tier is not None:
            options["rpm"] = tier.requests_per_minute
            options["tpm"] = tier.tokens_per_minute
        return options
