"""Every command README.md shows works exactly as written on a fresh checkout after `make run`.

The README has one invocation, `.venv/bin/python manage.py …` (the virtualenv `make run`
creates; the commands read the `.env` it writes, so they reach its database and sandbox),
plus `make …` and `scripts/…`. One test starts `make run` on a copy of the project, runs
every such command from the README in README order with only the environment the README
has a user export (the two ports), checks each exit code against the README's (0 unless
the command's own comment says `# exits N`) and that nothing printed a traceback, then
stops `make run` with Ctrl-C (SIGINT to its process group, as a terminal sends it) and
runs the commands that need it stopped. What cannot run here is in EXEMPT, with the
reason. A second, fast test keeps the README and docs/ to that one invocation.

It does not share tests/test_make.py's `make run`: that test asserts the logs hold no
ERROR line, and the commands here (a probe of a revoked key, `make clean-demo`) would
make the two tests depend on each other's order.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
INVOCATION = ".venv/bin/python manage.py"
# A command line as the README writes one: optional NAME=value prefixes, then the one
# invocation, make, or a script of scripts/.
COMMAND = re.compile(r"^(?:[A-Z][A-Z0-9_]*=\S*\s+)*(?:\.venv/bin/python manage\.py\s|make(?:\s|$)|scripts/)")
EXIT_COMMENT = re.compile(r"\bexits (\d+)\b")

# Commands the README shows that this test does not run, by prefix, and why.
EXEMPT = {
    "make run": "the fixture: this test runs `make run` itself (tests/test_make.py checks its port arguments)",
    "make test": "runs the whole suite, this test included (11 minutes)",
    "make mutation": "mutation testing takes about 25 minutes (docs/TESTING.md)",
    "scripts/ensure_test_tools.sh": "part of `make test`: installs Chromium and pg_dump with apt-get",
    "scripts/ensure_services.sh": "part of `make test`: starts the machine's PostgreSQL and Redis",
    f"{INVOCATION} sandbox_api": "a server, until Ctrl-C (`make run` starts one; tests/test_sandbox_control.py)",
    "CONSOLE_ENV_FILE=/etc/console/env ": "production: reads a deployment's env file (tests/test_deployment.py)",
}
# Commands that need `make run` stopped: run after Ctrl-C, in README order.
AFTER_STOP = {
    "make clean-demo": "deletes the database `make run` is using",
    "scripts/run.sh --check-ports": "checks that `make run`'s ports are free",
}
# What the README says a command prints, where its comment says why it exits 1.
PRINTS = {
    f"{INVOCATION} probe_keys --org acme": ["Failing keys:\n  chatbot old (", ": Invalid key, HTTP 401"],
}
ENV_KEPT = {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TMPDIR", "TERM", "SHELL"}


@dataclass(frozen=True)
class Command:
    line: int
    text: str
    exits: int


# --- Reading the README --------------------------------------------------------------------

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
SPAN = re.compile(r"(?<!`)`([^`]+)`(?!`)")


def code_pieces(text):
    """(line number, code, is_shell) for every fenced line and inline code span, in order.
    Fenced lines are joined across backslash continuations; a span's whitespace (it may
    wrap) is collapsed and a table's escaped `\\|` is a pipe again."""
    pieces = []
    position = 0
    for fence in FENCE.finditer(text):
        pieces += spans(text[position : fence.start()], text.count("\n", 0, position) + 1)
        first = text.count("\n", 0, fence.start(2)) + 1
        shell = fence.group(1) in {"sh", "bash", "shell"}
        pending, start = "", first
        for offset, line in enumerate(fence.group(2).splitlines()):
            if not pending:
                start = first + offset
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            pieces.append((start, (pending + line).strip(), shell))
            pending = ""
        position = fence.end()
    pieces += spans(text[position:], text.count("\n", 0, position) + 1)
    return [(n, code, shell) for n, code, shell in pieces if code]


def spans(text, first_line):
    found = []
    for match in SPAN.finditer(text):
        line = first_line + text.count("\n", 0, match.start())
        table_row = text[text.rfind("\n", 0, match.start()) + 1 :].startswith("|")
        code = " ".join(match.group(1).split())
        found.append((line, code.replace("\\|", "|") if table_row else code, True))
    return found


def readme_commands(text):
    """Every command of the README, in order, with the exit code it promises."""
    commands = []
    for line, code, shell in code_pieces(text):
        if not shell or code.startswith("#"):
            continue
        match = re.match(r"^(.*?)(?:\s+#\s(.*))?$", code)  # a trailing `# comment` is not the command
        command, comment = match.group(1).strip(), match.group(2) or ""
        if COMMAND.match(command):
            promised = EXIT_COMMENT.search(comment)
            commands.append(Command(line, command, int(promised.group(1)) if promised else 0))
    return commands


def reason(command, table):
    return next((why for prefix, why in table.items() if command.text.startswith(prefix)), None)


# --- The chosen invocation -------------------------------------------------------------------


def management_command_names():
    names = {path.stem for path in ROOT.glob("*/management/commands/*.py") if not path.stem.startswith("_")}
    return (
        names
        | {"check", "migrate", "collectstatic", "clearsessions", "shell", "runserver", "createsuperuser"}
        | {
            "axes_reset",
            "axes_reset_ip",
            "axes_reset_username",
        }
    )


def test_the_readme_and_docs_use_only_the_one_invocation():
    """No `manage.py`, `python manage.py` or bare `axes_reset_ip 203.0.113.7` in code: every
    manage.py command is written `.venv/bin/python manage.py …`, the form that works on a
    checkout after `make run` (a production host has its own .venv, docs/DEPLOY.md)."""
    names = management_command_names()
    offending = []
    for path in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for line, code, shell in code_pieces(path.read_text()):
            words = re.sub(r"^(?:[A-Z][A-Z0-9_]*=\S*\s+)+", "", code).split()
            bare = shell and len(words) > 1 and words[0] in names  # `axes_reset_ip 203.0.113.7`
            if "manage.py" in code.replace(INVOCATION, "") or bare:
                offending.append(f"{path.relative_to(ROOT)}:{line}: {code}")
    assert offending == [], "write these as `.venv/bin/python manage.py …`"


def test_the_readme_commands_are_found_with_their_exit_codes():
    """The reader below finds the README's commands (a wrong pattern would make the
    end-to-end test pass on nothing), and the one that promises a failure says so."""
    commands = readme_commands(README.read_text())
    texts = [c.text for c in commands]
    assert len(commands) >= 30
    assert f"{INVOCATION} add_org --name Acme --slug acme --rotation-days 90 --budget 500" in texts
    assert any(t.startswith("scripts/sandbox_key.py | ") for t in texts)  # a table's \| is a pipe
    assert f"{INVOCATION} generate_encryption_key --version 2" in texts  # from a fenced block
    probes = [c for c in commands if c.text.startswith(f"{INVOCATION} probe_keys --org acme")]
    assert [c.exits for c in probes] == [1, 0]  # a revoked key fails the run; --fail-on narrows it
    assert set(PRINTS) <= set(texts)
    # Every command of the project has a runnable example (a new one needs its row).
    ours = {path.stem for path in ROOT.glob("*/management/commands/*.py") if not path.stem.startswith("_")}
    shown = {match for t in texts for match in re.findall(r"manage\.py (\w+)", t)}
    assert ours - shown == set(), "add an example of these to README.md, Command-line commands"
    story = [name for t in texts for name in ("add_org", "add_project", "add_key", "probe_keys") if f" {name} " in t]
    assert story.index("add_org") < story.index("add_project") < story.index("add_key") < story.index("probe_keys")


# --- The end-to-end run --------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port):
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def fresh_checkout(target):
    """A copy of the project as a clone has it (no .env, database, logs or virtualenv),
    with the virtualenv symlinked, as tests/test_make.py makes one; docs/ is kept, since a
    README example scans it."""
    shutil.copytree(
        ROOT,
        target,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "var", "db.sqlite3*", ".env", "__pycache__", "node_modules", "staticfiles", "openapi.json"
        ),
    )
    os.symlink(ROOT / ".venv", target / ".venv")
    # The shared virtualenv is installed already: requirements no newer than its stamp, so
    # `make run` does not run pip into it (other suites use it at the same time).
    stamp = ROOT / ".venv" / ".requirements-installed"
    if stamp.exists():
        for requirements in target.glob("requirements*.txt"):
            os.utime(requirements, (stamp.stat().st_mtime, stamp.stat().st_mtime))
    return target


def run_command(command, checkout, env):
    started = time.monotonic()
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command.text],
        cwd=checkout,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = result.stdout + result.stderr
    problems = []
    if result.returncode != command.exits:
        problems.append(f"exit {result.returncode}, README says {command.exits}")
    if "Traceback (most recent call last)" in output:
        problems.append("printed a traceback")
    problems += [f"did not print {text!r}" for text in PRINTS.get(command.text, []) if text not in output]
    failure = f"README.md:{command.line}: {command.text}: {', '.join(problems)}\n{output[-3000:]}" if problems else None
    return failure, time.monotonic() - started


def test_every_readme_command_runs_as_written_after_make_run(tmp_path):
    commands = readme_commands(README.read_text())
    during = [c for c in commands if reason(c, EXEMPT) is None and reason(c, AFTER_STOP) is None]
    after = [c for c in commands if reason(c, EXEMPT) is None and reason(c, AFTER_STOP) is not None]
    assert during and after
    checkout = fresh_checkout(tmp_path / "checkout")
    console_port, sandbox_port = free_port(), free_port()
    # What a user's shell has, plus what the README tells them to export: the ports.
    env = {name: value for name, value in os.environ.items() if name in ENV_KEPT}
    env.update(CONSOLE_PORT=str(console_port), SANDBOX_PORT=str(sandbox_port))

    out = tmp_path / "make-run.out"
    with out.open("w") as sink:
        run = subprocess.Popen(
            ["make", "run"],
            cwd=checkout,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal's foreground job
            # A terminal's job takes Ctrl-C; a pytest started in the background would pass on
            # an ignored SIGINT, which no trap can catch.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    failures, timings, seen = [], {}, set()
    try:
        url = f"Console: http://127.0.0.1:{console_port}/admin/"
        deadline = time.monotonic() + 300
        while url not in out.read_text():
            assert run.poll() is None, f"make run exited {run.returncode}:\n{out.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"make run did not print its URL:\n{out.read_text()[-3000:]}"
            time.sleep(0.5)
        for command in during:
            if command.text in seen:  # the README repeats a few; once is enough
                continue
            seen.add(command.text)
            failure, timings[command.text] = run_command(command, checkout, env)
            failures += [failure] if failure else []
        assert run.poll() is None, f"make run stopped during the commands:\n{out.read_text()[-3000:]}"
    finally:
        os.killpg(run.pid, signal.SIGINT)  # Ctrl-C in the terminal that runs `make run`
        try:
            run.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            raise
    # It stopped everything it started: both ports closed, every child gone.
    children = [int(pid) for pid in re.findall(r": pid (\d+), log ", out.read_text())]
    assert len(children) == 4
    assert not port_open(console_port) and not port_open(sandbox_port)
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text(), pid

    for command in after:
        failure, _ = run_command(command, checkout, env)
        failures += [failure] if failure else []
    assert not (checkout / "db.sqlite3").exists() and (checkout / ".env").exists()  # make clean-demo did its job

    assert failures == [], "\n\n".join(failures)
    slowest = sorted(timings.items(), key=lambda item: -item[1])[:5]
    print(f"{len(timings)} commands while make run ran, {sum(timings.values()):.0f} s; slowest: {slowest}")


def test_the_sandbox_key_script_never_prints_a_key_to_a_terminal():
    """scripts/sandbox_key.py writes its key only into a pipe (the README pipes it into
    add_key); on a terminal it stops before generating or registering anything."""
    import pty

    controller, terminal = pty.openpty()
    try:
        result = subprocess.run(
            [str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "scripts" / "sandbox_key.py")],
            stdout=terminal,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
        )
        os.close(terminal)
        terminal = None
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        if terminal is not None:
            os.close(terminal)
        os.close(controller)
    assert result.returncode == 2
    assert "Pipe it into a command" in result.stderr
    assert b"sk-" not in shown and "sk-" not in result.stderr
