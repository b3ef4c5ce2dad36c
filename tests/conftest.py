"""Shared actors and objects. Secrets are generated at run time, never committed."""

import pytest
from django.contrib.auth.models import Group, User

from accounts.models import Organization, Project, Tier
from keys import formats
from keys.models import ApiKey, Kind, Provider


@pytest.fixture
def admin_user(db):
    """A console admin: member of the “Console admins” group, staff, not superuser."""
    user = User.objects.create_user("alice", "alice@example.com", "pw-alice-123456", is_staff=True)
    user.groups.add(Group.objects.get(name="Console admins"))
    return user


@pytest.fixture
def reviewer(db):
    user = User.objects.create_user("rita", "rita@example.com", "pw-rita-123456", is_staff=True)
    user.groups.add(Group.objects.get(name="Security reviewers"))
    return user


@pytest.fixture
def outsider(db):
    """Logged-in but not staff: the admin must turn them away."""
    return User.objects.create_user("oscar", "oscar@example.com", "pw-oscar-123456")


@pytest.fixture
def admin_client(client, admin_user):
    client.force_login(admin_user)
    return client


@pytest.fixture
def reviewer_client(client, reviewer):
    client.force_login(reviewer)
    return client


@pytest.fixture
def org(db):
    return Organization.objects.create(name="Acme", slug="acme", openai_org_id="org-AcmeAcme1234")


@pytest.fixture
def project(org):
    return Project.objects.create(
        organization=org, name="Chatbot", openai_project_id="proj_Chatbot12345", tier=Tier.objects.get(name="Tier 1")
    )


@pytest.fixture
def make_key(project):
    """Create a stored key with a fresh secret; returns (key, secret)."""

    def make(fmt=formats.PROJECT, project=project, kind=Kind.PROJECT, provider=Provider.OPENAI, **fields):
        secret = formats.generate(fmt)
        key = ApiKey(
            organization=project.organization if project else fields.pop("organization"),
            project=project,
            kind=kind,
            provider=provider,
            name=fields.pop("name", f"key {formats.hint(secret)}"),
            **fields,
        )
        if provider == Provider.AZURE and not key.azure_endpoint:
            key.azure_endpoint = "https://example-resource.openai.azure.com"
        key.set_secret(secret)
        key.full_clean()
        key.save()
        return key, secret

    return make
