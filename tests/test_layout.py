"""The house rules of the layout (DESIGN.md, "Layout"): floors api → sync → usage / keys →
accounts → console, nothing imports upward (lazy imports included), models never import
tasks, and the shared admin machinery knows no concrete model."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FLOOR = {"console": 0, "accounts": 1, "keys": 2, "usage": 2, "sync": 3, "api": 4, "sandbox": 5}
# The project's wiring: it names every app by design (settings, URLs, process start-up).
WIRING = {"settings", "urls", "celery", "wsgi", "asgi", "startup", "apps", "admin_site"}


def imported_packages(path):
    """Every top-level package a module imports, at any depth (lazy imports included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def project_modules():
    for app in FLOOR:
        for path in sorted((ROOT / app).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            yield app, path


def test_no_module_imports_from_a_floor_above_its_own():
    upward = []
    for app, path in project_modules():
        if app == "console" and path.stem in WIRING:
            continue
        if app == "sandbox" and "management" in path.parts:
            continue  # the demo loader wires the console to the sandbox: the top floor
        for name in imported_packages(path):
            top = name.split(".")[0]
            if top in FLOOR and FLOOR[top] > FLOOR[app]:
                upward.append(f"{path.relative_to(ROOT)} imports {name}")
    assert upward == []


@pytest.mark.parametrize("path", sorted(ROOT.glob("*/models.py")), ids=lambda p: p.parent.name)
def test_models_never_import_tasks(path):
    assert not [name for name in imported_packages(path) if name.endswith("tasks") or ".tasks" in name]
    tree = ast.parse(path.read_text())
    relative = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level and n.module == "tasks"]
    relative += [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.level and any(a.name == "tasks" for a in n.names)
    ]
    assert relative == []


def test_the_shared_admin_machinery_names_no_concrete_model():
    for path in [ROOT / "console" / "admin_base.py", ROOT / "accounts" / "audit.py"]:
        text = path.read_text()
        assert "isinstance(obj, ApiKey)" not in text
        assert not [n for n in imported_packages(path) if n.startswith("keys")]


def test_hot_tables_have_no_default_ordering():
    from keys.models import ApiKey, ProbeResult

    assert ApiKey._meta.ordering == []
    assert ProbeResult._meta.ordering == []


def test_the_admin_orders_the_hot_tables_itself():
    from django.contrib import admin

    from keys.models import ApiKey, ProbeResult

    assert admin.site._registry[ApiKey].get_ordering(None)
    assert admin.site._registry[ProbeResult].get_ordering(None)


def test_the_admin_pages_come_from_the_projects_own_templates(admin_client):
    from django.urls import reverse

    html = admin_client.get(reverse("admin:keys_apikey_changelist")).content.decode()
    assert "| OpenAI platform console</title>" in html
    assert reverse("admin:two_factor") in html  # the user tools link to two-factor set-up


def test_every_model_change_has_its_migration(db):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()
