"""The real shapes of OpenAI and Azure OpenAI secrets, and how to check one.

OpenAI (gitleaks rule `openai-api-key`; the marker T3BlbkFJ is base64 "OpenAI"):
    sk-proj-    74 + marker + 74 (older: 58 + marker + 58)   project key
    sk-svcacct- 74 + marker + 74 (older: 58 + marker + 58)   service-account key
    sk-admin-   58 + marker + 58 (also 74)                    admin key
    sk-         20 + marker + 20, alphanumeric                legacy user key
Azure OpenAI / Azure AI services:
    32 hexadecimal characters (classic Cognitive Services keys), or
    84 characters in Microsoft's "common annotated security key" shape (signature JQQJ9).

Nothing here stores or logs a secret: errors describe the shape, never the value.
"""

import re
import secrets
import string

MARKER = "T3BlbkFJ"
BODY = r"[A-Za-z0-9_\-]"
ALNUM = "[A-Za-z0-9]"

PROJECT = "project"
SERVICE_ACCOUNT = "service_account"
ADMIN = "admin"
LEGACY = "legacy"
AZURE = "azure"

PATTERNS = {
    PROJECT: re.compile(rf"^sk-proj-(?:{BODY}{{74}}{MARKER}{BODY}{{74}}|{BODY}{{58}}{MARKER}{BODY}{{58}})$"),
    SERVICE_ACCOUNT: re.compile(rf"^sk-svcacct-(?:{BODY}{{74}}{MARKER}{BODY}{{74}}|{BODY}{{58}}{MARKER}{BODY}{{58}})$"),
    ADMIN: re.compile(rf"^sk-admin-(?:{BODY}{{58}}{MARKER}{BODY}{{58}}|{BODY}{{74}}{MARKER}{BODY}{{74}})$"),
    LEGACY: re.compile(rf"^sk-{ALNUM}{{20}}{MARKER}{ALNUM}{{20}}$"),
    AZURE: re.compile(rf"^(?:[0-9a-fA-F]{{32}}|{ALNUM}{{52}}JQQJ9[9DH]{ALNUM}[A-L]{ALNUM}{{16}}[A-Za-z]{ALNUM}{{7}})$"),
}

PREFIXES = [("sk-svcacct-", SERVICE_ACCOUNT), ("sk-admin-", ADMIN), ("sk-proj-", PROJECT), ("sk-", LEGACY)]

DESCRIPTIONS = {
    PROJECT: "a project key (sk-proj-…)",
    SERVICE_ACCOUNT: "a service-account key (sk-svcacct-…)",
    ADMIN: "an admin key (sk-admin-…)",
    LEGACY: "a legacy user key (sk-…)",
    AZURE: "an Azure OpenAI key",
}

ALLOWED_CHARACTERS = re.compile(r"^[A-Za-z0-9_\-]+$")


class KeyFormatError(ValueError):
    """The message is safe to show: it never contains the secret."""


def normalize(raw):
    """Strip surrounding whitespace (pasted keys often carry a newline)."""
    return (raw or "").strip()


def detect_format(secret):
    """The format a secret claims by its prefix: PROJECT, SERVICE_ACCOUNT, ADMIN, LEGACY,
    AZURE for a non-sk- value, or None for an empty one."""
    if not secret:
        return None
    for prefix, name in PREFIXES:
        if secret.startswith(prefix):
            return name
    return AZURE


def check_shape(secret):
    """Raise KeyFormatError unless `secret` matches the exact shape its prefix claims.
    Returns the format name."""
    if not secret:
        raise KeyFormatError("Enter the API key.")
    if any(c.isspace() for c in secret):
        raise KeyFormatError("The key contains spaces or line breaks inside it; paste it as one word.")
    if not ALLOWED_CHARACTERS.match(secret):
        raise KeyFormatError(
            "The key contains characters no OpenAI or Azure key has (only letters, digits, '-' and '_')."
        )
    fmt = detect_format(secret)
    if PATTERNS[fmt].match(secret):
        return fmt
    if fmt == AZURE:
        raise KeyFormatError(
            f"This is not a recognised key: OpenAI keys start with 'sk-', Azure OpenAI keys are 32 "
            f"hexadecimal characters or 84 characters (this one has {len(secret)})."
        )
    raise KeyFormatError(
        f"This looks like {DESCRIPTIONS[fmt]} but its length or body is wrong "
        f"({len(secret)} characters); check that it was copied whole."
    )


def generate(fmt=PROJECT, long=True):
    """A random, well-formed secret of the given format: for tests, the demo and the
    sandbox. Never commit one; generate at run time."""
    alphabet = string.ascii_letters + string.digits + "_-"
    alnum = string.ascii_letters + string.digits

    def body(n, chars=alphabet):
        return "".join(secrets.choice(chars) for _ in range(n))

    if fmt == LEGACY:
        return "sk-" + body(20, alnum) + MARKER + body(20, alnum)
    if fmt == AZURE:
        return secrets.token_hex(16)
    # Admin keys are issued in the short shape; project and service-account keys in both.
    half = 74 if long and fmt != ADMIN else 58
    prefix = {PROJECT: "sk-proj-", SERVICE_ACCOUNT: "sk-svcacct-", ADMIN: "sk-admin-"}[fmt]
    return prefix + body(half) + MARKER + body(half)


def hint(secret):
    """A display hint such as "sk-proj-…Ab3d": the prefix and the last four characters."""
    fmt = detect_format(secret)
    prefix = {PROJECT: "sk-proj-", SERVICE_ACCOUNT: "sk-svcacct-", ADMIN: "sk-admin-", LEGACY: "sk-"}.get(fmt, "")
    return f"{prefix}…{secret[-4:]}"
