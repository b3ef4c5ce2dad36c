"""The demo data (`manage.py load_demo`), the demo login (`ensure_admin`) and the
first-run `.env` writer (scripts/bootstrap_env.py) that `make run` relies on."""

import importlib.util
import io
import json
import re
import time
from pathlib import Path

import httpx2
import openai
import pytest
from django.contrib.auth.models import User
from django.core import serializers
from django.core.management import CommandError, call_command
from django.utils import timezone

from accounts.models import AuditEvent, Environment, Organization, Project
from keys.models import ApiKey, Kind, Provider
from sandbox.control import SandboxControl

ROOT = Path(__file__).resolve().parent.parent


def load_demo(sandbox_url, **options):
    out, err = io.StringIO(), io.StringIO()
    call_command("load_demo", sandbox_url=sandbox_url, stdout=out, stderr=err, **options)
    return out.getvalue() + err.getvalue()


def demo_key(name):
    return ApiKey.objects.select_related("project", "organization").get(organization__slug="demo", name=name)


def list_models(sandbox, key):
    """Call what a probe calls with the key's decrypted secret — the models list, or for
    an admin key the administration projects list; returns the HTTP status."""
    secret = key.reveal_secret()
    if key.provider == Provider.AZURE:
        url = key.azure_endpoint.rstrip("/") + "/openai/models"
        response = httpx2.get(url, params={"api-version": "2024-10-21"}, headers={"api-key": secret}, timeout=10)
    else:
        headers = {"Authorization": f"Bearer {secret}", "OpenAI-Organization": key.organization.openai_org_id}
        if key.project_id:
            headers["OpenAI-Project"] = key.project.openai_project_id
        path = "/organization/projects?limit=1" if key.kind == "admin" else "/models"
        response = httpx2.get(sandbox.openai_url.rstrip("/") + path, headers=headers, timeout=10)
    return response.status_code


def counts():
    return (
        Organization.objects.count(),
        Project.objects.count(),
        ApiKey.objects.count(),
        AuditEvent.objects.count(),
    )


@pytest.mark.django_db
def test_it_creates_the_demo_hierarchy(sandbox):
    load_demo(sandbox.root)

    org = Organization.objects.get(slug="demo")
    assert org.name == "Demo Org"
    assert org.openai_org_id == "org-DemoDemo000001"
    assert org.rotation_policy_days == 90
    assert org.monthly_budget_usd > 0

    projects = {p.name: p for p in org.projects.select_related("tier")}
    assert len(projects) == 4
    assert projects["Checkout assistant"].environment == Environment.PRODUCTION
    assert projects["Checkout assistant"].tier.name == "Tier 2"
    assert projects["Support bot"].environment == Environment.STAGING
    assert projects["Support bot"].tier.name == "Tier 1"
    assert projects["Research notebooks"].environment == Environment.RESEARCH
    assert projects["Research notebooks"].tier.name == "Free"

    keys = list(ApiKey.objects.filter(organization=org).select_related("project__organization", "organization"))
    assert len(keys) == 12
    assert {k.kind for k in keys} == {Kind.PROJECT, Kind.SERVICE_ACCOUNT, Kind.ADMIN}
    [admin_key] = [k for k in keys if k.kind == Kind.ADMIN]
    assert admin_key.project is None
    assert admin_key.hint.startswith("sk-admin-")
    [azure_key] = [k for k in keys if k.provider == Provider.AZURE]
    assert azure_key.azure_endpoint.rstrip("/") == sandbox.root.rstrip("/")
    assert [k.name for k in keys if k.is_revoked()] == ["checkout-2024"]
    now = timezone.now()
    overdue = [k for k in keys if not k.is_revoked() and k.rotation_due_at() < now]
    assert len(overdue) >= 2
    assert all(k.next_probe_at is not None for k in keys if not k.is_revoked())
    assert AuditEvent.objects.filter(actor_label="demo", action="key.created").count() == 12
    # Each key's history (issue 9): registered, and rotated / revoked where the demo says so.
    [revoked] = [k for k in keys if k.is_revoked()]
    assert revoked.next_probe_at is None and not revoked.is_probe_failing()
    for key in keys:
        actions = list(key.events.order_by("at").values_list("action", flat=True))
        assert "registered" in actions
        assert ("rotated" in actions) == (key.rotated_at is not None)
        assert ("revoked" in actions) == key.is_revoked()


@pytest.mark.django_db
def test_running_it_twice_changes_nothing(sandbox):
    load_demo(sandbox.root)
    before = counts()
    fingerprints = dict(ApiKey.objects.values_list("name", "fingerprint"))

    load_demo(sandbox.root)

    assert counts() == before
    assert dict(ApiKey.objects.values_list("name", "fingerprint")) == fingerprints


@pytest.mark.django_db
def test_it_registers_each_key_with_its_fault_plan(sandbox):
    load_demo(sandbox.root)

    assert list_models(sandbox, demo_key("checkout-web")) == 200
    assert list_models(sandbox, demo_key("org-admin")) == 200
    assert list_models(sandbox, demo_key("tools-azure")) == 200
    assert list_models(sandbox, demo_key("support-laptop")) == 401  # revoked upstream
    assert list_models(sandbox, demo_key("research-notebook")) == 429  # out of quota
    # Revoked in the console: never registered, so the API does not know it.
    assert list_models(sandbox, demo_key("checkout-2024")) == 401


@pytest.mark.django_db
def test_the_demo_admin_key_reads_usage_for_the_demo_keys_and_unregistered_ids(sandbox):
    load_demo(sandbox.root)
    admin = demo_key("org-admin")
    client = openai.OpenAI(admin_api_key=admin.reveal_secret(), base_url=sandbox.openai_url, max_retries=0)
    start = int(time.time()) // 86400 * 86400 - 2 * 86400

    page = client.admin.organization.usage.completions(start_time=start, group_by=["project_id", "api_key_id"])
    costs = client.admin.organization.usage.costs(start_time=start, group_by=["project_id", "api_key_id"])

    demo_keys = ApiKey.objects.filter(organization__slug="demo", provider=Provider.OPENAI).exclude(kind=Kind.ADMIN)
    assert all(key.upstream_key_id.startswith("key_") for key in demo_keys)
    live = {k.upstream_key_id for k in demo_keys if not k.is_revoked()}
    projects = set(Project.objects.filter(organization__slug="demo").values_list("openai_project_id", flat=True))
    for body in (page, costs):
        seen = {(r.project_id, r.api_key_id) for bucket in body.data for r in bucket.results}
        assert {key for _, key in seen} == live | {"key_DemoUnregistered01"}
        assert {project for project, _ in seen} - projects == {"proj_DemoUnregistered01"}


@pytest.mark.django_db
def test_the_demo_organizations_upstream_state_drifts_from_the_inventory(sandbox):
    load_demo(sandbox.root)
    admin = demo_key("org-admin")
    client = openai.OpenAI(admin_api_key=admin.reveal_secret(), base_url=sandbox.openai_url, max_retries=0)
    upstream = client.admin.organization.projects

    projects = {p.id: p.status for p in upstream.list(include_archived=True)}
    local = set(Project.objects.filter(organization__slug="demo").values_list("openai_project_id", flat=True))
    assert set(projects) - local == {"proj_DemoUnregistered01"} and projects["proj_DemoUnregistered01"] == "archived"
    assert "proj_DemoUnregistered01" not in {p.id for p in upstream.list()}
    keys = {k.id: k for pid in local for k in upstream.api_keys.list(pid, owner_project_access="any")}
    registered = {
        k.upstream_key_id: k
        for k in ApiKey.objects.filter(organization__slug="demo", provider=Provider.OPENAI).exclude(kind=Kind.ADMIN)
    }
    assert set(keys) - set(registered) == {"key_DemoUnmanaged0001"}  # unmanaged upstream
    gone = {registered[key_id].name for key_id in set(registered) - set(keys)}
    assert gone == {"support-laptop", "checkout-2024"}  # deleted upstream; revoked in the console too
    assert {k.id for k in keys.values() if k.owner_project_access == "inactive"} == {"key_DemoCheckoutBatch1"}
    for key_id, key in registered.items():
        if key_id in keys:
            assert keys[key_id].redacted_value == key.hint
    assert keys["key_DemoCheckoutWorker"].owner.type == "service_account"
    assert [k.id for k in client.admin.organization.admin_api_keys.list()] == ["key_DemoOrgAdmin00001"]


@pytest.mark.django_db
def test_it_registers_the_keys_again_after_the_sandbox_forgot_them(sandbox):
    load_demo(sandbox.root)
    SandboxControl(sandbox.root).reset()
    assert list_models(sandbox, demo_key("checkout-web")) == 401

    load_demo(sandbox.root)

    assert list_models(sandbox, demo_key("checkout-web")) == 200


@pytest.mark.django_db
def test_it_never_prints_or_stores_a_secret(sandbox):
    output = load_demo(sandbox.root) + load_demo(sandbox.root)

    secrets = [k.reveal_secret() for k in ApiKey.objects.all()]
    assert len(secrets) == 12
    audit = json.dumps(list(AuditEvent.objects.values()), default=str)
    dump = serializers.serialize("json", ApiKey.objects.all())
    for secret in secrets:
        for text in (output, audit, dump):
            assert secret not in text
            assert secret[-8:] not in text


@pytest.mark.django_db
def test_it_fails_clearly_when_the_sandbox_is_down():
    with pytest.raises(CommandError, match="sandbox_api"):
        load_demo("http://127.0.0.1:9", wait=0.5)
    # The database part is done and stays consistent: a later run completes it.
    assert ApiKey.objects.filter(organization__slug="demo").count() == 12


# --- ensure_admin -------------------------------------------------------------------


@pytest.mark.django_db
def test_ensure_admin_creates_a_superuser_from_the_environment(monkeypatch):
    monkeypatch.setenv("CONSOLE_DEMO_ADMIN_PASSWORD", "Demo-pass-9f3kQ2xv")
    out = io.StringIO()

    call_command("ensure_admin", username="admin", stdout=out)

    user = User.objects.get(username="admin")
    assert user.is_superuser and user.is_staff
    assert user.check_password("Demo-pass-9f3kQ2xv")
    assert "Demo-pass-9f3kQ2xv" not in out.getvalue()


@pytest.mark.django_db
def test_ensure_admin_resets_the_password_on_a_second_run(monkeypatch):
    monkeypatch.setenv("CONSOLE_DEMO_ADMIN_PASSWORD", "Demo-pass-9f3kQ2xv")
    call_command("ensure_admin", username="admin", stdout=io.StringIO())
    monkeypatch.setenv("CONSOLE_DEMO_ADMIN_PASSWORD", "Other-pass-7Hq2mZ0w")

    call_command("ensure_admin", username="admin", stdout=io.StringIO())

    assert User.objects.filter(username="admin").count() == 1
    assert User.objects.get(username="admin").check_password("Other-pass-7Hq2mZ0w")


@pytest.mark.django_db
def test_ensure_admin_refuses_a_missing_or_weak_password(monkeypatch):
    monkeypatch.delenv("CONSOLE_DEMO_ADMIN_PASSWORD", raising=False)
    with pytest.raises(CommandError, match="Set CONSOLE_DEMO_ADMIN_PASSWORD"):
        call_command("ensure_admin", username="admin")
    monkeypatch.setenv("CONSOLE_DEMO_ADMIN_PASSWORD", "short")
    with pytest.raises(CommandError, match="too weak"):
        call_command("ensure_admin", username="admin")
    assert not User.objects.filter(username="admin").exists()


# --- scripts/bootstrap_env.py -------------------------------------------------------


@pytest.fixture
def bootstrap_env():
    spec = importlib.util.spec_from_file_location("bootstrap_env", ROOT / "scripts" / "bootstrap_env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bootstrap_env_writes_a_complete_env_file_on_the_first_run(bootstrap_env, tmp_path):
    from keys import crypto

    path = tmp_path / ".env"

    written = bootstrap_env.bootstrap(path)

    values = bootstrap_env.read_env(path)
    assert (
        set(written)
        == set(values)
        >= {
            "DEBUG",
            "SECRET_KEY",
            "CONSOLE_ENCRYPTION_KEYS",
            "CONSOLE_FINGERPRINT_KEY",
            "OPENAI_BASE_URL",
        }
    )
    assert values["DEBUG"] == "true"
    assert values["OPENAI_BASE_URL"] == "http://127.0.0.1:8100/v1"
    assert values["EMAIL_URL"] == "consolemail://"  # the demo's alerts land in the worker log
    assert crypto.parse_keyring(values["CONSOLE_ENCRYPTION_KEYS"]).current == 1
    assert len(values["CONSOLE_FINGERPRINT_KEY"]) >= 32
    assert values["CONSOLE_FINGERPRINT_KEY"] not in values["CONSOLE_ENCRYPTION_KEYS"]
    assert path.stat().st_mode & 0o077 == 0  # readable by its owner only


def test_bootstrap_env_never_overwrites_an_existing_value(bootstrap_env, tmp_path):
    path = tmp_path / ".env"
    bootstrap_env.bootstrap(path)
    first = bootstrap_env.read_env(path)

    assert bootstrap_env.bootstrap(path) == []

    assert bootstrap_env.read_env(path) == first


def test_bootstrap_env_fills_only_missing_or_empty_values(bootstrap_env, tmp_path):
    path = tmp_path / ".env"
    path.write_text("# mine\nDEBUG=false\nSECRET_KEY=\nDATABASE_URL=postgres://db/console\n")

    written = bootstrap_env.bootstrap(path)

    values = bootstrap_env.read_env(path)
    assert "DEBUG" not in written and values["DEBUG"] == "false"
    assert values["DATABASE_URL"] == "postgres://db/console"
    assert "SECRET_KEY" in written and len(values["SECRET_KEY"]) > 40
    assert path.read_text().count("SECRET_KEY=") == 1
    assert path.read_text().startswith("# mine\n")


# --- README --------------------------------------------------------------------------


def test_the_readme_documents_every_environment_variable_the_settings_read():
    read = set(re.findall(r'env\.\w+\(\s*"([A-Z][A-Z0-9_]*)"', (ROOT / "console" / "settings.py").read_text()))
    documented = set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", (ROOT / "README.md").read_text(), re.MULTILINE))

    assert len(read) > 30
    assert read - documented == set(), "add these to README.md, Configuration"
