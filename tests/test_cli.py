"""The registration and inventory commands: add_org, add_project, add_key, list_keys.
Bad input gets a clear CommandError and changes nothing; a secret never reaches argv,
stdout, stderr, the audit log or the inventory."""

import csv
import io
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils.timezone import now

from accounts.models import AuditEvent, Organization, Project, Tier
from keys import formats
from keys.forms import ApiKeyForm
from keys.management.commands import add_key
from keys.models import ApiKey, Kind, Provider

ROOT = Path(__file__).resolve().parent.parent


def run(*args, stdin=None):
    """call_command, returning (stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    options = {"stdin": stdin} if stdin is not None else {}
    call_command(*args, stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


def refuse(*args, stdin=None):
    """Run a command that must fail; returns the CommandError message."""
    with pytest.raises(CommandError) as excinfo:
        run(*args, stdin=stdin)
    assert excinfo.value.returncode != 0
    return str(excinfo.value)


def counts():
    return (Organization.objects.count(), Project.objects.count(), ApiKey.objects.count(), AuditEvent.objects.count())


# --- add_org ---------------------------------------------------------------------------
def test_add_org_creates_the_organization_and_an_audit_event(db):
    out, _ = run(
        "add_org",
        "--name",
        "Acme",
        "--slug",
        "acme",
        "--openai-org-id",
        "org-AcmeAcme1234",
        "--rotation-days",
        "30",
        "--budget",
        "100.00",
        "--alert-emails",
        "ops@example.com,cfo@example.com",
    )
    org = Organization.objects.get(slug="acme")
    assert (org.name, org.openai_org_id, org.rotation_policy_days) == ("Acme", "org-AcmeAcme1234", 30)
    assert str(org.monthly_budget_usd) == "100.00"
    assert org.alert_email_list() == ["ops@example.com", "cfo@example.com"]
    assert "Created organization “Acme” (slug acme" in out
    event = AuditEvent.objects.get()
    assert (event.action, event.actor_label, event.target_id) == ("organization.created", "cli:add_org", str(org.pk))


def test_add_org_defaults_to_a_90_day_rotation_policy_and_no_budget(db):
    run("add_org", "--name", "Acme", "--slug", "acme")
    org = Organization.objects.get()
    assert org.rotation_policy_days == 90
    assert org.monthly_budget_usd is None


@pytest.mark.parametrize(
    "args, message",
    [
        (["--openai-org-id", "org_wrong"], "--openai-org-id: An OpenAI organization id looks like org-"),
        (["--budget", "-1"], "--budget: A budget cannot be negative."),
        (["--budget", "lots"], "--budget: Enter a number."),
        (["--rotation-days", "0"], "--rotation-days: A rotation policy is at least one day."),
        (["--alert-emails", "ops@example.com,nobody"], "--alert-emails: “nobody” is not a valid email address."),
        (["--slug", "not a slug"], "--slug: Enter a valid “slug”"),
    ],
)
def test_add_org_refuses_bad_input_with_the_validators_message_and_changes_nothing(db, args, message):
    before = counts()
    error = refuse("add_org", "--name", "Acme", "--slug", "acme", *args)
    assert error.startswith("Organization not created:")
    assert message in error
    assert counts() == before


def test_add_org_refuses_a_slug_that_is_taken(org):
    before = counts()
    error = refuse("add_org", "--name", "Acme again", "--slug", org.slug)
    assert "--slug: Organization with this Slug already exists." in error
    assert counts() == before


def test_add_org_requires_a_name(db):
    assert "the following arguments are required: --name" in refuse("add_org", "--slug", "acme")
    assert Organization.objects.count() == 0


# --- add_project -------------------------------------------------------------------------
def test_add_project_creates_the_project_in_the_organization(org):
    out, _ = run(
        "add_project",
        "--org",
        "acme",
        "--name",
        "Search",
        "--openai-project-id",
        "proj_Search123456",
        "--environment",
        "production",
        "--tier",
        "tier 2",
        "--budget",
        "50",
        "--rotation-days",
        "30",
    )
    project = Project.objects.get(name="Search")
    assert project.organization == org
    assert (project.openai_project_id, project.environment) == ("proj_Search123456", "production")
    assert project.tier == Tier.objects.get(name="Tier 2")
    assert project.effective_rotation_days() == 30
    assert "Created project “Acme / Search”" in out
    event = AuditEvent.objects.get()
    assert (event.action, event.actor_label) == ("project.created", "cli:add_project")


def test_add_project_defaults_to_development_and_the_organization_policy(org):
    run("add_project", "--org", "acme", "--name", "Search")
    project = Project.objects.get()
    assert project.environment == "development"
    assert project.tier is None
    assert project.effective_rotation_days() == org.rotation_policy_days


@pytest.mark.parametrize(
    "args, message",
    [
        (["--org", "nope", "--name", "Search"], "no organization with slug “nope”"),
        (["--org", "acme", "--name", "Search", "--tier", "Tier 9"], "no tier “Tier 9”. Known tiers: “Free”, “Tier 1”"),
        (["--org", "acme", "--name", "Search", "--environment", "moon"], "--environment: Select a valid choice."),
        (
            ["--org", "acme", "--name", "Search", "--openai-project-id", "proj-1"],
            "--openai-project-id: An OpenAI project id",
        ),
        (["--org", "acme", "--name", "Search", "--budget", "-3"], "--budget: A budget cannot be negative."),
        (
            ["--org", "acme", "--name", "Search", "--rotation-days", "0"],
            "--rotation-days: A rotation policy is at least",
        ),
        (["--org", "acme", "--name", "Chatbot"], "This organization already has a project with this name."),
    ],
)
def test_add_project_refuses_bad_input_and_changes_nothing(project, args, message):
    before = counts()
    error = refuse("add_project", *args)
    assert message in error
    assert counts() == before


# --- add_key ---------------------------------------------------------------------------------
@pytest.fixture
def new_key(monkeypatch):
    """Put a fresh secret in CONSOLE_NEW_KEY; returns it."""

    def put(fmt=formats.PROJECT, variable=add_key.DEFAULT_SECRET_ENV):
        secret = formats.generate(fmt)
        monkeypatch.setenv(variable, secret)
        return secret

    return put


def assert_secret_absent(secret, *texts):
    for text in texts:
        assert secret not in text
        assert secret[-12:] not in text


def test_add_key_reads_the_secret_from_the_environment_and_queues_a_first_probe(
    project, new_key, django_capture_on_commit_callbacks
):
    secret = new_key()
    with django_capture_on_commit_callbacks() as callbacks:
        out, err = run(
            "add_key", "--org", "acme", "--project", "Chatbot", "--name", "chatbot prod", "--owner", "ml-team"
        )
    key = ApiKey.objects.get()
    assert key.reveal_secret() == secret
    assert (key.project, key.kind, key.provider, key.owner) == (project, Kind.PROJECT, Provider.OPENAI, "ml-team")
    assert key.next_probe_at is not None
    assert len(callbacks) == 1  # enqueue_probes, once the transaction commits
    assert f"Created key {key.pk} ({key.hint})" in out
    assert_secret_absent(secret, out, err)
    event = AuditEvent.objects.get()
    assert (event.action, event.actor_label, event.target_id) == ("key.created", "cli:add_key", str(key.pk))
    assert event.details == {
        "hint": formats.hint(secret),
        "kind": "project",
        "provider": "openai",
        "project": project.pk,
        "organization": project.organization_id,
    }
    assert_secret_absent(secret, json.dumps(event.details), event.target_repr)


def test_add_key_reads_another_variable_named_by_secret_env(project, new_key):
    secret = new_key(variable="MY_KEY")
    run("add_key", "--org", "acme", "--project", "Chatbot", "--name", "k", "--secret-env", "MY_KEY")
    assert ApiKey.objects.get().reveal_secret() == secret


def test_add_key_reads_the_secret_from_stdin_and_strips_the_newline(project):
    secret = formats.generate(formats.SERVICE_ACCOUNT)
    out, err = run(
        "add_key",
        "--org",
        "acme",
        "--project",
        "proj_Chatbot12345",
        "--name",
        "svc",
        "--kind",
        "service_account",
        "--upstream-key-id",
        "key_abc123",
        "--secret-stdin",
        stdin=io.StringIO(secret + "\n"),
    )
    key = ApiKey.objects.get()
    assert key.reveal_secret() == secret
    assert (key.kind, key.upstream_key_id) == (Kind.SERVICE_ACCOUNT, "key_abc123")
    assert_secret_absent(secret, out, err)


def test_add_key_registers_an_admin_key_on_the_organization(org, new_key):
    new_key(formats.ADMIN)
    run("add_key", "--org", "acme", "--name", "org admin", "--kind", "admin")
    key = ApiKey.objects.get()
    assert (key.organization, key.project, key.kind) == (org, None, Kind.ADMIN)


def test_add_key_registers_an_azure_key_with_its_endpoint_and_expiry(project, new_key):
    new_key(formats.AZURE)
    expires = (now() + timedelta(days=30)).replace(microsecond=0)
    run(
        "add_key",
        "--org",
        "acme",
        "--project",
        "Chatbot",
        "--name",
        "azure",
        "--provider",
        "azure",
        "--azure-endpoint",
        "https://acme.openai.azure.com",
        "--expires-at",
        expires.isoformat(),
    )
    key = ApiKey.objects.get()
    assert key.provider == Provider.AZURE
    assert key.azure_api_version  # the form fills in the default version
    assert key.expires_at == expires


def form_messages(data):
    form = ApiKeyForm(data={"issued_at": now().isoformat(), **data})
    assert not form.is_valid()
    return [m for messages in form.errors.values() for m in messages]


@pytest.mark.parametrize(
    "fmt, args, field_data",
    [
        (formats.ADMIN, ["--project", "Chatbot"], {"kind": "project"}),
        (formats.PROJECT, ["--kind", "admin"], {"kind": "admin"}),
        (formats.AZURE, ["--project", "Chatbot"], {"kind": "project"}),
        (formats.PROJECT, [], {"kind": "project"}),
        (formats.PROJECT, ["--project", "Chatbot", "--provider", "azure"], {"kind": "project", "provider": "azure"}),
        (formats.PROJECT, ["--project", "Chatbot", "--expires-at", "2000-01-01T00:00:00+00:00"], {"kind": "project"}),
        (formats.PROJECT, ["--project", "Chatbot", "--expires-at", "someday"], {"kind": "project"}),
        (formats.PROJECT, ["--project", "Chatbot", "--kind", "root"], {"kind": "root"}),
    ],
)
def test_add_key_refuses_what_the_admin_form_refuses_with_the_same_messages(project, new_key, fmt, args, field_data):
    secret = new_key(fmt)
    before = counts()
    error = refuse("add_key", "--org", "acme", "--name", "k", *args)
    assert error.startswith("Key not created:")
    data = {"organization": project.organization.pk, "name": "k", "provider": "openai", "secret": secret, **field_data}
    if "--project" in args:
        data["project"] = project.pk
    if "--expires-at" in args:
        data["expires_at"] = args[args.index("--expires-at") + 1]
    for message in form_messages(data):
        assert message in error
    assert_secret_absent(secret, error)
    assert counts() == before


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda s: s[:-1], "key: This looks like a project key (sk-proj-…) but its length or body is wrong"),
        (lambda s: s[:50] + " " + s[50:], "key: The key contains spaces or line breaks inside it"),
        (lambda s: s[:50] + "%" + s[51:], "key: The key contains characters no OpenAI or Azure key has"),
    ],
)
def test_add_key_refuses_a_malformed_secret_without_echoing_it(project, monkeypatch, damage, message):
    secret = damage(formats.generate())
    monkeypatch.setenv("CONSOLE_NEW_KEY", secret)
    before = counts()
    error = refuse("add_key", "--org", "acme", "--project", "Chatbot", "--name", "k")
    assert message in error
    assert_secret_absent(secret, error)
    assert counts() == before


def test_add_key_refuses_a_duplicate_naming_the_project_that_holds_it(make_key, monkeypatch):
    _, secret = make_key(name="chatbot prod")
    monkeypatch.setenv("CONSOLE_NEW_KEY", secret)
    before = counts()
    error = refuse("add_key", "--org", "acme", "--project", "Chatbot", "--name", "again")
    assert "key: This key is already registered as “chatbot prod” in project “Acme / Chatbot”." in error
    assert_secret_absent(secret, error)
    assert counts() == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--org", "nope", "--project", "Chatbot"], "no organization with slug “nope”"),
        (["--org", "acme", "--project", "Nope"], "organization “acme” has no project “Nope”"),
    ],
)
def test_add_key_refuses_an_unknown_organization_or_project(project, new_key, args, message):
    secret = new_key()
    before = counts()
    error = refuse("add_key", *args, "--name", "k")
    assert message in error
    assert_secret_absent(secret, error)
    assert counts() == before


def test_add_key_without_a_secret_says_where_to_put_it(project, monkeypatch):
    monkeypatch.delenv("CONSOLE_NEW_KEY", raising=False)
    error = refuse("add_key", "--org", "acme", "--project", "Chatbot", "--name", "k")
    assert "the environment variable CONSOLE_NEW_KEY is empty or unset" in error
    assert "--secret-stdin" in error
    assert "Enter the API key." in refuse(
        "add_key", "--org", "acme", "--project", "Chatbot", "--name", "k", "--secret-stdin", stdin=io.StringIO("\n")
    )
    assert ApiKey.objects.count() == 0


def test_add_key_has_no_option_that_takes_a_secret():
    parser = add_key.Command().create_parser("manage.py", "add_key")
    options = {s for action in parser._actions for s in action.option_strings}
    assert "--secret" not in options
    assert {o for o in options if "secret" in o} == {"--secret-env", "--secret-stdin"}


@pytest.mark.parametrize(
    "shape",
    [
        lambda s: [s],  # positional
        lambda s: ["--secret", s],
        lambda s: [f"--secret={s}"],
        lambda s: [f"--key={s}"],
        lambda s: ["--name", s],  # a secret in a known option is just as visible
        lambda s: ["--secret-env", s],
        lambda s: ["--kind", s],
    ],
)
@pytest.mark.parametrize("fmt", [formats.PROJECT, formats.ADMIN, formats.AZURE, formats.LEGACY])
def test_add_key_refuses_a_secret_in_argv_without_echoing_it(project, monkeypatch, shape, fmt):
    monkeypatch.delenv("CONSOLE_NEW_KEY", raising=False)
    secret = formats.generate(fmt)
    error = refuse("add_key", "--org", "acme", "--project", "Chatbot", "--name", "k", *shape(secret))
    assert "argv is visible to other users in the process list" in error
    assert_secret_absent(secret, error)
    assert ApiKey.objects.count() == 0


def test_add_key_refuses_even_a_truncated_openai_key_in_argv(project):
    error = refuse("add_key", "--org", "acme", "--name", "k", "sk-proj-abc")
    assert "argv is visible" in error
    assert "sk-proj-abc" not in error


def test_add_key_from_a_real_command_line_refuses_argv_secrets_with_exit_status_2():
    secret = formats.generate()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    result = subprocess.run(
        [sys.executable, "manage.py", "add_key", "--org", "acme", "--name", "k", f"--secret={secret}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "argv is visible to other users in the process list" in result.stderr
    assert_secret_absent(secret, result.stdout, result.stderr)


# --- list_keys ---------------------------------------------------------------------------
@pytest.fixture
def inventory(make_key, org):
    """Three live keys (one admin, one in another project) and one revoked; (key, secret) pairs."""
    search = Project.objects.create(organization=org, name="Search", openai_project_id="proj_Search123456")
    keys = [
        make_key(name="chatbot prod", owner="ml-team"),
        make_key(name="search prod", project=search),
        make_key(formats.ADMIN, project=None, kind=Kind.ADMIN, organization=org, name="org admin"),
        make_key(name="old chatbot", revoked_at=now()),
    ]
    return keys


LISTED = {
    "id",
    "organization",
    "project",
    "name",
    "kind",
    "provider",
    "hint",
    "owner",
    "issued_at",
    "rotated_at",
    "expires_at",
    "revoked_at",
    "last_probe_outcome",
    "last_probe_at",
}


def test_list_keys_json_is_valid_and_has_hints_but_no_secret_material(inventory):
    out, err = run("list_keys", "--format", "json")
    rows = json.loads(out)
    assert [r["name"] for r in rows] == ["org admin", "chatbot prod", "search prod"]
    assert all(set(r) == LISTED for r in rows)
    by_name = {r["name"]: r for r in rows}
    chatbot, secret = inventory[0]
    assert by_name["chatbot prod"]["hint"] == formats.hint(secret)
    assert by_name["chatbot prod"]["id"] == str(chatbot.pk)
    assert by_name["chatbot prod"]["organization"] == "acme"
    assert by_name["chatbot prod"]["project"] == "Chatbot"
    assert by_name["chatbot prod"]["owner"] == "ml-team"
    assert by_name["org admin"]["project"] is None
    for key, secret in inventory:
        assert_secret_absent(secret, out, err)
        assert key.fingerprint not in out
        assert bytes(key.secret_ciphertext).hex()[:16] not in out


def test_list_keys_table_shows_names_and_hints_but_no_secret_material(inventory):
    out, err = run("list_keys")
    assert out.splitlines()[0].split() == ["NAME", "ORGANIZATION/PROJECT", "KIND", "HINT", "ROTATED", "LAST", "PROBE"]
    assert "3 keys." in out
    assert max(len(line) for line in out.splitlines()) <= 120
    assert "acme/(organization)" in out and "acme/Search" in out
    for key, _ in inventory[:3]:
        assert key.name in out
        assert key.hint in out
    assert "old chatbot" not in out
    for key, secret in inventory:
        assert_secret_absent(secret, out, err)
        assert key.fingerprint not in out


def test_list_keys_table_fits_120_columns_even_with_long_names(make_key, org):
    long = Project.objects.create(organization=org, name="A project with a very long name indeed")
    make_key(name="a key whose name is far longer than the column", project=long, owner="x" * 150)
    out, _ = run("list_keys")
    assert max(len(line) for line in out.splitlines()) <= 120
    assert "a key whose name is far…" in out


def test_list_keys_csv_has_every_column_and_neutralises_formulas(inventory, make_key):
    make_key(name="=HYPERLINK(1)", owner="@team")
    out, err = run("list_keys", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert set(rows[0]) == LISTED
    by_name = {r["name"]: r for r in rows}
    chatbot, secret = inventory[0]
    assert by_name["chatbot prod"]["id"] == str(chatbot.pk)
    assert by_name["chatbot prod"]["hint"] == formats.hint(secret)
    assert by_name["chatbot prod"]["issued_at"] == chatbot.issued_at.isoformat()
    assert by_name["'=HYPERLINK(1)"]["owner"] == "'@team"
    assert "old chatbot" not in by_name
    for key, secret in inventory:
        assert_secret_absent(secret, out, err)
        assert key.fingerprint not in out


def test_list_keys_includes_revoked_keys_on_request(inventory):
    rows = json.loads(run("list_keys", "--format", "json", "--include-revoked")[0])
    revoked = [r for r in rows if r["revoked_at"]]
    assert [r["name"] for r in revoked] == ["old chatbot"]
    assert len(rows) == 4


def test_list_keys_filters_by_organization_and_project(inventory, db):
    other = Organization.objects.create(name="Other", slug="other")
    assert json.loads(run("list_keys", "--format", "json", "--org", "other")[0]) == []
    assert len(json.loads(run("list_keys", "--format", "json", "--org", "acme")[0])) == 3
    by_name = json.loads(run("list_keys", "--format", "json", "--project", "Search")[0])
    by_id = json.loads(run("list_keys", "--format", "json", "--project", "proj_Search123456")[0])
    assert [r["name"] for r in by_name] == [r["name"] for r in by_id] == ["search prod"]
    assert other.api_keys.count() == 0


def test_list_keys_refuses_an_unknown_organization(db):
    assert "No organization with slug “nope”" in refuse("list_keys", "--org", "nope")


def test_list_keys_of_an_empty_inventory_is_an_empty_json_array(db):
    assert json.loads(run("list_keys", "--format", "json")[0]) == []
    assert "0 keys." in run("list_keys")[0]


@pytest.mark.parametrize("output", ["json", "csv", "table"])
def test_list_keys_uses_the_same_number_of_queries_for_many_keys(make_key, org, output, django_assert_num_queries):
    for n in range(3):
        make_key(name=f"k{n}")
    with django_assert_num_queries(2):  # the organization check and one query for every row
        run("list_keys", "--org", "acme", "--format", output)
    for n in range(3, 40):
        make_key(name=f"k{n}")
    with django_assert_num_queries(2):
        out, _ = run("list_keys", "--org", "acme", "--format", output)
    assert "k39" in out
