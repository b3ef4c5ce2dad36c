"""No secret-shaped input where no secret belongs: every plain text field a person types
(organization, project, key) refuses a key-shaped value — whole or embedded — and unsafe
text (bidi controls, terminal escapes, line breaks), through the admin and through the
commands, saves nothing, and never echoes the key back."""

import io
import os
import subprocess
import sys

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from accounts.models import AuditEvent, Organization, Project
from console.leakguard import KEY_SHAPED_MESSAGE
from keys import formats
from keys.models import ApiKey, Kind, Provider
from tests.test_admin import ADD_KEY, ADD_ORG, ADD_PROJECT, form_errors, key_data, org_data, project_data
from tests.workers import ROOT

pytestmark = pytest.mark.django_db


def embedded(kind, key):
    """A key hidden in a value the way people paste one."""
    return {"bearer": f"Bearer {key}", "glued": f"x{key}y", "url": f"https://hooks.example.com/x/{key}"}[kind]


def key_in_url(kind, key):
    return {"bearer": f"https://hooks.example.com/?auth=Bearer%20{key}", "glued": f"https://x{key}y.example.com"}.get(
        kind, embedded(kind, key)
    )


def counts():
    return (Organization.objects.count(), Project.objects.count(), ApiKey.objects.count(), AuditEvent.objects.count())


def page_errors(response, field):
    """The error messages of one field on a re-displayed admin form."""
    assert response.status_code == 200, "the form should be re-displayed with errors"
    return " ".join(response.context["adminform"].form.errors.get(field, []))


def assert_refused_without_echo(response, field, key, before):
    # A value too long for the field, or not a slug, is refused by the form field before
    # the model's validators run; either way it is refused and never shown again.
    assert page_errors(response, field)
    page = response.content.decode()
    assert key not in page and key[12:44] not in page
    assert counts() == before


FMTS = [formats.PROJECT, formats.AZURE]
KINDS = ["bearer", "glued"]
ORG_TEXT_FIELDS = ["name", "slug", "openai_org_id", "alert_emails"]
ORG_URL_FIELDS = ["alert_webhook_url"]
PROJECT_FIELDS = ["name", "openai_project_id"]
KEY_TEXT_FIELDS = ["name", "owner", "upstream_key_id", "azure_api_version"]
KEY_URL_FIELDS = ["base_url", "azure_endpoint"]


# --- the admin ---------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("field", ORG_TEXT_FIELDS + ORG_URL_FIELDS)
def test_an_organization_field_refuses_a_key_shaped_value_in_the_admin(admin_client, field, kind, fmt):
    key = formats.generate(fmt)
    value = key_in_url(kind, key) if field in ORG_URL_FIELDS else embedded(kind, key)
    before = counts()
    response = admin_client.post(ADD_ORG, org_data(**{field: value}))
    assert_refused_without_echo(response, field, key, before)


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("field", PROJECT_FIELDS)
def test_a_project_field_refuses_a_key_shaped_value_in_the_admin(admin_client, org, field, kind, fmt):
    key = formats.generate(fmt)
    before = counts()
    response = admin_client.post(ADD_PROJECT, project_data(org, **{field: embedded(kind, key)}))
    assert_refused_without_echo(response, field, key, before)


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("field", KEY_TEXT_FIELDS + KEY_URL_FIELDS)
def test_a_key_field_refuses_a_key_shaped_value_in_the_admin(admin_client, project, field, kind, fmt):
    key = formats.generate(fmt)
    secret = formats.generate()  # the real secret, in its own field
    value = key_in_url(kind, key) if field in KEY_URL_FIELDS else embedded(kind, key)
    before = counts()
    response = admin_client.post(ADD_KEY, key_data(secret, project=project.pk, **{field: value}))
    assert_refused_without_echo(response, field, key, before)
    assert secret not in response.content.decode()


@pytest.mark.parametrize(
    "url, field",
    [(ADD_ORG, f) for f in ORG_TEXT_FIELDS + ORG_URL_FIELDS]
    + [(ADD_PROJECT, f) for f in PROJECT_FIELDS]
    + [(ADD_KEY, f) for f in KEY_TEXT_FIELDS + KEY_URL_FIELDS],
)
def test_the_refusal_says_secrets_go_only_in_the_secret_field(admin_client, project, url, field):
    # A value the form field itself accepts (short enough, slug-shaped), so the message
    # comes from the model field's validator.
    key = formats.generate(formats.AZURE)
    value = f"https://hooks.example.com/x/x{key}y" if field in ORG_URL_FIELDS + KEY_URL_FIELDS else f"x{key}y"
    data = {
        ADD_ORG: lambda: org_data(**{field: value}),
        ADD_PROJECT: lambda: project_data(project.organization, **{field: value}),
        ADD_KEY: lambda: key_data(formats.generate(), project=project.pk, **{field: value}),
    }[url]()
    response = admin_client.post(url, data)
    assert KEY_SHAPED_MESSAGE in page_errors(response, field)
    assert key not in response.content.decode()


def test_the_key_change_page_refuses_a_key_pasted_into_the_name(admin_client, make_key):
    from tests.test_admin import key_change_data

    stored, _ = make_key(name="before")
    key = formats.generate(formats.SERVICE_ACCOUNT)
    response = admin_client.post(
        f"/admin/keys/apikey/{stored.pk}/change/", key_change_data(stored, name=f"Bearer {key}")
    )
    assert KEY_SHAPED_MESSAGE in form_errors(response)
    assert key not in response.content.decode()
    stored.refresh_from_db()
    assert stored.name == "before"


@pytest.mark.parametrize(
    "value, problem",
    [
        ("Acme\u202etxt.exe", "bidirectional-text control characters"),
        ("Acme \x1b[31mred\x1b[0m", "terminal escape sequences"),
        ("Acme\r\nInjected: header", "line breaks"),
    ],
)
def test_names_with_bidi_ansi_or_line_breaks_are_refused_in_the_admin(admin_client, org, value, problem):
    before = counts()
    for url, data in [
        (ADD_ORG, org_data(name=value)),
        (ADD_PROJECT, project_data(org, name=value)),
        (
            ADD_KEY,
            key_data(formats.generate(), project=Project.objects.create(organization=org, name="P").pk, name=value),
        ),
    ]:
        before = counts()
        response = admin_client.post(url, data)
        assert problem in form_errors(response), url
        assert counts() == before


# --- the commands: options through call_command ------------------------------------------
def call(*args, **options):
    """Run a command that must fail; returns everything it said."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError) as refused:
        call_command(*args, stdout=out, stderr=err, **options)
    return str(refused.value) + out.getvalue() + err.getvalue()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("option", ["openai_org_id", "alert_emails", "alert_webhook_url"])
@pytest.mark.parametrize("fmt", FMTS)
def test_add_org_refuses_a_key_shaped_option_without_echoing_it(option, kind, fmt):
    key = formats.generate(fmt)
    value = key_in_url(kind, key) if option == "alert_webhook_url" else embedded(kind, key)
    before = counts()
    said = call("add_org", name="Globex", slug="globex", **{option: value})
    if fmt == formats.AZURE:  # short enough for the form field: the model's validator speaks
        assert KEY_SHAPED_MESSAGE in said
    assert key not in said and key[12:44] not in said
    assert counts() == before


@pytest.mark.parametrize("kind", KINDS)
def test_add_project_refuses_a_key_shaped_project_id_without_echoing_it(org, kind):
    key = formats.generate(formats.AZURE)
    before = counts()
    said = call("add_project", org="acme", name="Search", openai_project_id=embedded(kind, key))
    assert KEY_SHAPED_MESSAGE in said and key not in said
    assert counts() == before


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("option", ["owner", "upstream_key_id", "azure_api_version", "base_url"])
@pytest.mark.parametrize("fmt", [formats.LEGACY, formats.AZURE])
def test_add_key_refuses_a_key_shaped_option_without_echoing_it(project, monkeypatch, option, kind, fmt):
    key, secret = formats.generate(fmt), formats.generate()
    monkeypatch.setenv("CONSOLE_NEW_KEY", secret)
    value = key_in_url(kind, key) if option == "base_url" else embedded(kind, key)
    before = counts()
    said = call("add_key", org="acme", project="Chatbot", name="k", **{option: value})
    if fmt == formats.AZURE and option != "base_url":  # base_url: not on the allow-list either
        assert KEY_SHAPED_MESSAGE in said
    assert key not in said and secret not in said
    assert counts() == before


@pytest.mark.parametrize(
    "command, options",
    [
        ("add_org", {"name": "{value}", "slug": "globex"}),
        ("add_org", {"name": "Globex", "slug": "{value}"}),
        ("add_project", {"org": "acme", "name": "{value}"}),
        ("add_key", {"org": "acme", "project": "Chatbot", "name": "{value}"}),
    ],
)
def test_a_key_shaped_required_option_is_refused_before_the_command_runs(project, command, options):
    key = formats.generate(formats.ADMIN)
    before = counts()
    said = call(command, **{k: v.format(value=f"Bearer {key}") for k, v in options.items()})
    assert "on the command line" in said
    assert key not in said
    assert counts() == before


@pytest.mark.parametrize("value", ["Acme\u2066x\u2069", "Acme\x1b]0;title\x07", "Acme\nSecond line"])
def test_add_org_and_add_project_refuse_unsafe_names(org, value):
    before = counts()
    assert "Remove the" in call("add_org", name=value, slug="globex")
    assert "Remove the" in call("add_project", org="acme", name=value)
    assert counts() == before


# --- the commands: a real command line -----------------------------------------------------
def manage(*argv, **env):
    return subprocess.run(
        [sys.executable, "manage.py", *argv],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["add_org", "--name", "Bearer {key}", "--slug", "globex"],
        ["add_org", "--name", "Globex", "--slug", "globex", "--openai-org-id=x{key}y"],
        ["add_project", "--org", "acme", "--name", "Search", "--openai-project-id", "{key}"],
        ["add_key", "--org", "acme", "--name", "Bearer {key}"],
        ["add_key", "--org", "acme", "--name", "k", "--owner", "x{key}y"],
        ["list_keys", "--org", "x{key}y"],
        ["rewrap_keys", "{key}"],
    ],
)
def test_a_key_anywhere_in_argv_is_refused_with_exit_status_2_and_never_printed(argv):
    key = formats.generate()
    result = manage(*[a.format(key=key) for a in argv])
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "on the command line" in output
    assert key not in output and key[12:44] not in output


def test_add_key_keeps_its_own_advice_on_where_the_key_goes():
    key = formats.generate()
    result = manage("add_key", "--org", "acme", "--name", f"Bearer {key}")
    assert result.returncode == 2
    assert "CONSOLE_NEW_KEY" in result.stderr and "--secret-stdin" in result.stderr
    assert key not in result.stdout + result.stderr


def test_every_management_command_of_the_project_is_guarded():
    from django.core.management import get_commands, load_command_class

    from console.leakguard import GuardedCommand

    ours = {name: app for name, app in get_commands().items() if app in ("accounts", "keys", "sandbox", "usage", "api")}
    assert {"add_org", "add_project", "add_key", "list_keys", "load_demo"} <= set(ours)
    for name, app in ours.items():
        assert isinstance(load_command_class(app, name), GuardedCommand), name


def test_ordinary_values_are_still_accepted(project, monkeypatch):
    monkeypatch.setenv("CONSOLE_NEW_KEY", formats.generate())
    call_command("add_org", name="Globex Ünïcode — 東京", slug="globex", stdout=io.StringIO())
    call_command(
        "add_key",
        org="acme",
        project="Chatbot",
        name="chatbot prod (sk-proj-…Ab3d)",
        owner="ml-team",
        upstream_key_id="key_AbCdEf123456",
        stdout=io.StringIO(),
    )
    assert ApiKey.objects.get(name="chatbot prod (sk-proj-…Ab3d)").kind == Kind.PROJECT
    assert ApiKey.objects.get(owner="ml-team").provider == Provider.OPENAI


def test_a_key_pasted_into_the_admin_search_box_is_not_shown_back(admin_client, make_key):
    make_key(name="searchable")
    key = formats.generate()
    response = admin_client.get("/admin/keys/apikey/", {"q": key, "status": "active"}, follow=True)
    html = response.content.decode()
    assert key not in html
    assert "looks like an API key" in html
    assert response.redirect_chain[-1][0] == "/admin/keys/apikey/?status=active"
