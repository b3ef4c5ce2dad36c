"""The leak scan (keys/leakscan.py, `manage.py scan_leaks`): a generated tree with keys
planted at run time — registered and not, in the working tree and only in git history, in
a binary file, under .git/objects, Azure keys near and far from an endpoint. Checks
file:line, hints, the registered key's organization, project and owner, exit codes, the
JSON shape, the leaked flag with its audit trail and alert, idempotence, and that no full
secret reaches any output, audit event or log."""

import io
import json
import logging
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils.timezone import now

from accounts.models import AuditEvent, Notification
from keys import crypto, formats, leakscan
from keys.models import ApiKey, KeyAction, KeyEvent, Kind, Provider, SupersededSecret

ROOT = Path(__file__).resolve().parent.parent


def scan(*paths, **kwargs):
    findings, stats = leakscan.scan([str(p) for p in paths], **kwargs)
    return findings, stats


def where(findings):
    """(file name, line, kind, hint) of each finding."""
    return [(Path(f.path).name, f.line, f.kind, f.hint) for f in findings]


def git(repo, *args):
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    result = subprocess.run(["git", "-C", str(repo), *args], env=env, capture_output=True, text=True, check=True)
    return result.stdout.strip()


def relative(path, root):
    return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()


def assert_secret_absent(secret, *texts):
    for text in texts:
        assert secret not in text
        assert secret[-12:] not in text


# --- finding the shapes -------------------------------------------------------------------
@pytest.mark.parametrize(
    "fmt,long",
    [
        (formats.PROJECT, True),
        (formats.PROJECT, False),
        (formats.SERVICE_ACCOUNT, True),
        (formats.SERVICE_ACCOUNT, False),
        (formats.ADMIN, False),
        (formats.LEGACY, True),
    ],
)
def test_each_openai_shape_is_found_at_its_line_with_its_hint(tmp_path, settings, fmt, long):
    secret = formats.generate(fmt, long=long)
    (tmp_path / "config.py").write_text(f'# settings\n\nimport os\nOPENAI_API_KEY = "{secret}"  # TODO env\n')
    findings, stats = scan(tmp_path)
    assert where(findings) == [("config.py", 4, fmt, formats.hint(secret))]
    assert findings[0].fingerprint == leakscan.crypto.fingerprint(secret)
    assert (stats.files, stats.skipped_binary) == (1, 0)


def test_keys_glued_to_other_text_quoted_or_in_urls_are_found_each_on_its_line(tmp_path):
    keys = [formats.generate(formats.PROJECT), formats.generate(formats.ADMIN), formats.generate(formats.LEGACY)]
    lines = [
        f"Authorization: Bearer {keys[0]}",
        f"x{keys[1]}y and more text",
        "unrelated line about a task-runner and disk-usage",
        f"https://example.com/?key={keys[2]}&a=1",
        f"{keys[0]}",  # the same key twice is two findings
    ]
    (tmp_path / "notes.md").write_text("\n".join(lines))
    findings, _ = scan(tmp_path)
    assert [(f.line, f.hint) for f in findings] == [
        (1, formats.hint(keys[0])),
        (2, formats.hint(keys[1])),
        (4, formats.hint(keys[2])),
        (5, formats.hint(keys[0])),
    ]
    assert findings[0].fingerprint == findings[3].fingerprint


def test_a_key_cut_short_is_a_partial_finding_that_can_match_nothing(tmp_path):
    secret = formats.generate(formats.PROJECT)
    (tmp_path / "log.txt").write_text(f"first\nkey was ...{secret[40:]}\n")
    findings, _ = scan(tmp_path)
    assert where(findings) == [("log.txt", 2, leakscan.PARTIAL, "…" + secret[-4:])]
    assert findings[0].fingerprint == ""


def test_look_alikes_are_not_findings(tmp_path):
    secret = formats.generate(formats.PROJECT)
    (tmp_path / "look-alikes.txt").write_text(
        "\n".join(
            [
                "sk-learn-pipeline-preprocessing-standard-scaler-v2",
                formats.hint(secret),  # a hint, as the console shows it
                "sk-abc...def and sk-proj-…Ab3d",
                "T3BlbkFJ alone, and short-T3BlbkFJ-short",
                "md5 d41d8cd98f00b204e9800998ecf8427e with no Azure endpoint anywhere",
                "a sha256 " + "ab" * 32,
            ]
        )
    )
    assert scan(tmp_path)[0] == []


def test_the_scan_patterns_are_the_formats_own_shapes():
    # Derived from keys/formats.py (anchors removed), not restated: a shape added or changed
    # there is what the scan looks for.
    for fmt, pattern in leakscan._OPENAI_SHAPES:
        assert pattern.pattern.decode() == formats.PATTERNS[fmt].pattern[1:-1]
        for long in (True, False):
            secret = formats.generate(fmt, long=long)
            assert pattern.fullmatch(secret.encode())
    assert formats.PATTERNS[formats.AZURE].pattern[1:-1].encode() in leakscan._AZURE_SHAPE.pattern


# --- Azure: only near an endpoint ---------------------------------------------------------------
def test_an_azure_key_counts_only_within_a_few_lines_of_an_azure_endpoint(tmp_path):
    near = leakscan.AZURE_NEAR_LINES
    keys = [formats.generate(formats.AZURE) for _ in range(4)]
    lines = ["# deploy"]
    lines += [f"AZURE_OPENAI_KEY={keys[0]}"]  # line 2: `near` lines above the endpoint
    lines += ["pad"] * (near - 1)
    lines += ["AZURE_OPENAI_ENDPOINT=https://my-resource.OpenAI.Azure.com/"]  # line near + 2
    lines += ["pad"] * (near - 1)
    lines += [f'"api-key": "{keys[1]}"']  # `near` lines below it
    lines += [f"{keys[2]}"]  # near + 1 lines below it: too far
    lines += ["pad"] * 20
    lines += [f"cache key {keys[3]}"]  # far from any endpoint
    (tmp_path / "deploy.env").write_text("\n".join(lines) + "\n")
    findings, _ = scan(tmp_path)
    endpoint_line = near + 2
    assert where(findings) == [
        ("deploy.env", 2, formats.AZURE, formats.hint(keys[0])),
        ("deploy.env", endpoint_line + near, formats.AZURE, formats.hint(keys[1])),
    ]
    assert formats.hint(keys[0]) == "…" + keys[0][-4:]


def test_a_cognitive_services_endpoint_counts_and_a_hex_run_inside_a_longer_one_does_not(tmp_path):
    key = formats.generate(formats.AZURE)
    (tmp_path / "a.json").write_text(
        '{"endpoint": "https://x.cognitiveservices.azure.com",\n'
        f' "key": "{key}",\n'
        f' "digest": "{key}ff",\n'
        f' "id": "x_{key}"}}\n'
    )
    findings, _ = scan(tmp_path)
    assert where(findings) == [("a.json", 2, formats.AZURE, formats.hint(key))]


# --- what is skipped --------------------------------------------------------------------------
def test_binary_files_git_objects_and_symbolic_links_are_skipped(tmp_path):
    secret = formats.generate()
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0" + secret.encode() + b"\0")
    objects = tmp_path / "repo" / ".git" / "objects" / "ab"
    objects.mkdir(parents=True)
    (objects / "cdef0123").write_text(secret)  # as if a loose object were stored uncompressed
    (tmp_path / "repo" / ".git" / "config").write_text(f"[remote]\n\turl = https://x:{secret}@example.com\n")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "elsewhere.txt").write_text(secret)
    (tmp_path / "link.txt").symlink_to(outside / "elsewhere.txt")
    (tmp_path / "linkdir").symlink_to(outside, target_is_directory=True)
    findings, stats = scan(tmp_path)
    # Only .git/config: it is text, and a key in a remote URL is a leak.
    assert [(Path(f.path).relative_to(tmp_path).as_posix(), f.line) for f in findings] == [("repo/.git/config", 2)]
    assert stats.skipped_binary == 1


def test_small_blocks_find_the_same_as_one_block(tmp_path, monkeypatch):
    # A big file is read in blocks cut at line ends, each searched with its neighbours' lines
    # for the Azure rule: block size changes nothing, lines included.
    keys = [formats.generate(f) for f in (formats.PROJECT, formats.SERVICE_ACCOUNT, formats.AZURE, formats.LEGACY)]
    lines = []
    for n in range(300):
        lines.append(f"line {n} " + "lorem ipsum " * (n % 7))
        if n == 50:
            lines.append(keys[0])
        if n == 120:
            lines.append("endpoint: https://res.openai.azure.com")
        if n == 122:
            lines.append(f"key: {keys[2]}")
        if n == 250:
            lines.append(f"a={keys[1]} b={keys[3]}")
    (tmp_path / "big.log").write_text("\n".join(lines))
    whole, _ = scan(tmp_path)
    assert [f.kind for f in whole] == [formats.PROJECT, formats.AZURE, formats.SERVICE_ACCOUNT, formats.LEGACY]
    for block in (200, 333, 1024, 4096):
        monkeypatch.setattr(leakscan, "BLOCK", block)
        assert where(scan(tmp_path)[0]) == where(whole), block


def test_a_line_longer_than_the_limit_is_cut_between_keys(tmp_path, monkeypatch):
    # Minified files have megabyte-long lines: they are cut where no key can be.
    keys = [formats.generate() for _ in range(6)]
    (tmp_path / "bundle.min.js").write_text("".join(f'var k{n}="{key}";' + "x=1;" * 40 for n, key in enumerate(keys)))
    monkeypatch.setattr(leakscan, "BLOCK", 100)
    monkeypatch.setattr(leakscan, "MAX_LINE", 300)
    assert [(f.line, f.hint) for f in scan(tmp_path)[0]] == [(1, formats.hint(key)) for key in keys]


def test_an_unreadable_file_is_reported_by_path_and_the_rest_is_scanned(tmp_path, monkeypatch):
    secret = formats.generate()
    (tmp_path / "locked.txt").write_text(secret)
    (tmp_path / "open.txt").write_text(secret)
    real_open = open

    def deny_locked(path, *args, **kwargs):
        if str(path).endswith("locked.txt"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(leakscan, "open", deny_locked, raising=False)
    findings, stats = scan(tmp_path)
    assert where(findings) == [("open.txt", 1, formats.PROJECT, formats.hint(secret))]
    assert [(Path(p).name, reason) for p, reason in stats.errors] == [("locked.txt", "Permission denied")]


def test_a_fifo_is_not_opened(tmp_path):
    os.mkfifo(tmp_path / "pipe")  # opening it would wait for a writer forever
    secret = formats.generate()
    (tmp_path / "a.txt").write_text(secret)
    assert where(scan(tmp_path)[0]) == [("a.txt", 1, formats.PROJECT, formats.hint(secret))]
    assert where(scan(tmp_path / "pipe")[0]) == []


# --- git history --------------------------------------------------------------------------------
@pytest.fixture
def repo(tmp_path):
    """A git repository whose first commit holds a key in app/settings.py, deleted by the
    second commit; a key still in the working tree (committed); an uncommitted one."""
    repo = tmp_path / "repo"
    (repo / "app").mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    gone, kept, uncommitted = formats.generate(formats.PROJECT), formats.generate(formats.ADMIN), formats.generate()
    (repo / "app" / "settings.py").write_text(f"DEBUG = True\nOPENAI_API_KEY = '{gone}'\n")
    (repo / "README.md").write_text(f"# demo\n\nkey: {kept}\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first")
    first = git(repo, "rev-parse", "--short", "HEAD")
    (repo / "app" / "settings.py").write_text("DEBUG = True\nOPENAI_API_KEY = os.environ['OPENAI_API_KEY']\n")
    git(repo, "commit", "-q", "-am", "read the key from the environment")
    (repo / "scratch.txt").write_text(f"\n\n{uncommitted}\n")
    return repo, {"gone": gone, "kept": kept, "uncommitted": uncommitted, "first": first}


def test_without_git_history_only_the_working_tree_is_scanned(repo):
    path, keys = repo
    findings, stats = scan(path)
    assert sorted(where(findings)) == sorted(
        [
            ("README.md", 3, formats.ADMIN, formats.hint(keys["kept"])),
            ("scratch.txt", 3, formats.PROJECT, formats.hint(keys["uncommitted"])),
        ]
    )
    assert stats.repositories == 0


@pytest.mark.parametrize("start", ["root", "subdirectory", "parent"])
def test_git_history_finds_a_key_deleted_from_the_tree_once_with_its_commit(repo, start):
    path, keys = repo
    given = {"root": path, "subdirectory": path / "app", "parent": path.parent}[start]
    findings, stats = scan(given, git_history=True)
    history = [f for f in findings if f.source == leakscan.GIT_HISTORY]
    gone = [f for f in history if f.hint == formats.hint(keys["gone"])]
    assert [(Path(f.path).resolve().relative_to(path.resolve()).as_posix(), f.line) for f in gone] == [
        ("app/settings.py", 2)
    ]
    assert gone[0].commit == keys["first"]
    assert len(gone[0].blob) == 40
    assert gone[0].fingerprint == leakscan.crypto.fingerprint(keys["gone"])
    # The committed key still in the working tree is reported once: as a file when the
    # walk met it, else from history (a path inside a repository scans its whole history).
    kept = [(f.source, f.line) for f in findings if f.hint == formats.hint(keys["kept"])]
    assert kept == [(leakscan.GIT_HISTORY if start == "subdirectory" else leakscan.FILE, 3)]
    assert len(history) == (2 if start == "subdirectory" else 1)
    assert stats.repositories == 1
    assert stats.blobs == 3  # settings.py twice and README.md: blobs only, each once


def test_git_history_skips_binary_blobs(repo):
    path, keys = repo
    secret = formats.generate()
    (path / "model.bin").write_bytes(b"\0\1\2" + secret.encode())
    git(path, "add", "model.bin")
    git(path, "commit", "-q", "-m", "binary")
    (path / "model.bin").unlink()
    findings, stats = scan(path, git_history=True)
    assert formats.hint(secret) not in {f.hint for f in findings}
    assert (stats.blobs, stats.skipped_binary) == (3, 2)  # the binary blob and .git/index


# --- the command: who the keys are, flags, audit, alert ----------------------------------------
def run(*args):
    """call_command("scan_leaks", …) → (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("scan_leaks", *[str(a) for a in args], stdout=out, stderr=err)
        code = 0
    except CommandError as e:
        code = e.returncode
        err.write(str(e))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def planted(tmp_path, make_key, org, project):
    """A tree with registered and unregistered keys in a git repository's working tree, in
    its history only, in a binary file, under .git/objects, and a superseded secret."""
    repo = tmp_path / "service"
    (repo / "config").mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    current, current_secret = make_key(name="chatbot prod", owner="ml-team")
    admin, admin_secret = make_key(formats.ADMIN, project=None, kind=Kind.ADMIN, organization=org, name="org admin")
    azure, azure_secret = make_key(formats.AZURE, provider=Provider.AZURE, name="azure prod", owner="platform")
    hidden, hidden_secret = make_key(name="only in a binary")
    rotated, rotated_secret = make_key(name="rotated", owner="search-team")
    old_secret = formats.generate()
    SupersededSecret.objects.create(
        key=rotated,
        fingerprint=crypto.fingerprint(old_secret),
        hint=formats.hint(old_secret),
        grace_until=now() + timedelta(days=1),
    )
    stranger = formats.generate(formats.SERVICE_ACCOUNT)
    (repo / "config" / "app.env").write_text(f"# app\nDEBUG=false\nOPENAI_API_KEY={current_secret}\n")
    (repo / "deploy.yaml").write_text(
        f"azure:\n  endpoint: https://acme.openai.azure.com/\n  key: {azure_secret}\nother: {stranger}\n"
    )
    (repo / "old.txt").write_text(f"previous key\n{old_secret}\n")
    (repo / "admin.py").write_text(f"ADMIN_KEY = '{admin_secret}'\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first")
    commit = git(repo, "rev-parse", "--short", "HEAD")
    (repo / "admin.py").write_text("ADMIN_KEY = os.environ['ADMIN_KEY']\n")
    git(repo, "commit", "-q", "-am", "no admin key in the code")
    (repo / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0" + hidden_secret.encode())
    objects = repo / ".git" / "objects" / "zz"
    objects.mkdir()
    (objects / "plain").write_text(hidden_secret)
    return {
        "root": repo,
        "commit": commit,
        "keys": {"current": current, "admin": admin, "azure": azure, "hidden": hidden, "rotated": rotated},
        "secrets": [current_secret, admin_secret, azure_secret, hidden_secret, rotated_secret, old_secret, stranger],
    }


def test_the_json_report_says_where_which_hint_and_whose_and_exits_1(planted):
    root, keys = planted["root"], planted["keys"]
    code, out, err = run(root, "--git-history", "--format", "json")
    assert code == 1
    assert "4 registered keys leaked" in err
    report = json.loads(out)
    assert set(report) == {"findings", "summary"}
    rows = {
        (Path(r["path"]).resolve().relative_to(root.resolve()).as_posix(), r["line"]): r for r in report["findings"]
    }
    assert set(rows) == {("config/app.env", 3), ("deploy.yaml", 3), ("deploy.yaml", 4), ("old.txt", 2), ("admin.py", 1)}
    for row in rows.values():
        assert set(row) == {"path", "line", "source", "commit", "blob", "kind", "hint", "registered", "key"}
    current = rows[("config/app.env", 3)]
    assert (current["source"], current["commit"], current["blob"]) == ("file", "", "")
    assert current["kind"] == formats.PROJECT
    assert current["hint"] == keys["current"].hint
    assert current["key"] == {
        "id": str(keys["current"].pk),
        "name": "chatbot prod",
        "organization": "acme",
        "project": "Chatbot",
        "owner": "ml-team",
        "secret": "current",
        "revoked": False,
        "leaked_at": current["key"]["leaked_at"],
        "newly_flagged": True,
    }
    assert current["key"]["leaked_at"]
    history = rows[("admin.py", 1)]
    assert (history["source"], history["commit"], history["kind"]) == ("git-history", planted["commit"], "admin")
    assert (history["key"]["name"], history["key"]["project"], history["hint"]) == (
        "org admin",
        None,
        keys["admin"].hint,
    )
    azure = rows[("deploy.yaml", 3)]
    assert (azure["kind"], azure["hint"], azure["key"]["owner"]) == ("azure", keys["azure"].hint, "platform")
    stranger = rows[("deploy.yaml", 4)]
    assert (stranger["registered"], stranger["key"], stranger["kind"]) == (False, None, formats.SERVICE_ACCOUNT)
    old = rows[("old.txt", 2)]
    assert (old["key"]["name"], old["key"]["secret"], old["key"]["owner"]) == ("rotated", "superseded", "search-team")
    assert old["hint"] != keys["rotated"].hint  # the hint of the secret found, not the current one
    summary = report["summary"]
    assert (summary["findings"], summary["registered_keys"], summary["newly_flagged"]) == (5, 4, 4)
    assert summary["skipped_binary"] >= 2  # logo.png, .git/index (and the blob of neither)
    assert summary["git_repositories"] == 1 and summary["not_scanned"] == []


def test_the_table_names_each_location_hint_and_owner(planted):
    root, keys = planted["root"], planted["keys"]
    code, out, err = run(root)
    assert code == 1
    lines = out.splitlines()
    assert lines[0].split() == ["LOCATION", "KIND", "HINT", "ORGANIZATION", "PROJECT", "KEY", "OWNER"]
    row = next(line for line in lines if "app.env:3" in line)
    for text in (keys["current"].hint, "acme", "Chatbot", "chatbot prod", "ml-team", "flagged leaked"):
        assert text in row
    assert "(not registered)" in next(line for line in lines if "deploy.yaml:4" in line)
    assert "superseded secret" in next(line for line in lines if "old.txt:2" in line)
    assert not any("admin.py" in line for line in lines)  # only in history, not asked for
    assert "4 secrets found, 3 registered keys (3 newly flagged leaked)" in lines[-1]
    code, out, _ = run(root, "--git-history")
    assert "blobs from the history of 1 git repository;" in out.splitlines()[-1]
    row = next(line for line in out.splitlines() if "admin.py:1" in line)
    assert f"(history, commit {planted['commit']})" in row and keys["admin"].hint in row


def test_a_found_key_is_flagged_audited_and_alerted_once_and_a_rerun_adds_nothing(planted):
    root, keys = planted["root"], planted["keys"]
    assert run(root, "--git-history")[0] == 1
    found = ["current", "admin", "azure", "rotated"]
    for name, key in keys.items():
        key.refresh_from_db()
        assert (key.leaked_at is not None) == (name in found), name
    flagged_at = {name: keys[name].leaked_at for name in found}
    events = AuditEvent.objects.filter(action="key.leaked")
    assert sorted(e.target_id for e in events) == sorted(str(keys[n].pk) for n in found)
    event = events.get(target_id=str(keys["current"].pk))
    assert event.actor_label == "cli:scan_leaks"
    assert event.details["location"].endswith("config/app.env:3")
    assert event.details["hint"] == keys["current"].hint
    assert (event.details["organization"], event.details["project"], event.details["owner"]) == (
        "acme",
        "Chatbot",
        "ml-team",
    )
    history_event = events.get(target_id=str(keys["admin"].pk))
    assert history_event.details["location"].endswith(f"admin.py:1 (git history, commit {planted['commit']})")
    key_events = KeyEvent.objects.filter(action=KeyAction.LEAKED)
    assert sorted(str(e.key_id) for e in key_events) == sorted(str(keys[n].pk) for n in found)
    assert all(e.actor_label == "cli:scan_leaks" for e in key_events)
    notes = Notification.objects.all()
    assert sorted(n.dedupe_key for n in notes) == sorted(f"leak:{keys[n].pk}" for n in found)
    note = notes.get(dedupe_key=f"leak:{keys['current'].pk}")
    assert note.kind == "key_leaked" and note.organization == keys["current"].organization
    assert "chatbot prod" in note.subject and keys["current"].hint in note.subject
    assert "config/app.env:3" in note.text and "ml-team" in note.text

    before = (AuditEvent.objects.count(), KeyEvent.objects.count(), Notification.objects.count())
    code, out, _ = run(root, "--git-history", "--format", "json")
    assert code == 1  # still leaked: still a failure for CI
    assert (AuditEvent.objects.count(), KeyEvent.objects.count(), Notification.objects.count()) == before
    assert {r["key"]["newly_flagged"] for r in json.loads(out)["findings"] if r["key"]} == {False}
    for name in found:
        keys[name].refresh_from_db()
        assert keys[name].leaked_at == flagged_at[name]


def test_a_tree_with_only_unregistered_keys_exits_0_and_changes_nothing(tmp_path, make_key):
    make_key()  # registered, but not in the tree
    (tmp_path / "a.env").write_text(f"KEY={formats.generate()}\n")
    code, out, _ = run(tmp_path, "--format", "json")
    assert code == 0
    assert [r["registered"] for r in json.loads(out)["findings"]] == [False]
    assert (AuditEvent.objects.count(), KeyEvent.objects.count(), Notification.objects.count()) == (0, 0, 0)
    assert not ApiKey.objects.filter(leaked_at__isnull=False).exists()
    assert run(tmp_path / "a.env")[0] == 0


def test_a_missing_path_is_a_usage_error(tmp_path, db):
    code, _, err = run(tmp_path / "nope")
    assert code == 2 and "No such file or directory" in err


def test_registered_keys_are_looked_up_in_two_queries_however_many_findings(
    tmp_path, make_key, django_assert_num_queries
):
    secrets_ = [make_key()[1] for _ in range(5)] + [formats.generate() for _ in range(20)]
    (tmp_path / "many.txt").write_text("\n".join(secrets_))
    findings, _ = scan(tmp_path)
    assert len(findings) == 25
    with django_assert_num_queries(2):
        registered = leakscan.registered_keys(findings)
    assert len(registered) == 5


@pytest.fixture
def every_log_record(caplog):
    """caplog at DEBUG for every logger, including those that do not propagate to root."""
    caplog.set_level(logging.DEBUG)
    for name in list(logging.root.manager.loggerDict):
        caplog.set_level(logging.DEBUG, logger=name)
    detached = []
    for logger in list(logging.root.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger) and not logger.propagate:
            logger.addHandler(caplog.handler)
            detached.append(logger)
    yield caplog
    for logger in detached:
        logger.removeHandler(caplog.handler)


def test_no_secret_reaches_the_output_the_audit_log_the_history_the_alerts_or_the_logs(planted, every_log_record):
    root = planted["root"]
    texts = []
    for args in ([], ["--format", "json"], ["--git-history"], ["--git-history", "--format", "json"]):
        code, out, err = run(root, *args)
        assert code == 1
        texts += [out, err]
    texts += [json.dumps(e.details) + e.target_repr for e in AuditEvent.objects.all()]
    texts += [e.reason + e.old_hint + e.new_hint for e in KeyEvent.objects.all()]
    texts += [n.subject + n.text for n in Notification.objects.all()]
    logged = []
    for record in every_log_record.records:
        logged.append(record.getMessage())
        logged.append(repr(record.__dict__))
    texts.append("\n".join(logged) + every_log_record.text)
    assert "leaked: found at" in texts[-1]  # the scan did log, at WARNING
    assert any(r.levelno == logging.DEBUG and r.getMessage().startswith("Scanned ") for r in every_log_record.records)
    assert AuditEvent.objects.filter(action="key.leaked").count() == 4
    for secret in planted["secrets"]:
        assert_secret_absent(secret, *texts)


# The command runs in another process, so the data must be committed; serialized_rollback
# restores the tiers and groups the migrations made, which an earlier flush removed.
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_the_real_command_line_exits_1_0_and_2(tmp_path, make_key, settings):
    db = settings.DATABASES["default"]
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
    }

    def manage(*args):
        result = subprocess.run(
            [sys.executable, "manage.py", "scan_leaks", *map(str, args)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        return result.returncode, result.stdout + result.stderr

    key, secret = make_key(name="cli key")
    (tmp_path / "leaky").mkdir()
    (tmp_path / "leaky" / "a.py").write_text(f"KEY = '{secret}'\n")
    (tmp_path / "clean").mkdir()
    (tmp_path / "clean" / "b.py").write_text(f"KEY = '{formats.generate()}'\n")
    code, output = manage(tmp_path / "leaky")
    assert code == 1 and "cli key" in output and key.hint in output
    assert_secret_absent(secret, output)
    key.refresh_from_db()
    assert key.leaked_at is not None
    assert manage(tmp_path / "clean")[0] == 0
    assert manage(tmp_path / "missing")[0] == 2
    assert manage(tmp_path / "clean", "--format", "xml")[0] == 2


# --- the key list's "leaked" filter ---------------------------------------------------------
@pytest.mark.parametrize("role", ["admin_client", "reviewer_client"])
def test_admins_and_reviewers_can_list_the_keys_a_scan_flagged(request, role, tmp_path, make_key):
    leaked, secret = make_key(name="leaked one")
    make_key(name="clean one")
    (tmp_path / "a.env").write_text(secret)
    assert run(tmp_path)[0] == 1
    client = request.getfixturevalue(role)
    url = "/admin/keys/apikey/"
    page = client.get(url, {"leaked_at__isempty": "0"})
    assert page.status_code == 200
    assert [k.name for k in page.context["cl"].result_list] == ["leaked one"]
    assert secret not in page.content.decode()
    page = client.get(url, {"leaked_at__isempty": "1"})
    assert [k.name for k in page.context["cl"].result_list] == ["clean one"]


def test_anonymous_visitors_get_the_login_page_for_the_leaked_filter(client, make_key):
    page = client.get("/admin/keys/apikey/", {"leaked_at__isempty": "0"})
    assert page.status_code == 302 and "/login/" in page["Location"]


def test_two_scans_racing_flag_a_key_once(tmp_path, make_key):
    key, secret = make_key()
    (tmp_path / "a.env").write_text(secret)
    findings, _ = scan(tmp_path)
    # Both scans read the key before either flagged it.
    first, second = leakscan.registered_keys(findings), leakscan.registered_keys(findings)
    assert leakscan.flag_leaked(findings, first, actor="cli:scan_leaks") == {key.pk}
    assert leakscan.flag_leaked(findings, second, actor="cli:scan_leaks") == set()
    assert AuditEvent.objects.filter(action="key.leaked").count() == 1
    assert KeyEvent.objects.filter(action=KeyAction.LEAKED).count() == 1
    assert Notification.objects.count() == 1
