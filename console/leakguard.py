"""Keep secrets out of places where no secret belongs.

The lowest floor of the project: it imports nothing from accounts, keys, usage or api,
so every app (and the error reporter) can use it.

`find_key_shaped(text)` finds the first value ANYWHERE in `text` that has the shape of an
OpenAI or Azure OpenAI secret (see keys/formats.py for the exact shapes):

    marker      20+ key characters, T3BlbkFJ (base64 "OpenAI"), 20+ key characters:
                every OpenAI key (sk-proj-, sk-svcacct-, sk-admin-, legacy sk-), even
                with its prefix cut off or glued to other text ("x" + key + "y").
    sk-run      "sk-" not preceded by a letter or digit, then 32+ key characters that mix
                upper case, lower case and digits (random, not "sk-learn-pipeline-…").
    azure-hex   exactly 32 hexadecimal characters (not part of a longer hex run, so a
                SHA-1 or SHA-256 digest is not one).
    azure-84    Microsoft's 84-character "common annotated security key" (JQQJ9 signature).
    occ-token   this console's own REST API token: "occ_" not preceded by a letter or
                digit, then 40 key characters (api/models.py).

A value holding "%" is also searched once percent-decoded (a key in a URL). Redacted
forms ("sk-abc...def", "sk-proj-…Ab3d", "sk-VKMIs***…wjh3") are not key-shaped.
Every pattern has fixed-width parts or a single greedy run with nothing after it, so a
search is linear in the length of the text: no input can make it backtrack.

The validators `refuse_key_shaped` and `refuse_unsafe_text` are for plain text fields;
their messages never echo the value; `GuardedFormRenderer` keeps a refused form from
re-displaying one. `GuardedCommand` is the base of every management command: it refuses
key-shaped arguments (on the command line even the start of an sk- key) before argparse
can echo them, and never lets a CommandError print one.
"""

import re
import sys
import unicodedata
from typing import NamedTuple
from urllib.parse import unquote

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper
from django.forms.renderers import DjangoTemplates
from django.utils.safestring import SafeData, mark_safe

from .request_origin import acting_as

MARKER = "T3BlbkFJ"

_MARKER = re.compile(rf"(?<=[A-Za-z0-9_\-]{{20}}){MARKER}(?=[A-Za-z0-9_\-]{{20}})")
_SK_RUN = re.compile(r"(?<![A-Za-z0-9])sk-([A-Za-z0-9_\-]{32,})")
# Not part of a longer hex run, except that a percent-escape before it ("%20") ends a run.
_AZURE_HEX = re.compile(r"(?:(?<![0-9A-Fa-f])|(?<=%[0-9A-Fa-f]{2}))[0-9A-Fa-f]{32}(?![0-9A-Fa-f])")
_OCC_TOKEN = re.compile(r"(?<![A-Za-z0-9])occ_[A-Za-z0-9_\-]{40}")
_AZURE_84 = re.compile(r"[A-Za-z0-9]{52}JQQJ9[9DH][A-Za-z0-9][A-L][A-Za-z0-9]{16}[A-Za-z][A-Za-z0-9]{7}")

REDACTED = "[key-shaped value removed]"

KEY_SHAPED_MESSAGE = "This looks like an API key; secrets go only in the Secret field."


class KeyShape(NamedTuple):
    """Where a key-shaped value sits in a text, and which rule found it."""

    rule: str
    start: int
    end: int


def _is_random_run(run):
    return any(c.isupper() for c in run) and any(c.islower() for c in run) and any(c.isdigit() for c in run)


def _sk_runs(text):
    for match in _SK_RUN.finditer(text):
        if _is_random_run(match[1]):
            yield KeyShape("sk-run", match.start(), match.end())


def _marker_spans(text):
    # The span covers the marker and the 20 characters either side: enough to redact.
    for match in _MARKER.finditer(text):
        yield KeyShape("marker", match.start() - 20, match.end() + 20)


def _all_shapes(text, hex_runs=True):
    yield from _marker_spans(text)
    yield from _sk_runs(text)
    if hex_runs:
        yield from (KeyShape("azure-hex", m.start(), m.end()) for m in _AZURE_HEX.finditer(text))
    yield from (KeyShape("azure-84", m.start(), m.end()) for m in _AZURE_84.finditer(text))
    yield from (KeyShape("occ-token", m.start(), m.end()) for m in _OCC_TOKEN.finditer(text))


def find_key_shaped(text):
    """The first key-shaped value in `text` as a KeyShape(rule, start, end), or None.

    `text` may be anything; non-strings are converted with str(). None and "" give None.
    """
    if text is None:
        return None
    text = text if isinstance(text, str) else str(text)
    if len(text) < 32:
        return None  # shorter than every key shape
    found = next(_all_shapes(text), None)
    if found is None and "%" in text:
        # A key in a URL may be percent-encoded or follow an encoded character ("%20" +
        # 32 hex reads as one 34-hex run); look at the decoded text too.
        decoded = unquote(text)
        if decoded != text:
            found = next(_all_shapes(decoded), None)
    return found


def is_key_shaped(text):
    return find_key_shaped(text) is not None


def redact_key_shaped(text):
    """`text` with every key-shaped value (and the rest of its run) replaced by REDACTED."""
    text = text if isinstance(text, str) else str(text)
    if find_key_shaped(text) is None:
        return text
    spans = sorted(_all_shapes(text), key=lambda s: s.start)
    if not spans:  # found only in the percent-decoded text: redact that
        return redact_key_shaped(unquote(text))
    return redact_key_shaped(_cut(text, spans))


def redact_unmistakable_keys(text):
    """`text` with OpenAI-shaped keys (the T3BlbkFJ marker, sk- runs), Azure's 84-character
    keys and console API tokens cut out — but not bare 32-hex runs, which in log lines are
    request ids and hashes far more often than Azure keys (log formatters use this)."""
    text = text if isinstance(text, str) else str(text)
    if len(text) < 32:
        return text
    spans = sorted(_all_shapes(text, hex_runs=False), key=lambda s: s.start)
    return _cut(text, spans) if spans else text


def _cut(text, spans):
    # Widen each span to the whole run of key characters around it, then cut.
    out, position = [], 0
    for shape in spans:
        if shape.end <= position:
            continue  # inside a run already removed
        start, end = max(shape.start, position), shape.end
        while start > position and _is_key_char(text[start - 1]):
            start -= 1
        while end < len(text) and _is_key_char(text[end]):
            end += 1
        out.append(text[position:start])
        out.append(REDACTED)
        position = end
    out.append(text[position:])
    return "".join(out)


def _is_key_char(c):
    return c.isascii() and (c.isalnum() or c in "_-")


# --- Validators for plain text fields ----------------------------------------------------
def refuse_key_shaped(value):
    """Django validator: refuse a value holding anything key-shaped. Never echoes it."""
    if find_key_shaped(value) is not None:
        raise ValidationError(KEY_SHAPED_MESSAGE, code="key_shaped")


# Bidi embeddings/overrides (U+202A–202E), isolates (U+2066–2069) and marks (LRM, RLM,
# ALM): they make a name display differently from what it is ("Trojan Source").
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")


def _unsafe_character(value, allow_newlines):
    for c in str(value):
        if c in BIDI_CONTROLS:
            return "bidirectional-text control characters"
        if c == "\x1b":
            return "terminal escape sequences"
        if c in "\r\n":
            if allow_newlines:
                continue
            return "line breaks"
        if unicodedata.category(c) == "Cc":  # C0 (incl. tab), DEL and C1
            return "control characters"
    return None


def refuse_unsafe_text(value):
    """Django validator for single-line fields: refuse bidi controls, ANSI escapes (ESC),
    other C0/C1 control characters and CR/LF. The message names the kind, not the value."""
    problem = _unsafe_character(value, allow_newlines=False)
    if problem:
        raise ValidationError(f"Remove the {problem}: this field takes plain text on one line.", code="unsafe_text")


def refuse_unsafe_multiline_text(value):
    """As refuse_unsafe_text, but line breaks are allowed (lists, one item per line)."""
    problem = _unsafe_character(value, allow_newlines=True)
    if problem:
        raise ValidationError(f"Remove the {problem}: this field takes plain text.", code="unsafe_text")


# --- Forms ------------------------------------------------------------------------------
class GuardedFormRenderer(DjangoTemplates):
    """The form renderer (settings.FORM_RENDERER): whatever a form renders — a widget
    holding what the user typed, an error list — goes out with every key-shaped value
    replaced by REDACTED. A refused form re-displays its input; without this, a key pasted
    into the Name field would come back in the page that refuses it."""

    def render(self, template_name, context, request=None):
        html = super().render(template_name, context, request=request)
        cleaned = redact_key_shaped(html)
        if cleaned == html:
            return html
        return mark_safe(cleaned) if isinstance(html, SafeData) else cleaned  # REDACTED holds no markup


# --- Management commands ----------------------------------------------------------------
ARGV_REFUSAL = (
    "Refusing a key-shaped value on the command line: argv is visible to other users in the "
    "process list (ps, /proc) and is kept in shell history. Secrets go only where a command "
    "reads them from the environment or stdin. If it was typed into a shared shell, consider "
    "it exposed and rotate it."
)


# On the command line even the start of a key is refused ("sk-proj-abc", a paste cut
# short is still a partial leak); a redacted hint ("sk-proj-…Ab3d") is not a start.
_ARGV_KEY_START = re.compile(r"(?<![A-Za-z0-9])sk-(?:(?:proj|svcacct|admin)-)?+[A-Za-z0-9_\-]")


def is_secret_argument(arg):
    """True for a command-line argument holding a key, or the start of an sk- key."""
    text = str(arg)
    return find_key_shaped(text) is not None or _ARGV_KEY_START.search(text) is not None


class GuardedParser(CommandParser):
    """A CommandParser that refuses key-shaped arguments before argparse sees (and could
    echo) them, and never prints a key-shaped value in an error."""

    refusal = ARGV_REFUSAL

    def parse_args(self, args=None, namespace=None):
        given = sys.argv[1:] if args is None else args
        if any(is_secret_argument(arg) for arg in given):
            self.error(self.refusal)
        return super().parse_args(args, namespace)

    def error(self, message):
        super().error(redact_key_shaped(message))


class RedactingOutput(OutputWrapper):
    """A command's stdout/stderr that writes key-shaped values as REDACTED."""

    def write(self, msg="", style_func=None, ending=None):
        super().write(redact_key_shaped(msg) if msg else msg, style_func, ending)


class GuardedCommand(BaseCommand):
    """Base class of every management command of the project.

    `argv_refusal` is the message for a key-shaped argument; a command that reads a secret
    says where it should go instead. A CommandError whose message holds a key-shaped value
    (an echoed option, a form error) is re-raised with that value removed, and whatever
    the command writes to stdout/stderr goes out with key-shaped values removed.
    """

    argv_refusal = ARGV_REFUSAL

    def __init__(self, stdout=None, stderr=None, no_color=False, force_color=False):
        super().__init__(stdout, stderr, no_color, force_color)
        self.stdout = RedactingOutput(self.stdout._out, ending=self.stdout.ending)
        self.stderr = RedactingOutput(self.stderr._out, ending=self.stderr.ending)
        self.stderr.style_func = None if no_color else self.style.ERROR

    def create_parser(self, prog_name, subcommand, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.__class__ = GuardedParser  # BaseCommand builds a plain CommandParser; only methods differ
        parser.refusal = self.argv_refusal
        return parser

    def execute(self, *args, **options):
        # BaseCommand.execute wraps these in OutputWrapper; the inner wrapper redacts.
        for name in ("stdout", "stderr"):
            if options.get(name):
                options[name] = RedactingOutput(options[name])
        try:
            with acting_as("cli:" + type(self).__module__.rsplit(".", 1)[-1]):  # who the audit log names
                return super().execute(*args, **options)
        except CommandError as e:
            message = str(e)
            cleaned = redact_key_shaped(message)
            if cleaned == message:
                raise
            raise CommandError(cleaned, returncode=e.returncode) from None
