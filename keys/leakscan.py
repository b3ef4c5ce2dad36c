"""The leak scan: find OpenAI and Azure OpenAI secrets in files and git history, and say
which registered keys they are.

What it looks for (the shapes are keys/formats.py's, searched unanchored, never restated):

    OpenAI   sk-proj-, sk-svcacct-, sk-admin- and legacy sk- keys. Every one holds the
             marker T3BlbkFJ, so the marker is the prefilter: a file (or block) without
             it is never searched further, and each marker found is expanded to the run
             of key characters around it, where the exact shapes are tried. A marker run
             that fits no exact shape but is key-shaped for console/leakguard.py (a key
             cut short, a prefix lost) is reported as "partial": it cannot match a
             registered key, but it is a leak.
    Azure    32 hexadecimal characters (or Microsoft's 84-character shape) only within
             AZURE_NEAR_LINES lines of an Azure endpoint (*.openai.azure.com,
             *.cognitiveservices.azure.com): alone, 32 hex digits are an MD5, a UUID
             without dashes, a cache key. Prefilter: "zure." or "ZURE." in the block.

Files are read in blocks cut at line ends (a key never spans a line), each searched with
a few lines of its neighbours for the Azure rule. Binary files (a NUL byte in the first
8,000 bytes, git's test) and `.git/objects` are skipped; symbolic links are not
followed. With `git_history`, every blob reachable from any ref of each git repository
met is read through `git rev-list --objects --all` and `git cat-file --batch` (git
plumbing in a subprocess, core.fsmonitor off; objects a partial clone lacks are skipped,
never fetched). A PATH inside a repository scans that repository's whole history.

A secret exists here only in a local variable, for the one call that fingerprints it
(keys/crypto.py's HMAC, the same as ApiKey.fingerprint) and makes its hint (formats.hint,
the same as ApiKey.hint). A Finding holds the fingerprint and the hint, never the secret,
so nothing that reports a finding can print one.
"""

import logging
import os
import re
import stat
import subprocess
import threading
from dataclasses import dataclass, field

from django.db import transaction
from django.utils import timezone

from accounts.models import AuditEvent
from accounts.notifications import enqueue
from console.leakguard import find_key_shaped, redact_key_shaped

from . import crypto, formats
from .models import ApiKey, KeyAction, KeyEvent, SupersededSecret

logger = logging.getLogger(__name__)

# Read this much of a file at a time; lines longer than MAX_LINE are cut (at a character
# that cannot be inside a key when there is one).
BLOCK = 8 * 1024 * 1024
MAX_LINE = 16 * 1024 * 1024
BINARY_SNIFF = 8000  # git's heuristic: a NUL byte in the first 8,000 bytes means binary
AZURE_NEAR_LINES = 5  # an Azure key counts within this many lines of an endpoint
RUN_LIMIT = 200  # how far a marker's run of key characters is followed either side

PARTIAL = "partial"
FILE = "file"
GIT_HISTORY = "git-history"

_MARKER = formats.MARKER.encode()
# "azure." in any usual case ("azure.", "Azure.", "AZURE."): found by bytes.find, then the
# host around it is checked (one case-insensitive regex over the whole text was ten times slower).
_AZURE_PREFILTER = (b"zure.", b"ZURE.")
_AZURE_HOSTS = (b".openai.azure.com", b".cognitiveservices.azure.com")
_HOST_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-")
_KEY_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def _unanchored(fmt):
    """formats.PATTERNS[fmt] (anchored with ^…$) as a bytes pattern that matches anywhere."""
    pattern = formats.PATTERNS[fmt].pattern
    assert pattern.startswith("^") and pattern.endswith("$"), fmt
    return pattern[1:-1].encode()


# The OpenAI shapes are tried at an "sk-" inside a marker's run, longest prefix first (a
# legacy sk- key never has "-" in its body, so "sk-proj-…" is never read as legacy).
_OPENAI_SHAPES = [
    (fmt, re.compile(_unanchored(fmt)))
    for fmt in (formats.SERVICE_ACCOUNT, formats.ADMIN, formats.PROJECT, formats.LEGACY)
]
# An Azure key stands alone: not part of a longer run of key characters.
_AZURE_SHAPE = re.compile(rb"(?<![A-Za-z0-9_\-])(?:" + _unanchored(formats.AZURE) + rb")(?![A-Za-z0-9_\-])")


@dataclass(frozen=True)
class Finding:
    """One secret found: where, what shape, its hint and its fingerprint (never the secret).
    `fingerprint` is empty for a partial key (it cannot be registered)."""

    path: str
    line: int
    kind: str
    hint: str
    fingerprint: str = field(repr=False, default="")
    source: str = FILE
    commit: str = ""  # git history: the first commit (abbreviated) that holds the blob
    blob: str = ""  # git history: the blob id

    @property
    def location(self):
        return f"{self.path}:{self.line}"


@dataclass
class ScanStats:
    files: int = 0
    blobs: int = 0
    bytes: int = 0
    skipped_binary: int = 0
    repositories: int = 0
    errors: list = field(default_factory=list)  # (path, reason) — never file contents


def _finding(secret, kind, path, line, **where):
    """Fingerprint and hint a secret found at path:line. The secret goes no further."""
    text = secret.decode("ascii")
    fingerprint = "" if kind == PARTIAL else crypto.fingerprint(text)
    # A path is shown, audited and alerted: a key-shaped file name is not repeated.
    path = redact_key_shaped(path)
    return Finding(path=path, line=line, kind=kind, hint=formats.hint(text), fingerprint=fingerprint, **where)


# --- searching one block --------------------------------------------------------------
def _openai_secrets(buf, start, end):
    """(offset, kind, secret bytes) for each OpenAI key (or partial one) in buf[start:end]."""
    position = start
    while True:
        m = buf.find(_MARKER, position, end)
        if m < 0:
            return
        run_start = m
        floor = max(start, m - RUN_LIMIT)
        while run_start > floor and buf[run_start - 1] in _KEY_CHARS:
            run_start -= 1
        run_end = m + len(_MARKER)
        ceiling = min(end, run_end + RUN_LIMIT)
        while run_end < ceiling and buf[run_end] in _KEY_CHARS:
            run_end += 1
        found = _exact_shape(buf, run_start, m, run_end)
        if found is not None:
            kind, key_start, key_end = found
            yield key_start, kind, buf[key_start:key_end]
            position = key_end
            continue
        run = buf[run_start:run_end]
        if find_key_shaped(run.decode("ascii")) is not None:
            yield run_start, PARTIAL, run
        position = run_end


def _exact_shape(buf, run_start, marker, run_end):
    """(kind, start, end) of the first exact OpenAI shape in the run that holds `marker`."""
    s = buf.find(b"sk-", run_start, marker)
    while s >= 0:
        for kind, shape in _OPENAI_SHAPES:
            match = shape.match(buf, s, run_end)
            if match and match.end() >= marker + len(_MARKER):
                return kind, s, match.end()
        s = buf.find(b"sk-", s + 1, marker)
    return None


def _line_bounds(buf, offset, lines):
    """The byte range of the `lines` lines either side of the line holding `offset`."""
    lo = offset
    for _ in range(lines + 1):
        lo = buf.rfind(b"\n", 0, lo)
        if lo < 0:
            break
    hi = offset - 1
    for _ in range(lines + 1):
        hi = buf.find(b"\n", hi + 1)
        if hi < 0:
            hi = len(buf)
            break
    return lo + 1, hi


def _azure_endpoints(buf):
    """Offsets of Azure OpenAI endpoint host names (<resource>.openai.azure.com,
    <resource>.cognitiveservices.azure.com, any case) in buf, in order."""
    found = []
    for marker in _AZURE_PREFILTER:
        i = buf.find(marker)
        while i >= 0:
            host = buf[max(0, i - 24) : i + 8].lower()  # i is at "z"; "zure.com" is 8 bytes
            for suffix in _AZURE_HOSTS:
                at = len(host) - len(suffix)
                if host.endswith(suffix) and at > 0 and host[at - 1] in _HOST_CHARS:
                    found.append(i)
            i = buf.find(marker, i + 1)
    return sorted(found)


def _azure_secrets(buf, start, end):
    """(offset, "azure", secret bytes) for each Azure-shaped key in buf[start:end] that lies
    within AZURE_NEAR_LINES lines of an endpoint anywhere in buf."""
    ranges = []
    for endpoint in _azure_endpoints(buf):
        lo, hi = _line_bounds(buf, endpoint, AZURE_NEAR_LINES)
        lo, hi = max(lo, start), min(hi, end)
        if lo >= hi:
            continue
        if ranges and lo <= ranges[-1][1]:
            ranges[-1][1] = max(ranges[-1][1], hi)
        else:
            ranges.append([lo, hi])
    for lo, hi in ranges:
        for match in _AZURE_SHAPE.finditer(buf, lo, hi):
            yield match.start(), formats.AZURE, match[0]


def _secrets_in(buf, start, end):
    """Every secret in buf[start:end], in order of offset; buf around it is context."""
    found = []
    if buf.find(_MARKER, start, end) >= 0:
        found.extend(_openai_secrets(buf, start, end))
    if any(marker in buf for marker in _AZURE_PREFILTER):
        found.extend(_azure_secrets(buf, start, end))
    found.sort(key=lambda item: item[0])
    return found


# --- reading a stream in line-aligned blocks -------------------------------------------
def _cores(read, first):
    """Blocks of a stream, each ending at a line end (except the last); `first` is the
    stream's first read."""
    carry = b""
    chunk = first
    while True:
        if not chunk:
            if carry:
                yield carry
            return
        data = carry + chunk if carry else chunk
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            if len(data) < MAX_LINE:
                carry = data
                chunk = read(BLOCK)
                continue
            cut = _safe_cut(data)
        yield data[:cut]
        carry = data[cut:]
        chunk = read(BLOCK)


def _safe_cut(data):
    # A line longer than MAX_LINE: cut after its last character that cannot be in a key.
    for i in range(len(data) - 1, max(0, len(data) - 4096) - 1, -1):
        if data[i] not in _KEY_CHARS:
            return i + 1
    return len(data)


def _head_lines(data, n):
    end = -1
    for _ in range(n):
        end = data.find(b"\n", end + 1)
        if end < 0:
            return data
    return data[: end + 1]


def _tail_lines(data, n):
    start = len(data) - 1 if data.endswith(b"\n") else len(data)
    for _ in range(n):
        start = data.rfind(b"\n", 0, start)
        if start < 0:
            return data
    return data[start + 1 :]


def scan_stream(read, path, stats, **where):
    """Findings in one stream (`read(n)` returns bytes, b"" at the end); None if binary."""
    findings = []
    first = read(BLOCK)
    if b"\0" in first[:BINARY_SNIFF]:
        stats.skipped_binary += 1
        return None
    cores = _cores(read, first)
    current = next(cores, None)
    before, line = b"", 1
    while current is not None:
        following = next(cores, None)
        stats.bytes += len(current)
        after = _head_lines(following, AZURE_NEAR_LINES) if following else b""
        if before or after:
            buf, start = before + current + after, len(before)
        else:
            buf, start = current, 0
        end = start + len(current)
        counted_to, counted_line = start, line
        for offset, kind, secret in _secrets_in(buf, start, end):
            counted_line += buf.count(b"\n", counted_to, offset)
            counted_to = offset
            findings.append(_finding(secret, kind, path, counted_line, **where))
        line += current.count(b"\n")
        before = _tail_lines(current, AZURE_NEAR_LINES)
        current = following
    return findings


# --- files and directories ---------------------------------------------------------------
def _is_git_objects(directory, name):
    return name == "objects" and os.path.basename(directory) == ".git"


def iter_files(paths, repositories):
    """Every regular file under `paths` (files or directories), without following links or
    entering .git/objects; the roots of git repositories met are added to `repositories`."""
    for given in paths:
        if not os.path.isdir(given) or os.path.islink(given):
            if _is_regular_file(given):
                yield given
            continue
        for directory, dirnames, filenames in os.walk(given, onerror=None, followlinks=False):
            if ".git" in dirnames or ".git" in filenames:
                repositories.append(directory)
            dirnames[:] = sorted(d for d in dirnames if not _is_git_objects(directory, d))
            for name in sorted(filenames):
                path = os.path.join(directory, name)
                if _is_regular_file(path):
                    yield path


def _is_regular_file(path):
    # Not a link, FIFO (opening one would wait forever), socket or device.
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def scan_file(path, stats):
    try:
        with open(path, "rb") as f:
            findings = scan_stream(f.read, path, stats)
    except OSError as e:
        stats.errors.append((path, e.strerror or type(e).__name__))
        return []
    if findings is not None:
        stats.files += 1
        logger.debug("Scanned %s: %d finding(s).", path, len(findings))
    return findings or []


# --- git history ---------------------------------------------------------------------------
GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_PAGER": "cat", "GIT_CONFIG_NOSYSTEM": "1", "LC_ALL": "C"}


def _git(repo, *args, **kwargs):
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(
        ["git", "-c", "core.fsmonitor=false", "-C", repo, *args],
        env=env,
        capture_output=True,
        check=False,
        **kwargs,
    )


def git_toplevel(path):
    """The root of the git working tree holding `path`, or None."""
    directory = path if os.path.isdir(path) else os.path.dirname(path) or "."
    result = _git(directory, "rev-parse", "--show-toplevel")
    if result.returncode != 0:
        return None
    return result.stdout.decode(errors="replace").strip() or None


def _history_blobs(repo):
    """{blob id: a path it was committed under} for every blob reachable from any ref."""
    result = _git(
        repo,
        "rev-list",
        "--objects",
        "--all",
        "--missing=allow-any",  # a partial clone's absent blobs: skipped, not fetched
        "--filter=object:type=blob",
        "--filter-provided-objects",
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr.decode(errors="replace").strip()[:300] or "git rev-list failed")
    blobs = {}
    for line in result.stdout.splitlines():
        sha, _, name = line.partition(b" ")
        if sha:
            blobs.setdefault(sha.decode(), name.decode(errors="replace"))
    return blobs


def _first_commit(repo, blob):
    """The oldest commit (abbreviated) that adds or removes `blob`, for the report."""
    result = _git(repo, "log", "--all", "--reverse", "--format=%h", f"--find-object={blob}")
    lines = result.stdout.decode(errors="replace").split()
    return lines[0] if lines else ""


def scan_git_history(repo, stats):
    """Findings in every blob reachable from any ref of the repository at `repo`."""
    try:
        blobs = _history_blobs(repo)
    except RuntimeError as e:
        stats.errors.append((repo, f"git history not read: {e}"))
        return []
    stats.repositories += 1
    process = subprocess.Popen(
        ["git", "-c", "core.fsmonitor=false", "-C", repo, "cat-file", "--batch"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **GIT_ENV},
    )

    def feed():
        try:
            for sha in blobs:
                process.stdin.write(sha.encode() + b"\n")
        except BrokenPipeError:
            pass
        finally:
            process.stdin.close()

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    findings = []
    try:
        for _ in range(len(blobs)):
            header = process.stdout.readline().split()
            if len(header) < 3:
                continue  # "<sha> missing": a partial clone
            sha, size = header[0].decode(), int(header[2])
            if header[1] != b"blob" or sha not in blobs:
                process.stdout.read(size + 1)  # never asked for: skip it and its newline
                continue
            remaining = [size]

            def read(n, remaining=remaining):
                n = min(n, remaining[0])
                data = process.stdout.read(n) if n else b""
                remaining[0] -= len(data)
                return data

            path = os.path.join(repo, blobs[sha]) if blobs[sha] else os.path.join(repo, sha)
            found = scan_stream(read, path, stats, source=GIT_HISTORY, blob=sha)
            while remaining[0]:
                read(BLOCK)  # the rest of a binary blob
            process.stdout.read(1)  # the newline after each object
            if found is not None:
                stats.blobs += 1
                findings.extend(found)
    finally:
        writer.join()
        process.stdout.close()
        process.wait()
    commits = {}
    for n, finding in enumerate(findings):
        if finding.blob not in commits:
            commits[finding.blob] = _first_commit(repo, finding.blob)
        findings[n] = Finding(**{**finding.__dict__, "commit": commits[finding.blob]})
    return findings


# --- the whole scan ---------------------------------------------------------------------
def scan(paths, git_history=False, stats=None):
    """Findings in `paths` (files or directories) and, with `git_history`, in every blob of
    each git repository they are in or contain. Returns (findings, stats)."""
    stats = stats or ScanStats()
    repositories = []
    findings = []
    for path in iter_files(paths, repositories):
        findings.extend(scan_file(path, stats))
    if git_history:
        for path in paths:
            top = git_toplevel(path)
            if top:
                repositories.append(top)
        seen_in_tree = {(os.path.realpath(f.path), f.line, f.fingerprint) for f in findings}
        done = set()
        for repo in repositories:
            real = os.path.realpath(repo)
            if real in done:
                continue
            done.add(real)
            for finding in scan_git_history(repo, stats):
                # A secret still in the working tree at the same place is reported once.
                if (os.path.realpath(finding.path), finding.line, finding.fingerprint) not in seen_in_tree:
                    findings.append(finding)
    return findings, stats


@dataclass(frozen=True)
class Match:
    """A registered key whose secret a finding is: its current one, or a superseded one
    (rotated out, possibly still working during its grace period)."""

    key: ApiKey
    secret: str  # CURRENT or SUPERSEDED


CURRENT = "current"
SUPERSEDED = "superseded"


def registered_keys(findings):
    """{fingerprint: Match} for the findings that are registered secrets, current or
    superseded (two queries, whatever the number of findings)."""
    fingerprints = {f.fingerprint for f in findings if f.fingerprint}
    if not fingerprints:
        return {}
    matches = {}
    old = SupersededSecret.objects.filter(fingerprint__in=fingerprints).select_related(
        "key__organization", "key__project"
    )
    for superseded in old:
        matches[superseded.fingerprint] = Match(superseded.key, SUPERSEDED)
    for key in ApiKey.objects.filter(fingerprint__in=fingerprints).select_related("organization", "project"):
        matches[key.fingerprint] = Match(key, CURRENT)
    return matches


def flag_leaked(findings, registered, actor, now=None):
    """Flag each registered key found as leaked, once: set `leaked_at`, record the audit
    event "key.leaked" (where and which hint, never the secret), a KeyEvent "leaked", and
    raise one alert through the outbox (dedupe key "leak:<key id>"). A key already flagged
    gets nothing new, so scanning the same tree again changes nothing. Returns the ids of
    the keys flagged by this call."""
    now = now or timezone.now()
    first = {}
    for finding in findings:
        match = registered.get(finding.fingerprint) if finding.fingerprint else None
        if match is not None:
            first.setdefault(match.key.pk, (finding, match))
    flagged = set()
    for pk, (finding, match) in first.items():
        key = match.key
        if key.leaked_at is not None:
            continue
        with transaction.atomic():
            # Compare-and-swap: of two scans racing, one flags.
            if not ApiKey.objects.filter(pk=pk, leaked_at__isnull=True).update(leaked_at=now):
                continue
            key.leaked_at = now
            _record_leak(key, finding, match, actor, now)
        flagged.add(pk)
        logger.warning("Key %s (%s) leaked: found at %s.", key.pk, finding.hint, finding.location)
    return flagged


def _record_leak(key, finding, match, actor, now):
    location = finding.location
    if finding.source == GIT_HISTORY:
        location += f" (git history, commit {finding.commit or finding.blob[:12]})"
    AuditEvent.record(
        actor,
        "key.leaked",
        key,
        location=location,
        hint=finding.hint,
        secret=match.secret,
        source=finding.source,
        commit=finding.commit,
        organization=key.organization.slug,
        project=key.project.name if key.project_id else None,
        owner=key.owner,
    )
    KeyEvent.objects.create(
        key=key,
        at=now,
        action=KeyAction.LEAKED,
        actor_label=actor,
        reason=f"{match.secret} secret {finding.hint} found at {location}"[:300],
    )
    where = f"project “{key.project.name}”" if key.project_id else "the organization (admin key)"
    revoked = f"\nThe key was revoked on {key.revoked_at:%Y-%m-%d}." if key.revoked_at else ""
    enqueue(
        key.organization,
        f"leak:{key.pk}",
        "key_leaked",
        f"API key “{key.name}” ({finding.hint}) leaked",
        (
            f"The leak scan found the {match.secret} secret of API key “{key.name}” ({finding.hint}) "
            f"of {where} in {key.organization.name}.\n"
            f"Found at: {location}\n"
            f"Owner: {key.owner or '-'}{revoked}\n"
            "Rotate the key now and remove the secret from where it was found (and from git history)."
        ),
    )


__all__ = [
    "Finding",
    "ScanStats",
    "scan",
    "scan_stream",
    "scan_git_history",
    "registered_keys",
    "flag_leaked",
    "Match",
]
