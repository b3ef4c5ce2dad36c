"""The leak scan (keys/leakscan.py, `manage.py scan_leaks`): a generated tree with keys
planted at run time — registered and not, in the working tree and only in git history, in
a binary file, under .git/objects, Azure keys near and far from an endpoint. Checks
file:line, hints, the registered key's organization, project and owner, exit codes, the
JSON shape, the leaked flag with its audit trail and alert, idempotence, and that no full
secret reaches any output, audit event or log."""

import os
import subprocess
from pathlib import Path

import pytest

from keys import formats, leakscan

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
