"""console/leakguard.py: the key-shape detector, the validators for plain text fields,
and GuardedCommand, the base of every management command."""

import io

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError

from console import leakguard
from console.leakguard import (
    KEY_SHAPED_MESSAGE,
    GuardedCommand,
    find_key_shaped,
    redact_key_shaped,
    refuse_key_shaped,
    refuse_unsafe_multiline_text,
    refuse_unsafe_text,
)
from keys import formats

SHAPES = [
    (formats.PROJECT, True),
    (formats.PROJECT, False),
    (formats.SERVICE_ACCOUNT, True),
    (formats.SERVICE_ACCOUNT, False),
    (formats.ADMIN, True),
    (formats.LEGACY, True),
    (formats.AZURE, True),
]


def embeddings(key):
    return [key, f"Bearer {key}", f"x{key}y", f"name: {key}\n", f"{key},{key}", f"«{key}»", f"https://h/?k={key}"]


# --- the detector ------------------------------------------------------------------------
@pytest.mark.parametrize("fmt, long", SHAPES)
def test_it_finds_every_key_shape_anywhere_in_a_value(fmt, long):
    for _ in range(20):  # random bodies: some start or end with '-' or '_'
        key = formats.generate(fmt, long=long)
        for text in embeddings(key):
            found = find_key_shaped(text)
            assert found is not None, (fmt, text.replace(key, "<key>"))


def test_it_finds_an_openai_key_by_its_marker_even_with_the_prefix_cut_off():
    key = formats.generate(formats.PROJECT)
    assert find_key_shaped("note " + key[len("sk-proj-") :]).rule == "marker"


def test_it_finds_an_sk_key_without_the_marker():
    key = "sk-" + formats.generate(formats.PROJECT).replace(formats.MARKER, "")[8:60]
    assert find_key_shaped(f"Bearer {key}").rule == "sk-run"


def test_it_finds_an_azure_84_character_key():
    # The 84-character shape, built at run time from formats' own pattern pieces.
    import secrets
    import string

    alnum = string.ascii_letters + string.digits

    def body(n):
        return "".join(secrets.choice(alnum) for _ in range(n))

    key = body(52) + "JQQJ99" + body(1) + "A" + body(16) + "b" + body(7)
    assert formats.check_shape(key) == formats.AZURE
    assert find_key_shaped(f"x{key}y").rule in ("azure-84", "azure-hex")


@pytest.mark.parametrize(
    "text",
    [
        "",
        None,
        "Chatbot production",
        "sk-abc...def",  # the API's redacted_value
        "sk-proj-…Ab3d",  # our own hint
        "sk-VKMIs***…wjh3",  # a masked key in a 401 body
        "sk-learn-classifier-pipeline-for-production-use",
        "disk-Backup-2024-Production-Servers-East-and-West",  # "sk-" inside a word
        "da39a3ee5e6b4b0d3255bfef95601890afd80709",  # a SHA-1 digest: 40 hex, not 32
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",  # SHA-256
        "proj_Chatbot12345",
        "org-AcmeAcme1234",
        "https://example-resource.openai.azure.com",
        "550e8400-e29b-41d4-a716-446655440000",  # a UUID
    ],
)
def test_ordinary_and_redacted_values_are_not_key_shaped(text):
    assert find_key_shaped(text) is None


def test_redact_removes_every_key_and_keeps_the_rest():
    one, two = formats.generate(), formats.generate(formats.AZURE)
    text = f"first x{one}y then {two}."
    cleaned = redact_key_shaped(text)
    assert one not in cleaned and two not in cleaned
    assert cleaned == f"first {leakguard.REDACTED} then {leakguard.REDACTED}."


@pytest.mark.parametrize(
    "text",
    [
        "sk-" * 50_000,
        formats.MARKER * 50_000,
        ("sk-" + "a" * 31 + " ") * 5_000,
        ("0" * 31 + "g") * 5_000,
        "a" * 200_000,
        "-" * 100_000 + formats.MARKER + "!" * 100_000,
    ],
)
def test_the_detector_and_redactor_handle_hostile_inputs_with_linear_work(text):
    # Not a timer: the answer must be right for inputs that make a backtracking
    # pattern explode; a regression would hang here (pytest-timeout / CI limit).
    assert (find_key_shaped(text) is None) == (redact_key_shaped(text) == text)


# --- validators --------------------------------------------------------------------------
@pytest.mark.parametrize("fmt, long", SHAPES)
def test_refuse_key_shaped_refuses_without_echoing_the_value(fmt, long):
    key = formats.generate(fmt, long=long)
    for text in embeddings(key):
        with pytest.raises(ValidationError) as refused:
            refuse_key_shaped(text)
        assert refused.value.messages == [KEY_SHAPED_MESSAGE]
        assert key not in str(refused.value)


def test_refuse_key_shaped_accepts_ordinary_text():
    refuse_key_shaped("Chatbot production (sk-proj-…Ab3d)")


@pytest.mark.parametrize(
    "text, problem",
    [
        ("evil\u202egnp.exe", "bidirectional-text control characters"),
        ("a\u2066b\u2069", "bidirectional-text control characters"),
        ("a\u200fb", "bidirectional-text control characters"),
        ("red \x1b[31mtext\x1b[0m", "terminal escape sequences"),
        ("two\r\nlines", "line breaks"),
        ("two\nlines", "line breaks"),
        ("a\x00b", "control characters"),
        ("a\tb", "control characters"),
        ("a\x85b", "control characters"),  # C1 (NEL)
        ("a\x7fb", "control characters"),
    ],
)
def test_refuse_unsafe_text_names_the_problem(text, problem):
    with pytest.raises(ValidationError, match=problem):
        refuse_unsafe_text(text)


def test_refuse_unsafe_text_accepts_plain_unicode():
    refuse_unsafe_text("Équipe données — 東京 prod (v2)")


def test_multiline_text_allows_line_breaks_but_not_escapes_or_bidi():
    refuse_unsafe_multiline_text("a@example.com\r\nb@example.com\n")
    for text in ("a@example.com\x1b[2J", "a\u202e@example.com"):
        with pytest.raises(ValidationError):
            refuse_unsafe_multiline_text(text)


# --- GuardedCommand ----------------------------------------------------------------------
class EchoCommand(GuardedCommand):
    help = "A command that echoes its --name in an error, like many do."

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True)
        parser.add_argument("--kind", choices=["a", "b"], default="a")

    def handle(self, *args, **options):
        raise CommandError(f"no organization “{options['name']}”")


def run_from_argv(argv, capsys):
    command = EchoCommand(stdout=io.StringIO(), stderr=io.StringIO())
    with pytest.raises(SystemExit) as exited:
        command.run_from_argv(["manage.py", "echo", *argv])
    captured = capsys.readouterr()
    return exited.value.code, captured.out + captured.err + command.stderr._out.getvalue()


@pytest.mark.parametrize(
    "argv",
    [
        lambda key: ["--name", key],
        lambda key: ["--name", f"Bearer {key}"],
        lambda key: [f"--name=x{key}y"],
        lambda key: ["--name", "ok", "--kind", key],  # argparse would echo an invalid choice
        lambda key: ["--name", "ok", key],  # an unrecognised argument, echoed by argparse
    ],
)
def test_a_guarded_command_refuses_a_key_anywhere_in_argv_without_echoing_it(argv, capsys):
    key = formats.generate()
    code, output = run_from_argv(argv(key), capsys)
    assert code != 0
    assert "Refusing a key-shaped value on the command line" in output
    assert key not in output and key[20:60] not in output


def test_a_guarded_command_refuses_through_call_command_too():
    key = formats.generate()
    with pytest.raises(CommandError) as refused:
        call_command(EchoCommand(), "--name", f"Bearer {key}")
    assert "Refusing a key-shaped value" in str(refused.value)
    assert key not in str(refused.value)


def test_a_command_error_never_echoes_a_key_shaped_value():
    key = formats.generate(formats.AZURE)
    command = EchoCommand()
    with pytest.raises(CommandError) as refused:
        command.execute(name=f"prefix {key}", kind="a", skip_checks=True, no_color=True, force_color=False)
    assert key not in str(refused.value)
    assert f"no organization “prefix {leakguard.REDACTED}”" == str(refused.value)


def test_ordinary_arguments_still_reach_the_command(capsys):
    code, output = run_from_argv(["--name", "Chatbot prod"], capsys)
    assert code == 1
    assert "no organization “Chatbot prod”" in output


def test_the_refusal_message_can_say_where_the_secret_goes_instead(capsys):
    class AddThing(EchoCommand):
        argv_refusal = "Put the key in $THING_KEY instead."

    key = formats.generate()
    command = AddThing(stdout=io.StringIO(), stderr=io.StringIO())
    with pytest.raises(SystemExit):
        command.run_from_argv(["manage.py", "add_thing", "--name", key])
    assert "Put the key in $THING_KEY instead." in capsys.readouterr().err


def test_a_key_after_a_percent_escape_or_percent_encoded_is_found_and_redacted():
    key = formats.generate(formats.AZURE)
    for text in (
        f"https://h.example.com/?auth=Bearer%20{key}",
        "https://h.example.com/?k=" + "".join(f"%{ord(c):02x}" for c in formats.generate(formats.LEGACY)),
    ):
        assert find_key_shaped(text) is not None
        assert find_key_shaped(redact_key_shaped(text)) is None
    assert key not in redact_key_shaped(f"a%20{key} and b")


@pytest.mark.parametrize(
    "arg, refused", [("sk-proj-abc", True), ("sk-abc", True), ("sk-proj-…Ab3d", False), ("task-x", False)]
)
def test_on_the_command_line_even_the_start_of_a_key_is_refused_but_not_a_hint(arg, refused):
    assert leakguard.is_secret_argument(arg) is refused


def test_the_form_renderer_never_re_displays_a_key_shaped_value():
    from django import forms

    class NameForm(forms.Form):
        name = forms.CharField(max_length=20)

    key = formats.generate(formats.SERVICE_ACCOUNT)
    form = NameForm(data={"name": f"Bearer {key}"}, renderer=leakguard.GuardedFormRenderer())
    assert not form.is_valid()
    html = str(form)
    assert key not in html and leakguard.REDACTED in html
    assert "at most 20 characters" in html  # the rest of the form is rendered as usual


def test_whatever_a_guarded_command_writes_goes_out_without_a_key(capsys):
    key = formats.generate(formats.ADMIN)

    class Chatty(GuardedCommand):
        def handle(self, *args, **options):
            self.stdout.write(f"upstream said: Bearer {key}")
            self.stderr.write(f"warning about x{key}y")

    out, err = io.StringIO(), io.StringIO()
    call_command(Chatty(), stdout=out, stderr=err)
    assert out.getvalue() == f"upstream said: Bearer {leakguard.REDACTED}\n"
    assert key not in err.getvalue() and leakguard.REDACTED in err.getvalue()
    Chatty().run_from_argv(["manage.py", "chatty"])
    captured = capsys.readouterr()
    assert key not in captured.out + captured.err
    assert f"upstream said: Bearer {leakguard.REDACTED}" in captured.out
