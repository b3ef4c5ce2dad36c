"""`make run` and `make test` on a fresh machine: the port variables, the test tools
script, a private SQLite database, and one whole `make run` (start, first probe outcomes,
Ctrl-C) on its embedded defaults. Shell scripts run as subprocesses."""

import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "scripts" / "run.sh"
TOOLS = ROOT / "scripts" / "ensure_test_tools.sh"


@pytest.fixture
def taken_port():
    """A port on 127.0.0.1 that a listener of this test holds."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_ports(**ports):
    env = {**os.environ, **{name: str(port) for name, port in ports.items()}}
    return subprocess.run(["bash", str(RUN), "--check-ports"], env=env, capture_output=True, text=True, timeout=30)


# --- Ports ------------------------------------------------------------------------------


@pytest.mark.parametrize("variable", ["CONSOLE_PORT", "SANDBOX_PORT"])
def test_a_taken_port_is_reported_with_the_variable_to_set(taken_port, variable):
    other = "SANDBOX_PORT" if variable == "CONSOLE_PORT" else "CONSOLE_PORT"
    result = check_ports(**{variable: taken_port, other: free_port()})
    assert result.returncode == 1
    assert f"Port {taken_port} is in use: set {variable} (make run {variable}={taken_port + 1})" in result.stderr


def test_free_ports_pass_the_check():
    result = check_ports(CONSOLE_PORT=free_port(), SANDBOX_PORT=free_port())
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.parametrize(
    "ports,message",
    [
        ({"CONSOLE_PORT": "eighty", "SANDBOX_PORT": 8111}, "CONSOLE_PORT=eighty is not a port number"),
        ({"CONSOLE_PORT": 8011, "SANDBOX_PORT": 70000}, "SANDBOX_PORT=70000 is not a port number"),
        ({"CONSOLE_PORT": 8011, "SANDBOX_PORT": 8011}, "CONSOLE_PORT and SANDBOX_PORT are both 8011"),
    ],
)
def test_a_bad_port_setting_is_refused_by_name(ports, message):
    result = check_ports(**ports)
    assert result.returncode == 1
    assert message in result.stderr


def make_dry_run(*args, **env):
    result = subprocess.run(
        ["make", "-n", *args], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_make_run_passes_the_ports_from_its_command_line_or_the_environment():
    assert 'CONSOLE_PORT="8000" SANDBOX_PORT="8100" scripts/run.sh' in make_dry_run("run")
    assert 'CONSOLE_PORT="8011" SANDBOX_PORT="8111" scripts/run.sh' in make_dry_run(
        "run", "CONSOLE_PORT=8011", "SANDBOX_PORT=8111"
    )
    assert 'CONSOLE_PORT="8012" SANDBOX_PORT="8100" scripts/run.sh' in make_dry_run("run", CONSOLE_PORT="8012")


def test_run_sh_gives_the_sandbox_port_to_everything_it_starts():
    # Structural: the started processes get OPENAI_BASE_URL built from SANDBOX_PORT (a stale
    # value in .env must not win), the sandbox listens on it and the demo registers there.
    script = RUN.read_text()
    assert 'export OPENAI_BASE_URL="$SANDBOX_URL/v1"' in script
    assert 'SANDBOX_URL="http://127.0.0.1:$SANDBOX_PORT"' in script
    assert 'sandbox_api --port "$SANDBOX_PORT"' in script
    assert 'load_demo --sandbox-url "$SANDBOX_URL"' in script
    assert 'runserver "$WEB_ADDR"' in script and 'WEB_ADDR="127.0.0.1:$CONSOLE_PORT"' in script


# --- The test tools ---------------------------------------------------------------------


def test_make_test_runs_the_tools_script_before_pytest():
    commands = make_dry_run("test").splitlines()
    tools = next(i for i, line in enumerate(commands) if "scripts/ensure_test_tools.sh" in line)
    pytest_run = next(i for i, line in enumerate(commands) if "bin/pytest" in line)
    assert tools < pytest_run


def test_ci_leaves_installing_to_make_test():
    ci = (ROOT / ".ci" / "run").read_text()
    code = "\n".join(line for line in ci.splitlines() if not line.lstrip().startswith("#"))
    assert "make test" in code
    assert "apt-get" not in code and "ensure_services" not in code  # make test does both


@pytest.fixture
def fake_system(tmp_path):
    """A PATH holding only fakes of id, sudo and apt-get (which logs its arguments and
    "installs" pg_dump and Chromium into the fake system), plus env."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "apt.log"

    def fake(name, body):
        path = bin_dir / name
        path.write_text("#!/bin/sh\n" + body + "\n")
        path.chmod(0o755)

    chmod, cp = shutil.which("chmod"), shutil.which("cp")  # PATH holds only the fakes
    fake(
        "apt-get",
        f'echo "$@" >> {log}\nif [ "$1" = install ]; then\n'
        f'  printf "#!/bin/sh\\n" > {bin_dir}/pg_dump; {chmod} 755 {bin_dir}/pg_dump\n'
        f"  {cp} {bin_dir}/pg_dump {tmp_path}/chromium\nfi",
    )
    fake("sudo", "exit 1")  # no passwordless sudo
    os.symlink(shutil.which("env"), bin_dir / "env")

    def run(uid, chromium=True, pg_dump=False):
        fake("id", f"echo {uid}")
        if chromium:
            fake("chromium-present", "true")
        if pg_dump:
            fake("pg_dump", "true")
        env = {
            "PATH": str(bin_dir),
            "CHROMIUM_BIN": str(bin_dir / "chromium-present" if chromium else tmp_path / "chromium"),
        }
        result = subprocess.run([shutil.which("bash"), str(TOOLS)], env=env, capture_output=True, text=True, timeout=30)
        result.apt_calls = log.read_text().splitlines() if log.exists() else []
        return result

    return run


def test_without_root_or_sudo_it_stops_with_the_one_command_to_run(fake_system):
    result = fake_system(uid=1000, chromium=False)
    assert result.returncode == 1
    assert "Run: sudo apt-get install -y chromium postgresql-client" in result.stderr
    assert result.apt_calls == []


def test_as_root_it_installs_what_is_missing_with_apt(fake_system):
    result = fake_system(uid=0, chromium=False)
    assert result.returncode == 0, result.stderr
    assert result.apt_calls == ["update -qq", "install -y -qq chromium postgresql-client"]


def test_it_installs_nothing_when_everything_is_there(fake_system):
    result = fake_system(uid=1000, chromium=True, pg_dump=True)
    assert (result.returncode, result.apt_calls) == (0, [])


# --- A private SQLite database ----------------------------------------------------------


@pytest.fixture
def fresh_checkout(tmp_path):
    """A copy of the project without .env, db.sqlite3 or var/, sharing the virtualenv."""
    copy = tmp_path / "checkout"
    shutil.copytree(
        ROOT,
        copy,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "var", "db.sqlite3*", ".env", "docs", "__pycache__", "node_modules"
        ),
    )
    os.symlink(ROOT / ".venv", copy / ".venv")
    return copy


def prepare(checkout):
    env = {
        k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "DJANGO_SETTINGS_MODULE", "CONSOLE_ENV_FILE"}
    }
    result = subprocess.run(
        ["bash", "scripts/run.sh", "--prepare-only"], cwd=checkout, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_make_run_creates_the_sqlite_database_private_and_makes_an_existing_one_private(fresh_checkout):
    db = fresh_checkout / "db.sqlite3"
    prepare(fresh_checkout)
    assert (mode(db), mode(fresh_checkout / ".env")) == (0o600, 0o600)
    db.chmod(0o644)  # as an earlier version of `make run` left it
    prepare(fresh_checkout)
    assert mode(db) == 0o600


# --- scripts/bootstrap_env.py ------------------------------------------------------------


@pytest.fixture
def bootstrap_env():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bootstrap_env", ROOT / "scripts" / "bootstrap_env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_first_env_file_points_at_the_sandbox_port_make_run_was_given(bootstrap_env, tmp_path, monkeypatch):
    monkeypatch.setenv("SANDBOX_PORT", "8111")
    bootstrap_env.bootstrap(tmp_path / ".env")
    assert bootstrap_env.read_env(tmp_path / ".env")["OPENAI_BASE_URL"] == "http://127.0.0.1:8111/v1"


def test_the_first_env_file_allows_that_sandbox_for_commands_run_by_hand(bootstrap_env, tmp_path, monkeypatch):
    # `.venv/bin/python manage.py probe_keys` reads .env only: without the sandbox on the
    # allow-list every demo key would probe destination_refused (README, Command-line commands).
    monkeypatch.setenv("SANDBOX_PORT", "8111")
    bootstrap_env.bootstrap(tmp_path / ".env")
    allowed = bootstrap_env.read_env(tmp_path / ".env")["CONSOLE_ALLOWED_API_HOSTS"].split(",")
    assert allowed == ["api.openai.com", "*.openai.azure.com", "*.cognitiveservices.azure.com", "127.0.0.1:8111"]


def test_without_a_sandbox_port_the_env_file_uses_8100(bootstrap_env, monkeypatch):
    monkeypatch.delenv("SANDBOX_PORT", raising=False)
    assert bootstrap_env.defaults()["OPENAI_BASE_URL"] == "http://127.0.0.1:8100/v1"


# --- The whole console, once -------------------------------------------------------------


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_make_run_shows_probe_outcomes_soon_and_stops_without_an_error_line(fresh_checkout):
    """The README's promise: `make run` shows probe outcomes within a minute, and Ctrl-C
    stops everything quietly (Celery's pool is stopped by its worker, not killed under it)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE", "CONSOLE_ENV_FILE"}
    }
    env.update(CONSOLE_PORT=str(free_port()), SANDBOX_PORT=str(free_port()))
    out = fresh_checkout / "run.out"
    with out.open("w") as sink:
        run = subprocess.Popen(
            ["bash", "scripts/run.sh"],
            cwd=fresh_checkout,
            env=env,
            stdout=sink,
            stderr=sink,
            start_new_session=True,  # its own process group, as a terminal's foreground job
            # A terminal's job takes Ctrl-C; a pytest started in the background would pass on
            # an ignored SIGINT, which no trap can catch.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    logs = fresh_checkout / "var" / "log"
    try:
        wait_for(lambda: "Press Ctrl-C" in out.read_text(), 300, "the console to start")
        started = time.monotonic()
        worker_log = logs / "worker.log"
        wait_for(lambda: "probe batch:" in worker_log.read_text(), 60, "the first probe outcomes")
        assert time.monotonic() - started < 60
    finally:
        os.killpg(run.pid, signal.SIGINT)  # Ctrl-C in the terminal that runs it
        try:
            run.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            raise
    text = {path.name: path.read_text() for path in logs.glob("*.log")}
    assert set(text) == {"sandbox.log", "web.log", "worker.log", "beat.log"}
    # Outcome names, not enum reprs, in the worker's summaries.
    assert "ok: " in text["worker.log"] and "Outcome." not in text["worker.log"]
    for name, content in text.items():
        bad = [line for line in content.splitlines() if " ERROR" in line or "CRITICAL" in line or "Traceback" in line]
        assert bad == [], f"{name}: {bad}"


# --- The embedded default's database ------------------------------------------------------
SQLITE_AGREEMENT = """
from datetime import timedelta
from django.utils import timezone
from accounts.models import Organization, Project
from keys import formats, report, states
from keys.models import ApiKey
from keys.states import FlagName, RotationState

now = timezone.now()
org = Organization.objects.create(name="Lite", slug="lite")
project = Project.objects.create(organization=org, name="P", rotation_policy_days=30)
ages = [0, 10, 20, 29, 31, 100, 400]
for n, days in enumerate(ages):
    key = ApiKey(organization=org, project=project, name=f"k{n}", issued_at=now - timedelta(days=days))
    key.set_secret(formats.generate())
    key.save()
keys = list(ApiKey.objects.select_related("project", "organization"))
for state in RotationState.values:
    by_sql = set(ApiKey.objects.in_rotation_state(state, now).values_list("pk", flat=True))
    by_rule = {k.pk for k in keys if states.rotation_state(k, now) == state}
    assert by_sql == by_rule, (state, len(by_sql), len(by_rule))
for flag in FlagName.values:
    ApiKey.objects.with_stale_flag(flag, now).count()
assert len(report.build(now=now).rows) == len(ages)
print("agree", len(keys))
"""


def test_on_the_embedded_sqlite_the_state_filters_agree_with_the_rules(fresh_checkout):
    """`make run` runs on SQLite: the SQL twins of the rotation rules (the key list's
    filters, the report, the dashboard's counts) must work there too, not only on
    PostgreSQL, where the rest of the suite runs them."""
    prepare(fresh_checkout)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE", "CONSOLE_ENV_FILE"}
    }
    result = subprocess.run(
        [".venv/bin/python", "manage.py", "shell", "-c", SQLITE_AGREEMENT],
        cwd=fresh_checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "agree 7" in result.stdout
