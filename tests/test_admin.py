"""Registering organizations, projects and keys through the admin: the happy path is
audited, bad input gets a clear message and changes nothing, and the secret never comes
back out of the admin."""

import base64
from decimal import Decimal

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.admin.sites import site
from django.contrib.auth.models import User
from django.test import RequestFactory
from django.urls import reverse

from accounts.models import AuditEvent, Organization, Project, Tier
from keys import formats
from keys.models import ApiKey, Circuit, CircuitState, Kind

ADD_KEY = reverse("admin:keys_apikey_add")
ADD_ORG = reverse("admin:accounts_organization_add")
ADD_PROJECT = reverse("admin:accounts_project_add")
KEYS = reverse("admin:keys_apikey_changelist")


def management(prefix, total=0, initial=0):
    return {
        f"{prefix}-TOTAL_FORMS": str(total),
        f"{prefix}-INITIAL_FORMS": str(initial),
        f"{prefix}-MIN_NUM_FORMS": "0",
        f"{prefix}-MAX_NUM_FORMS": "1000",
    }


def key_data(secret, organization="", project="", **fields):
    """POST data for the API-key add form."""
    data = {
        "organization": organization,
        "project": project,
        "name": "Chatbot production",
        "kind": Kind.PROJECT,
        "provider": "openai",
        "secret": secret,
        "base_url": "",
        "azure_endpoint": "",
        "azure_api_version": "",
        "upstream_key_id": "",
        "owner": "platform team",
        "issued_at_0": "2025-01-15",
        "issued_at_1": "09:00:00",
        "expires_at_0": "",
        "expires_at_1": "",
        "_save": "Save",
    }
    data.update(fields)
    return data


def key_change_data(key, secret="", **fields):
    """POST data for the API-key change form, as a browser would send it unchanged
    (kind and provider are read-only there)."""
    data = key_data(
        secret,
        organization=key.organization_id,
        project=key.project_id or "",
        name=key.name,
        owner=key.owner,
        upstream_key_id=key.upstream_key_id,
        issued_at_0=key.issued_at.strftime("%Y-%m-%d"),
        issued_at_1=key.issued_at.strftime("%H:%M:%S"),
    )
    del data["kind"], data["provider"]
    # issued_at has a callable default, so the form carries its initial value in hidden
    # inputs and compares against them.
    data["initial-issued_at_0"], data["initial-issued_at_1"] = data["issued_at_0"], data["issued_at_1"]
    data.update(fields)
    return data


def org_data(**fields):
    data = {
        "name": "Globex",
        "slug": "globex",
        "openai_org_id": "org-Globex12345678",
        "rotation_policy_days": "90",
        "monthly_budget_usd": "1000",
        "alert_emails": "",
        "alert_webhook_url": "",
        "_save": "Save",
        **management("projects"),
        **management("api_keys"),
    }
    data.update(fields)
    return data


def project_data(org, **fields):
    data = {
        "organization": org.pk,
        "name": "Search",
        "openai_project_id": "proj_Search123456",
        "environment": "production",
        "tier": Tier.objects.get(name="Tier 1").pk,
        "monthly_budget_usd": "200",
        "rotation_policy_days": "",
        "archived_at_0": "",
        "archived_at_1": "",
        "_save": "Save",
    }
    data.update(fields)
    return data


def form_errors(response):
    """Every error message on the admin page: main form and inline rows."""
    assert response.status_code == 200, response.status_code
    found = []
    form = response.context["adminform"].form
    for errors in form.errors.values():
        found += errors
    for inline in response.context["inline_admin_formsets"]:
        for row_errors in inline.formset.errors:
            for errors in row_errors.values():
                found += errors
        found += inline.formset.non_form_errors()
    return " ".join(found)


def counts():
    return (Organization.objects.count(), Project.objects.count(), ApiKey.objects.count())


def actions(action):
    return list(AuditEvent.objects.filter(action=action))


@pytest.mark.django_db
def test_registering_org_then_project_then_key_through_the_admin_works_and_is_audited(admin_client):
    admin_secret = formats.generate(formats.ADMIN)
    response = admin_client.post(
        ADD_ORG,
        org_data(
            **management("projects", total=1),
            **{
                "projects-0-name": "Search",
                "projects-0-openai_project_id": "proj_Search123456",
                "projects-0-environment": "production",
                "projects-0-tier": Tier.objects.get(name="Tier 2").pk,
                "projects-0-monthly_budget_usd": "250",
                "projects-0-rotation_policy_days": "30",
            },
            **management("api_keys", total=1),
            **{
                "api_keys-0-name": "Globex admin",
                "api_keys-0-secret": admin_secret,
                "api_keys-0-owner": "ops",
                "api_keys-0-expires_at_0": "",
                "api_keys-0-expires_at_1": "",
            },
        ),
    )
    assert response.status_code == 302, form_errors(response)
    org = Organization.objects.get(slug="globex")
    project = org.projects.get()
    assert project.rotation_policy_days == 30
    admin_key = org.api_keys.get()
    assert (admin_key.kind, admin_key.project) == (Kind.ADMIN, None)
    assert admin_key.reveal_secret() == admin_secret
    assert admin_key.next_probe_at is not None  # first probe scheduled

    # The project's page then takes key rows.
    project_secret = formats.generate(formats.PROJECT)
    response = admin_client.post(
        reverse("admin:accounts_project_change", args=[project.pk]),
        project_data(
            org,
            tier=project.tier_id,
            rotation_policy_days="30",
            monthly_budget_usd="250",
            **management("api_keys", total=1),
            **{
                "api_keys-0-name": "Search backend",
                "api_keys-0-kind": Kind.PROJECT,
                "api_keys-0-provider": "openai",
                "api_keys-0-secret": project_secret,
                "api_keys-0-owner": "search team",
                "api_keys-0-expires_at_0": "",
                "api_keys-0-expires_at_1": "",
            },
        ),
    )
    assert response.status_code == 302, form_errors(response)
    inline_key = project.api_keys.get()
    assert inline_key.organization == org
    assert inline_key.reveal_secret() == project_secret
    assert inline_key.next_probe_at is not None

    # And the key page registers one directly.
    direct_secret = formats.generate(formats.SERVICE_ACCOUNT)
    response = admin_client.post(
        ADD_KEY, key_data(direct_secret, project=project.pk, kind=Kind.SERVICE_ACCOUNT, name="Indexer")
    )
    assert response.status_code == 302, form_errors(response)
    direct_key = ApiKey.objects.get(name="Indexer")
    assert direct_key.organization == org  # taken from the project
    assert direct_key.reveal_secret() == direct_secret
    assert direct_key.hint == formats.hint(direct_secret)

    assert [e.target_id for e in actions("organization.created")] == [str(org.pk)]
    assert [e.target_id for e in actions("project.created")] == [str(project.pk)]
    created = {e.target_id: e.details for e in actions("key.created")}
    for details in created.values():
        assert details.pop("organization") == org.pk
        assert details.pop("ip") == "127.0.0.1"  # the admin's client address
    assert created == {
        str(admin_key.pk): {"hint": admin_key.hint, "kind": "admin", "provider": "openai", "project": None},
        str(inline_key.pk): {"hint": inline_key.hint, "kind": "project", "provider": "openai", "project": project.pk},
        str(direct_key.pk): {
            "hint": direct_key.hint,
            "kind": "service_account",
            "provider": "openai",
            "project": project.pk,
        },
    }
    assert all(e.actor_label == "alice" for e in AuditEvent.objects.all())


def bad_secret_cases():
    """(case id, a function of (org, project) giving the POST overrides, expected message)."""
    return [
        (
            "malformed key",
            lambda org, project: {"secret": "sk-proj-abc123", "project": project.pk},
            "its length or body is wrong",
        ),
        (
            "whitespace inside",
            lambda org, project: {"secret": spaced(formats.generate()), "project": project.pk},
            "contains spaces or line breaks inside it",
        ),
        (
            "wrong length after the prefix",
            lambda org, project: {"secret": formats.generate()[:-1], "project": project.pk},
            "looks like a project key (sk-proj-…) but its length or body is wrong",
        ),
        (
            "admin key on a project",
            lambda org, project: {"secret": formats.generate(formats.ADMIN), "project": project.pk},
            "register it on the organization",
        ),
        (
            "project key entered as kind admin",
            lambda org, project: {"secret": formats.generate(), "organization": org.pk, "kind": Kind.ADMIN},
            "An admin key must start with sk-admin-",
        ),
        (
            "azure key without endpoint",
            lambda org, project: {
                "secret": formats.generate(formats.AZURE),
                "project": project.pk,
                "provider": "azure",
            },
            "Azure OpenAI keys need the resource endpoint",
        ),
        ("no secret at all", lambda org, project: {"secret": "", "project": project.pk}, "Enter the API key."),
    ]


def spaced(secret):
    return secret[:40] + " " + secret[40:]


@pytest.mark.django_db
@pytest.mark.parametrize("case, overrides, message", bad_secret_cases(), ids=[c[0] for c in bad_secret_cases()])
def test_a_bad_key_gets_a_clear_message_and_changes_nothing(admin_client, project, case, overrides, message):
    data = key_data(**{"secret": "", **overrides(project.organization, project)})
    before = (counts(), AuditEvent.objects.count())
    response = admin_client.post(ADD_KEY, data)
    assert message in form_errors(response)
    assert (counts(), AuditEvent.objects.count()) == before
    if data["secret"]:
        assert data["secret"] not in response.content.decode()
        assert data["secret"].strip().split()[0] not in response.content.decode()


@pytest.mark.django_db
def test_a_duplicate_key_names_the_project_holding_it_and_not_the_secret(admin_client, project, make_key):
    existing, secret = make_key(name="Chatbot prod")
    before = counts()
    response = admin_client.post(ADD_KEY, key_data(secret, project=project.pk, name="Copy"))
    errors = form_errors(response)
    assert "already registered as “Chatbot prod” in project “Acme / Chatbot”" in errors
    assert secret not in errors
    assert secret not in response.content.decode()
    assert counts() == before
    assert not actions("key.created")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "field, value, message",
    [
        ("openai_org_id", "acme", "An OpenAI organization id looks like org-"),
        ("monthly_budget_usd", "-5", "A budget cannot be negative."),
        ("rotation_policy_days", "0", "A rotation policy is at least one day."),
    ],
)
def test_a_bad_organization_gets_a_clear_message_and_changes_nothing(admin_client, org, field, value, message):
    before = (counts(), AuditEvent.objects.count())
    response = admin_client.post(ADD_ORG, org_data(**{field: value}))
    assert message in form_errors(response)
    assert (counts(), AuditEvent.objects.count()) == before


@pytest.mark.django_db
@pytest.mark.parametrize(
    "field, value, message",
    [
        ("openai_project_id", "project-1", "An OpenAI project id looks like proj_"),
        ("monthly_budget_usd", "-1", "A budget cannot be negative."),
        ("rotation_policy_days", "0", "A rotation policy is at least one day."),
    ],
)
def test_a_bad_project_gets_a_clear_message_and_changes_nothing(admin_client, org, field, value, message):
    before = (counts(), AuditEvent.objects.count())
    response = admin_client.post(ADD_PROJECT, project_data(org, **{field: value}))
    assert message in form_errors(response)
    assert (counts(), AuditEvent.objects.count()) == before


@pytest.mark.django_db
def test_a_bad_project_row_on_the_organization_page_saves_neither_the_org_nor_the_row(admin_client):
    before = counts()
    response = admin_client.post(
        ADD_ORG,
        org_data(
            **management("projects", total=1),
            **{
                "projects-0-name": "Search",
                "projects-0-openai_project_id": "project-1",
                "projects-0-environment": "production",
                "projects-0-tier": "",
                "projects-0-monthly_budget_usd": "",
                "projects-0-rotation_policy_days": "",
            },
        ),
    )
    assert "An OpenAI project id looks like proj_" in form_errors(response)
    assert counts() == before


@pytest.mark.django_db
def test_a_blank_secret_on_change_keeps_the_old_secret_and_records_only_the_edit(admin_client, make_key):
    key, secret = make_key(owner="old owner")
    old_ciphertext = bytes(key.secret_ciphertext)
    url = reverse("admin:keys_apikey_change", args=[key.pk])
    response = admin_client.post(url, key_change_data(key, owner="new owner"))
    assert response.status_code == 302, form_errors(response)
    key.refresh_from_db()
    assert key.owner == "new owner"
    assert key.reveal_secret() == secret
    assert bytes(key.secret_ciphertext) == old_ciphertext
    assert key.rotated_at is None
    assert not actions("key.secret_replaced")
    [updated] = actions("key.updated")
    assert updated.details == {
        "hint": key.hint,
        "changes": {"owner": {"old": "old owner", "new": "new owner"}},
        "ip": "127.0.0.1",
    }


@pytest.mark.django_db
def test_replacing_the_secret_on_the_key_page_is_refused_and_points_to_rotate(admin_client, make_key):
    """A new secret goes through "Rotate key" (probed first, grace period), never around it."""
    key, old_secret = make_key()
    url = reverse("admin:keys_apikey_change", args=[key.pk])
    response = admin_client.post(url, key_change_data(key, secret=formats.generate()))
    assert response.status_code == 200
    assert "use “Rotate key”" in response.content.decode()
    key.refresh_from_db()
    assert key.reveal_secret() == old_secret
    assert key.hint == formats.hint(old_secret)
    assert key.rotated_at is None
    assert not actions("key.secret_replaced") and not actions("key.updated")


def test_the_change_page_says_how_to_replace_a_secret_and_the_add_page_does_not(admin_client, make_key):
    key, _ = make_key()
    change = admin_client.get(reverse("admin:keys_apikey_change", args=[key.pk])).content.decode()
    add = admin_client.get(ADD_KEY).content.decode()
    assert "To replace the secret, use “Rotate key”" in change
    assert "Rotate key" not in add.split('id="id_secret_helptext"')[1][:400]


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["admin_client", "reviewer_client"])
def test_the_change_form_shows_the_hint_but_never_the_secret_ciphertext_or_fingerprint(request, role, make_key):
    client = request.getfixturevalue(role)
    key, secret = make_key()
    html = client.get(reverse("admin:keys_apikey_change", args=[key.pk])).content.decode()
    ciphertext = bytes(key.secret_ciphertext)
    assert key.hint.split("…")[1] in html  # the page does show the key, by its hint
    for forbidden in (
        secret,
        secret[8:40],
        ciphertext.hex(),
        ciphertext.hex()[:32],
        base64.b64encode(ciphertext).decode()[:32],
        base64.urlsafe_b64encode(ciphertext).decode()[:32],
        key.fingerprint,
        key.fingerprint[:16],
    ):
        assert forbidden not in html


@pytest.mark.django_db
def test_a_rejected_form_does_not_echo_the_secret(admin_client, project):
    secret = formats.generate()
    response = admin_client.post(ADD_KEY, key_data(secret, project=project.pk, name=""))
    assert "This field is required." in form_errors(response)
    assert secret not in response.content.decode()
    assert secret[8:40] not in response.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize("lookup", ["secret_ciphertext__startswith", "fingerprint", "project__api_keys__fingerprint"])
def test_the_key_list_refuses_to_filter_on_secret_fields(admin_client, make_key, lookup):
    key, _ = make_key()
    value = key.fingerprint if "fingerprint" in lookup else "\\x"
    response = admin_client.get(KEYS, {lookup: value})
    # Django answers a refused lookup with 400 (DisallowedModelAdminLookup); an
    # "incorrect lookup" would redirect to ?e=1. Either way nothing was filtered.
    if response.status_code == 302:
        assert response.url.endswith("?e=1")
    else:
        assert response.status_code == 400
    assert key.name not in response.content.decode()


@pytest.mark.django_db
def test_lookup_allowed_refuses_secret_fields_and_allows_ordinary_ones(rf_admin_request):
    model_admin = site._registry[ApiKey]
    assert not model_admin.lookup_allowed("secret_ciphertext__startswith", "x", rf_admin_request)
    assert not model_admin.lookup_allowed("fingerprint", "x", rf_admin_request)
    assert not model_admin.lookup_allowed("fingerprint__exact", "x", rf_admin_request)
    assert model_admin.lookup_allowed("provider__exact", "openai", rf_admin_request)
    assert not set(model_admin.search_fields) & {"secret_ciphertext", "fingerprint"}


@pytest.fixture
def rf_admin_request(admin_user):
    request = RequestFactory().get(KEYS)
    request.user = admin_user
    return request


@pytest.mark.django_db
def test_searching_for_a_fingerprint_finds_nothing(admin_client, make_key):
    key, _ = make_key()
    response = admin_client.get(KEYS, {"q": key.fingerprint})
    assert response.context["cl"].result_count == 0
    response = admin_client.get(KEYS, {"q": key.hint})
    assert response.context["cl"].result_count == 1


@pytest.mark.django_db
def test_no_history_entry_holds_the_secret_or_its_ciphertext(admin_client, project):
    secret = formats.generate()
    admin_client.post(ADD_KEY, key_data(secret, project=project.pk))
    key = ApiKey.objects.get()
    replacement = formats.generate()
    # A new secret on the key page comes only with a new destination.
    moved = key_change_data(key, secret=replacement, base_url="http://127.0.0.1:9/v1")
    response = admin_client.post(reverse("admin:keys_apikey_change", args=[key.pk]), moved)
    assert response.status_code == 302, form_errors(response)
    key.refresh_from_db()
    assert key.reveal_secret() == replacement
    entries = list(LogEntry.objects.all())
    assert len(entries) == 2
    ciphertext = bytes(key.secret_ciphertext)
    for entry in entries:
        text = f"{entry.object_repr} {entry.change_message} {entry.get_change_message()}"
        for forbidden in (secret, replacement, ciphertext.hex(), base64.b64encode(ciphertext).decode()):
            assert forbidden not in text
    assert "Secret" in entries[0].get_change_message()  # the field name is recorded, not the value


@pytest.mark.django_db
def test_revoking_keys_sets_revoked_at_records_each_and_reports_the_count(admin_client, make_key):
    first, _ = make_key(name="one")
    second, _ = make_key(name="two")
    untouched, _ = make_key(name="three")
    response = admin_client.post(
        KEYS, {"action": "revoke_selected", "_selected_action": [first.pk, second.pk], "index": "0"}, follow=True
    )
    assert "Revoked 2 key(s)." in [str(m) for m in response.context["messages"]]
    assert ApiKey.objects.filter(revoked_at__isnull=False).count() == 2
    untouched.refresh_from_db()
    assert untouched.revoked_at is None
    assert {e.target_id for e in actions("key.revoked")} == {str(first.pk), str(second.pk)}


@pytest.mark.django_db
def test_deleting_a_key_records_it_with_its_hint(client, admin_user, make_key):
    key, _ = make_key()
    url = reverse("admin:keys_apikey_delete", args=[key.pk])
    # Console admins revoke keys; only superusers delete them (issue 9).
    client.force_login(admin_user)
    assert client.post(url, {"post": "yes"}).status_code == 403
    assert ApiKey.objects.filter(pk=key.pk).exists()
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw-root-123456"))
    response = client.post(url, {"post": "yes"})
    assert response.status_code == 302
    assert not ApiKey.objects.exists()
    [event] = actions("key.deleted")
    assert (event.target_id, event.details) == (str(key.pk), {**key.audit_details(), "ip": "127.0.0.1"})
    assert event.details["hint"] == key.hint


@pytest.mark.django_db
def test_editing_and_deleting_an_organization_is_audited(admin_client, org):
    url = reverse("admin:accounts_organization_change", args=[org.pk])
    response = admin_client.post(
        url, org_data(name="Acme Corp", slug="acme", openai_org_id=org.openai_org_id, monthly_budget_usd="500")
    )
    assert response.status_code == 302, form_errors(response)
    [event] = actions("organization.updated")
    assert event.details["changes"] == {
        "name": {"old": "Acme", "new": "Acme Corp"},
        "monthly_budget_usd": {"old": None, "new": "500"},
    }
    admin_client.post(reverse("admin:accounts_organization_delete", args=[org.pk]), {"post": "yes"})
    assert not Organization.objects.exists()
    assert [e.target_id for e in actions("organization.deleted")] == [str(org.pk)]


@pytest.mark.django_db
def test_a_key_row_saved_on_the_project_page_is_audited_like_the_key_page(admin_client, project, make_key):
    key, secret = make_key(name="Chatbot prod", owner="a")
    response = admin_client.post(
        reverse("admin:accounts_project_change", args=[project.pk]),
        project_data(
            project.organization,
            name=project.name,
            openai_project_id=project.openai_project_id,
            environment=project.environment,
            tier=project.tier_id,
            monthly_budget_usd="",
            **management("api_keys", total=1, initial=1),
            **{
                "api_keys-0-id": key.pk,
                "api_keys-0-project": project.pk,
                "api_keys-0-name": "Chatbot prod",
                "api_keys-0-kind": Kind.PROJECT,
                "api_keys-0-provider": "openai",
                "api_keys-0-secret": "",
                "api_keys-0-owner": "b",
                "api_keys-0-expires_at_0": "",
                "api_keys-0-expires_at_1": "",
            },
        ),
    )
    assert response.status_code == 302, form_errors(response)
    key.refresh_from_db()
    assert key.owner == "b"
    assert key.reveal_secret() == secret
    [event] = actions("key.updated")
    assert event.details == {"hint": key.hint, "changes": {"owner": {"old": "a", "new": "b"}}, "ip": "127.0.0.1"}
    assert not actions("key.secret_replaced")
    assert not actions("project.updated")  # the project's own fields did not change


@pytest.mark.django_db
def test_the_project_page_flags_a_tier_that_disagrees_with_the_api(admin_client, project):
    Project.objects.filter(pk=project.pk).update(observed_rpm=5000)
    html = admin_client.get(reverse("admin:accounts_project_changelist")).content.decode()
    assert '<span class="state warn" title="tier mismatch">Tier 1 says 500 RPM, API reports 5,000</span>' in html
    html = admin_client.get(reverse("admin:accounts_project_change", args=[project.pk])).content.decode()
    assert "Tier 1 says 500 RPM, API reports 5,000" in html
    Project.objects.filter(pk=project.pk).update(observed_rpm=500)
    html = admin_client.get(reverse("admin:accounts_project_changelist")).content.decode()
    assert "API reports" not in html


@pytest.mark.django_db
def test_the_key_list_shows_probe_outcomes_as_badges(admin_client, make_key):
    make_key(name="good", last_probe_outcome="ok")
    make_key(name="bad", last_probe_outcome="invalid_key")
    make_key(name="busy", last_probe_outcome="rate_limited")
    make_key(name="new")
    html = admin_client.get(KEYS).content.decode()
    assert '<span class="state ok">OK</span>' in html
    assert '<span class="state failing">Invalid key</span>' in html
    assert '<span class="state warn">Rate limited (alive)</span>' in html
    assert '<span class="state muted">Never</span>' in html
    assert "keys/admin.css" in html
    names = lambda params: sorted(k.name for k in admin_client.get(KEYS, params).context["cl"].result_list)  # noqa: E731
    assert names({"probe": "failing"}) == ["bad"]
    assert names({"probe": "ok"}) == ["good"]
    assert names({"probe": "rate_limited"}) == ["busy"]
    assert names({"probe": "never"}) == ["new"]


@pytest.mark.django_db
def test_closing_a_circuit_resets_it_and_is_audited(admin_client):
    circuit = Circuit.objects.create(host="api.openai.com", state=CircuitState.OPEN, consecutive_failures=7)
    response = admin_client.post(
        reverse("admin:keys_circuit_changelist"),
        {"action": "close_selected", "_selected_action": [circuit.pk], "index": "0"},
        follow=True,
    )
    assert "Closed 1 circuit(s)." in [str(m) for m in response.context["messages"]]
    circuit.refresh_from_db()
    assert (circuit.state, circuit.consecutive_failures, circuit.open_until) == (CircuitState.CLOSED, 0, None)
    assert [e.target_id for e in actions("circuit.closed")] == [str(circuit.pk)]


@pytest.mark.django_db
def test_editing_tiers_in_the_list_is_audited(admin_client):
    tiers = list(Tier.objects.all())
    data = {"form-TOTAL_FORMS": len(tiers), "form-INITIAL_FORMS": len(tiers), "_save": "Save"}
    for i, tier in enumerate(tiers):
        data[f"form-{i}-id"] = tier.pk
        data[f"form-{i}-requests_per_minute"] = tier.requests_per_minute
        data[f"form-{i}-tokens_per_minute"] = tier.tokens_per_minute
        data[f"form-{i}-position"] = tier.position
    data["form-1-requests_per_minute"] = 600
    response = admin_client.post(reverse("admin:accounts_tier_changelist"), data)
    assert response.status_code == 302
    assert Tier.objects.get(pk=tiers[1].pk).requests_per_minute == 600
    [event] = actions("tier.updated")
    assert event.details == {"changes": {"requests_per_minute": {"old": 500, "new": 600}}, "ip": "127.0.0.1"}


@pytest.mark.django_db
def test_budgets_are_stored_as_entered(admin_client):
    response = admin_client.post(ADD_ORG, org_data(monthly_budget_usd="1234.50"))
    assert response.status_code == 302, form_errors(response)
    assert Organization.objects.get(slug="globex").monthly_budget_usd == Decimal("1234.50")


def test_the_organization_list_counts_projects_and_keys_without_multiplying_them(admin_client, org, make_key):

    second = Project.objects.create(organization=org, name="Second", openai_project_id="proj_Second000001")
    make_key()
    make_key()
    make_key(project=second)
    response = admin_client.get("/admin/accounts/organization/")
    row = response.context["cl"].result_list.get(pk=org.pk)
    assert (row.n_projects, row.n_keys) == (2, 3)


def test_the_organization_page_lists_existing_projects_read_only_and_offers_a_new_row(admin_client, project):
    html = admin_client.get(f"/admin/accounts/organization/{project.organization.pk}/change/").content.decode()
    assert project.name in html
    assert 'name="projects-0-name"' not in html  # the existing project is not an editable row
    assert 'name="projects-1-name"' in html  # the empty row for a new project


def test_the_organization_page_costs_the_same_queries_for_3_or_20_projects(admin_client, org):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def queries():
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(f"/admin/accounts/organization/{org.pk}/change/").status_code == 200
        return len(captured)

    for i in range(3):
        Project.objects.create(organization=org, name=f"p{i}", tier=Tier.objects.first())
    few = queries()
    for i in range(3, 20):
        Project.objects.create(organization=org, name=f"p{i}", tier=Tier.objects.first())
    assert queries() == few
