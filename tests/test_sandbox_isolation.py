"""The sandbox's server code imports nothing from the console.

A stand-in for OpenAI that shared the console's key-format rules (or settings, or models)
could hide the console's bugs: both sides would agree on the same mistake. The server
modules are read as source and their imports parsed, so the test sees every import,
including ones inside functions, without importing anything.
"""

import ast
from pathlib import Path

import pytest

from keys import formats
from sandbox.errors import key_hint

SANDBOX = Path(__file__).resolve().parent.parent / "sandbox"
SERVER_MODULES = ["app.py", "state.py", "errors.py", "ratelimit.py", "usage.py", "admin_api.py"]
CONSOLE_PACKAGES = {"keys", "accounts", "console", "usage", "api", "django"}


def imported_modules(source):
    """Every module name an import statement in `source` names (relative ones as `.x`)."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append("." * node.level + (node.module or ""))
    return names


def console_imports(source):
    return [name for name in imported_modules(source) if name.split(".")[0] in CONSOLE_PACKAGES]


@pytest.mark.parametrize("module", SERVER_MODULES)
def test_the_sandbox_server_module_imports_nothing_from_the_console(module):
    assert console_imports((SANDBOX / module).read_text()) == []


def test_the_import_check_catches_every_form_of_import():
    source = """
import keys.formats
from keys.formats import hint
from accounts import models
import console.settings as s
def later():
    from usage.models import UsageBucket
    from django.conf import settings
"""
    assert console_imports(source) == [
        "keys.formats",
        "keys.formats",
        "accounts",
        "console.settings",
        "usage.models",
        "django.conf",
    ]
    assert console_imports("import keysmith\nfrom sandbox.errors import key_hint\n") == []
    assert "sandbox.state" in imported_modules((SANDBOX / "app.py").read_text())  # it reads the real files


@pytest.mark.parametrize(
    "fmt", [formats.PROJECT, formats.SERVICE_ACCOUNT, formats.ADMIN, formats.LEGACY, formats.AZURE]
)
def test_the_sandboxs_own_hint_names_keys_as_the_console_does(fmt):
    # Tests look keys up in the sandbox's stats by the console's hint: the two must agree,
    # without the sandbox importing the console's code.
    secret = formats.generate(fmt)
    assert key_hint(secret) == formats.hint(secret)
    assert len(key_hint(secret)) <= len("sk-svcacct-…") + 4  # a prefix and four characters, no more
