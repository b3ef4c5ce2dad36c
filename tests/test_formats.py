"""Secret shapes (keys/formats.py): every real format is accepted, every malformed
variant is refused with a message that never contains the secret."""

import secrets
import string

import pytest

from keys import formats

ALNUM = string.ascii_letters + string.digits


def pick(chars, n):
    return "".join(secrets.choice(chars) for _ in range(n))


def azure_84():
    """Microsoft's 84-character annotated key shape (signature JQQJ9)."""
    return (
        pick(ALNUM, 52)
        + "JQQJ9"
        + secrets.choice("9DH")
        + pick(ALNUM, 1)
        + secrets.choice("ABCDEFGHIJKL")
        + pick(ALNUM, 16)
        + pick(string.ascii_letters, 1)
        + pick(ALNUM, 7)
    )


def admin_long():
    body = string.ascii_letters + string.digits + "_-"
    return "sk-admin-" + pick(body, 74) + formats.MARKER + pick(body, 74)


VALID = {
    "project, long": (lambda: formats.generate(formats.PROJECT, long=True), formats.PROJECT),
    "project, short": (lambda: formats.generate(formats.PROJECT, long=False), formats.PROJECT),
    "service account, long": (lambda: formats.generate(formats.SERVICE_ACCOUNT, long=True), formats.SERVICE_ACCOUNT),
    "service account, short": (lambda: formats.generate(formats.SERVICE_ACCOUNT, long=False), formats.SERVICE_ACCOUNT),
    "admin, short": (lambda: formats.generate(formats.ADMIN), formats.ADMIN),
    "admin, long": (admin_long, formats.ADMIN),
    "legacy": (lambda: formats.generate(formats.LEGACY), formats.LEGACY),
    "azure hex": (lambda: formats.generate(formats.AZURE), formats.AZURE),
    "azure 84": (azure_84, formats.AZURE),
}


@pytest.mark.parametrize("label", VALID)
def test_every_real_format_is_accepted_and_named(label):
    make, expected = VALID[label]
    for _ in range(20):
        assert formats.check_shape(make()) == expected


def test_generated_project_keys_have_the_documented_lengths():
    assert len(formats.generate(formats.PROJECT, long=True)) == len("sk-proj-") + 74 + 8 + 74
    assert len(formats.generate(formats.PROJECT, long=False)) == len("sk-proj-") + 58 + 8 + 58
    assert len(formats.generate(formats.LEGACY)) == 51
    assert len(formats.generate(formats.AZURE)) == 32
    assert len(azure_84()) == 84


def replace_at(secret, index, char):
    return secret[:index] + char + secret[index + 1 :]


MALFORMED = {
    "one character short": (lambda s: s[:-1], "length or body is wrong"),
    "one character long": (lambda s: s + "A", "length or body is wrong"),
    "bad character": (lambda s: replace_at(s, 20, "!"), "characters no OpenAI or Azure key has"),
    "plus sign": (lambda s: replace_at(s, 30, "+"), "characters no OpenAI or Azure key has"),
    "non-ascii letter": (lambda s: replace_at(s, 30, "é"), "characters no OpenAI or Azure key has"),
    "inner space": (lambda s: s[:40] + " " + s[40:], "spaces or line breaks inside it"),
    "inner newline": (lambda s: s[:40] + "\n" + s[40:], "spaces or line breaks inside it"),
    "inner tab": (lambda s: s[:40] + "\t" + s[40:], "spaces or line breaks inside it"),
    "missing marker": (lambda s: s.replace(formats.MARKER, "AAAAAAAA"), "length or body is wrong"),
    "marker removed": (lambda s: s.replace(formats.MARKER, ""), "length or body is wrong"),
}


@pytest.mark.parametrize("label", MALFORMED)
@pytest.mark.parametrize("fmt", [formats.PROJECT, formats.SERVICE_ACCOUNT, formats.ADMIN, formats.LEGACY])
def test_malformed_openai_keys_are_refused_without_echoing_them(fmt, label):
    damage, message = MALFORMED[label]
    secret = damage(formats.generate(fmt))
    with pytest.raises(formats.KeyFormatError) as excinfo:
        formats.check_shape(secret)
    text = str(excinfo.value)
    assert message in text
    assert_no_fragment(secret, text)


@pytest.mark.parametrize(
    "make",
    [
        lambda: formats.generate(formats.AZURE)[:-1],
        lambda: formats.generate(formats.AZURE) + "a",
        lambda: replace_at(formats.generate(formats.AZURE), 3, "g"),
        lambda: azure_84()[:-1],
        lambda: azure_84().replace("JQQJ9", "JQQJ8"),
        lambda: "xk-proj-" + pick(ALNUM, 150),
    ],
)
def test_malformed_azure_or_unknown_keys_are_refused_without_echoing_them(make):
    secret = make()
    with pytest.raises(formats.KeyFormatError) as excinfo:
        formats.check_shape(secret)
    text = str(excinfo.value)
    assert "not a recognised key" in text
    assert f"this one has {len(secret)}" in text
    assert_no_fragment(secret, text)


def test_an_empty_key_is_refused_with_a_request_to_enter_one():
    with pytest.raises(formats.KeyFormatError, match="Enter the API key"):
        formats.check_shape("")


def test_surrounding_whitespace_and_newlines_are_stripped():
    secret = formats.generate()
    assert formats.normalize(f"  {secret}\r\n") == secret
    assert formats.check_shape(formats.normalize(f"\t{secret}\n")) == formats.PROJECT
    assert formats.normalize(None) == ""


@pytest.mark.parametrize(
    "fmt, prefix",
    [
        (formats.PROJECT, "sk-proj-…"),
        (formats.SERVICE_ACCOUNT, "sk-svcacct-…"),
        (formats.ADMIN, "sk-admin-…"),
        (formats.LEGACY, "sk-…"),
        (formats.AZURE, "…"),
    ],
)
def test_hint_shows_the_prefix_and_last_four_characters_only(fmt, prefix):
    secret = formats.generate(fmt)
    assert formats.hint(secret) == prefix + secret[-4:]


def assert_no_fragment(secret, text):
    """The message holds no 8-character run of the secret (beyond the public prefix and marker)."""
    body = secret.replace(formats.MARKER, " ")
    for start in range(len("sk-svcacct-"), len(body) - 8):
        fragment = body[start : start + 8]
        if " " not in fragment:
            assert fragment not in text
