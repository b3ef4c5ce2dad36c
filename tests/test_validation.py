"""Validation of keys, organizations and projects through the model (full_clean) and
the one registration form (ApiKeyForm), plus pure status methods on unsaved rows."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.utils.timezone import now

from accounts.models import Organization, Project, Tier
from keys import formats
from keys.forms import ApiKeyForm
from keys.models import ApiKey, Kind, Provider


def key_form(project=None, organization=None, secret="", **fields):
    data = {
        "organization": organization.pk if organization else "",
        "project": project.pk if project else "",
        "name": "chatbot prod",
        "kind": Kind.PROJECT,
        "provider": Provider.OPENAI,
        "secret": secret,
        "issued_at": now().isoformat(),
        **fields,
    }
    return ApiKeyForm(data=data)


def all_messages(form):
    return " ".join(m for messages in form.errors.values() for m in messages)


# --- the key form ------------------------------------------------------------------
@pytest.mark.parametrize(
    "fmt, kind, provider",
    [
        (formats.PROJECT, Kind.PROJECT, Provider.OPENAI),
        (formats.LEGACY, Kind.PROJECT, Provider.OPENAI),
        (formats.SERVICE_ACCOUNT, Kind.SERVICE_ACCOUNT, Provider.OPENAI),
        (formats.AZURE, Kind.PROJECT, Provider.AZURE),
    ],
)
def test_the_form_accepts_each_project_level_format_with_a_fitting_kind(project, fmt, kind, provider):
    extra = {"azure_endpoint": "https://res.openai.azure.com"} if provider == Provider.AZURE else {}
    form = key_form(project, secret=formats.generate(fmt), kind=kind, provider=provider, **extra)
    assert form.is_valid(), form.errors
    key = form.save()
    assert key.organization == project.organization
    assert key.kind == kind


def test_the_form_accepts_an_admin_key_on_the_organization(org):
    secret = formats.generate(formats.ADMIN)
    form = key_form(organization=org, secret=secret, kind=Kind.ADMIN)
    assert form.is_valid(), form.errors
    assert form.save().hint == formats.hint(secret)


def test_the_form_strips_a_pasted_newline_and_stores_only_ciphertext(project):
    secret = formats.generate()
    form = key_form(project, secret=f"  {secret}\n")
    assert form.is_valid(), form.errors
    key = form.save()
    assert ApiKey.objects.get(pk=key.pk).reveal_secret() == secret
    assert secret.encode() not in bytes(key.secret_ciphertext)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda s: s[:-3], "length or body is wrong"),
        (lambda s: s[:30] + "$" + s[31:], "characters no OpenAI or Azure key has"),
        (lambda s: s[:30] + " " + s[30:], "spaces or line breaks inside it"),
        (lambda s: s.replace(formats.MARKER, "XXXXXXXX"), "length or body is wrong"),
        (lambda s: "", "Enter the API key."),
        (lambda s: "   \n", "Enter the API key."),
    ],
)
def test_the_form_refuses_malformed_secrets_without_echoing_them(project, damage, message):
    secret = damage(formats.generate())
    form = key_form(project, secret=secret)
    assert not form.is_valid()
    assert message in " ".join(form.errors["secret"])
    if secret.strip():
        assert secret not in all_messages(form)
        assert secret[-12:] not in all_messages(form)
    assert ApiKey.objects.count() == 0


def test_an_admin_key_on_a_project_is_refused(project):
    form = key_form(project, secret=formats.generate(formats.ADMIN), kind=Kind.PROJECT)
    assert not form.is_valid()
    assert "This is an admin key (sk-admin-…)" in " ".join(form.errors["secret"])


def test_an_admin_kind_with_a_project_is_refused(project):
    form = key_form(project, secret=formats.generate(formats.ADMIN), kind=Kind.ADMIN)
    assert not form.is_valid()
    assert "Admin keys belong to the organization" in " ".join(form.errors["project"])


def test_a_project_key_registered_as_admin_is_refused(org):
    form = key_form(organization=org, secret=formats.generate(formats.PROJECT), kind=Kind.ADMIN)
    assert not form.is_valid()
    assert "An admin key must start with sk-admin-; this is a project key" in " ".join(form.errors["secret"])


def test_an_azure_key_with_provider_openai_is_refused_with_a_hint(project):
    secret = formats.generate(formats.AZURE)
    form = key_form(project, secret=secret, provider=Provider.OPENAI)
    assert not form.is_valid()
    assert "choose provider “Azure OpenAI”" in " ".join(form.errors["secret"])
    assert secret not in all_messages(form)


def test_an_openai_key_with_provider_azure_is_refused(project):
    form = key_form(
        project, secret=formats.generate(), provider=Provider.AZURE, azure_endpoint="https://r.openai.azure.com"
    )
    assert not form.is_valid()
    assert "Azure OpenAI keys are 32 hexadecimal or 84 characters" in " ".join(form.errors["secret"])


def test_an_azure_key_needs_its_endpoint(project):
    form = key_form(project, secret=formats.generate(formats.AZURE), provider=Provider.AZURE)
    assert not form.is_valid()
    assert "need the resource endpoint" in " ".join(form.errors["azure_endpoint"])


def test_a_project_key_without_a_project_is_refused(org):
    form = key_form(organization=org, secret=formats.generate())
    assert not form.is_valid()
    assert "need a project" in " ".join(form.errors["project"])


def test_a_project_of_another_organization_is_refused(project):
    other = Organization.objects.create(name="Other", slug="other")
    form = key_form(project, organization=other, secret=formats.generate())
    assert not form.is_valid()
    assert "belongs to another organization" in " ".join(form.errors["project"])


def test_a_key_cannot_expire_before_it_was_issued(project):
    form = key_form(project, secret=formats.generate(), expires_at=(now() - timedelta(days=1)).isoformat())
    assert not form.is_valid()
    assert "cannot expire before it was issued" in " ".join(form.errors["expires_at"])


def test_a_duplicate_key_is_refused_naming_the_project_that_holds_it(make_key, org):
    existing, secret = make_key(name="chatbot prod")
    other = Project.objects.create(organization=org, name="Search")
    form = key_form(other, secret=secret, name="copy")
    assert not form.is_valid()
    message = " ".join(form.errors["secret"])
    assert "already registered as “chatbot prod” in project “Acme / Chatbot”" in message
    assert secret not in all_messages(form)
    assert ApiKey.objects.count() == 1


def test_a_duplicate_admin_key_names_the_organization(org):
    secret = formats.generate(formats.ADMIN)
    assert key_form(organization=org, secret=secret, kind=Kind.ADMIN, name="org admin").save()
    form = key_form(organization=org, secret=f"{secret}\n", kind=Kind.ADMIN, name="again")
    assert not form.is_valid()
    assert "already registered as “org admin” in organization “Acme”" in " ".join(form.errors["secret"])


def test_set_secret_on_the_model_raises_a_validation_error_without_the_secret(project):
    secret = formats.generate()[:-1]
    key = ApiKey(organization=project.organization, project=project, name="x")
    with pytest.raises(ValidationError) as excinfo:
        key.set_secret(secret)
    assert "secret" in excinfo.value.message_dict
    assert secret not in str(excinfo.value)


# --- organizations and projects -------------------------------------------------------
@pytest.mark.parametrize(
    "field, value, message",
    [
        ("openai_org_id", "org_123456789", "An OpenAI organization id looks like org-AbC123…"),
        ("openai_org_id", "org-short", "An OpenAI organization id looks like org-AbC123…"),
        ("monthly_budget_usd", Decimal("-1.00"), "A budget cannot be negative."),
        ("rotation_policy_days", 0, "A rotation policy is at least one day."),
        ("alert_emails", "ops@example.com, not-an-email", "“not-an-email” is not a valid email address."),
    ],
)
def test_organization_validators_explain_what_is_wrong(db, field, value, message):
    org = Organization(name="Acme", slug="acme", **{field: value})
    with pytest.raises(ValidationError) as excinfo:
        org.full_clean()
    assert len(excinfo.value.message_dict[field]) == 1
    assert excinfo.value.message_dict[field][0].startswith(message)


def test_an_organization_with_good_values_passes_full_clean(db):
    org = Organization(
        name="Acme",
        slug="acme",
        openai_org_id="org-AbC12345xyz",
        monthly_budget_usd=Decimal("0"),
        rotation_policy_days=1,
        alert_emails="a@example.com; b@example.com\nc@example.com",
    )
    org.full_clean()
    assert org.alert_email_list() == ["a@example.com", "b@example.com", "c@example.com"]


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("openai_project_id", "proj-123456789", "An OpenAI project id looks like proj_AbC123…"),
        ("monthly_budget_usd", Decimal("-0.01"), "A budget cannot be negative."),
        ("rotation_policy_days", 0, "A rotation policy is at least one day."),
    ],
)
def test_project_validators_explain_what_is_wrong(org, field, value, message):
    project = Project(organization=org, name="Chatbot", **{field: value})
    with pytest.raises(ValidationError) as excinfo:
        project.full_clean()
    assert len(excinfo.value.message_dict[field]) == 1
    assert excinfo.value.message_dict[field][0].startswith(message)


def test_project_names_are_unique_within_an_organization(project):
    with pytest.raises(ValidationError) as excinfo:
        Project(organization=project.organization, name=project.name).full_clean()
    assert "already has a project with this name" in str(excinfo.value)


def test_organization_validators_reach_the_form_the_cli_uses(db):
    from accounts.forms import OrganizationForm

    form = OrganizationForm(
        data={
            "name": "Acme",
            "slug": "acme",
            "openai_org_id": "bad",
            "rotation_policy_days": "0",
            "monthly_budget_usd": "-5",
            "alert_emails": "nope",
        }
    )
    assert not form.is_valid()
    assert form.errors["openai_org_id"] == [
        "An OpenAI organization id looks like org-AbC123… (org- followed by letters and digits)."
    ]
    assert form.errors["rotation_policy_days"] == ["A rotation policy is at least one day."]
    assert form.errors["monthly_budget_usd"] == ["A budget cannot be negative."]
    assert form.errors["alert_emails"] == ["“nope” is not a valid email address."]


def test_project_validators_reach_the_form_the_cli_uses(org):
    from accounts.forms import ProjectForm

    form = ProjectForm(
        data={
            "organization": org.pk,
            "name": "Chatbot",
            "openai_project_id": "nope",
            "environment": "moon",
            "monthly_budget_usd": "-1",
            "rotation_policy_days": "0",
        }
    )
    assert not form.is_valid()
    assert set(form.errors) == {"openai_project_id", "environment", "monthly_budget_usd", "rotation_policy_days"}


# --- pure status methods on unsaved rows -----------------------------------------------
ISSUED = datetime(2025, 1, 1, tzinfo=UTC)


def test_rotation_is_due_after_the_organization_policy():
    org = Organization(name="Acme", rotation_policy_days=90)
    key = ApiKey(organization=org, kind=Kind.ADMIN, issued_at=ISSUED)
    assert key.rotation_due_at() == ISSUED + timedelta(days=90)


def test_a_project_override_and_the_last_rotation_move_the_due_date():
    org = Organization(name="Acme", rotation_policy_days=90)
    # A pk, as on a row read from the database (ApiKey.rotation_policy_days looks at project_id).
    project = Project(id=1, organization=org, name="Chatbot", rotation_policy_days=30)
    key = ApiKey(organization=org, project=project, issued_at=ISSUED)
    assert key.rotation_due_at() == ISSUED + timedelta(days=30)
    key.rotated_at = ISSUED + timedelta(days=10)
    assert key.rotation_due_at() == ISSUED + timedelta(days=40)


def test_tier_mismatch_reports_configured_and_observed_requests_per_minute():
    tier = Tier(name="Tier 1", requests_per_minute=500, tokens_per_minute=200_000)
    project = Project(name="Chatbot", tier=tier, observed_rpm=5_000)
    assert project.tier_mismatch() == (500, 5_000)
    project.observed_rpm = 500
    assert project.tier_mismatch() is None
    assert Project(name="No tier", observed_rpm=500).tier_mismatch() is None
    assert Project(name="Not probed", tier=tier).tier_mismatch() is None
