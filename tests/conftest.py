"""Shared actors and objects. Secrets are generated at run time, never committed."""

import pytest
from django.contrib.auth.models import Group, User

from accounts.models import Organization, Project, Tier
from keys import formats
from keys.models import ApiKey, Kind, Provider


def join(user, group_name):
    """Put a fixture's user in a group as the world a test starts from: written straight
    into the membership table, so it is not one of the test's own audited changes
    (`user.groups.add` is, see accounts/access_changes.py)."""
    User.groups.through.objects.create(user=user, group=Group.objects.get(name=group_name))


@pytest.fixture
def admin_user(db):
    """A console admin: member of the “Console admins” group, staff, not superuser."""
    user = User.objects.create_user("alice", "alice@example.com", "pw-alice-123456", is_staff=True)
    join(user, "Console admins")
    return user


@pytest.fixture
def reviewer(db):
    user = User.objects.create_user("rita", "rita@example.com", "pw-rita-123456", is_staff=True)
    join(user, "Security reviewers")
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


# --- The sandbox API over real HTTP (sandbox/) ------------------------------------------


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def sandbox_server(tmp_path_factory):
    """A real sandbox API subprocess for the whole session; yields its SandboxControl."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from sandbox.control import SandboxControl

    port = int(os.environ["SANDBOX_TEST_PORT"])  # on CONSOLE_ALLOWED_API_HOSTS (tests/settings.py)
    logs = tmp_path_factory.mktemp("sandbox")
    with open(logs / "stdout", "w+") as stdout, open(logs / "stderr", "w+") as stderr:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "sandbox_api", "--port", str(port)],
            cwd=Path(__file__).resolve().parent.parent,
            env=os.environ.copy(),
            stdout=stdout,
            stderr=stderr,
        )
        control = SandboxControl(f"http://127.0.0.1:{port}")
        control.log_paths = (logs / "stdout", logs / "stderr")  # for tests that check what it logs
        try:
            if not control.wait_ready(timeout=15):
                stderr.seek(0)
                pytest.fail(f"The sandbox API did not answer on port {port} within 15 s. Its stderr:\n{stderr.read()}")
            yield control
        finally:
            control.close()
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def sandbox(sandbox_server):
    """The session's sandbox, with no keys, rate windows, stats or added latency."""
    sandbox_server.reset()
    sandbox_server.set_latency(0)
    return sandbox_server
