"""Error reports (the DEBUG 500 page, error e-mails) that never show a secret.

Django's SafeExceptionReporterFilter cleanses only when DEBUG is False, and only what a
view marked with sensitive_post_parameters / sensitive_variables. `make run` runs with
DEBUG=true, and a 500 on a form that takes a secret would print that secret on the page.
These classes cleanse always, DEBUG or not:

- POST and GET parameters named `secret` or ending in `-secret` (inline rows such as
  `api_keys-0-secret`), `password…` (`password`, `password1`, `old_password`,
  `new_password2`), and `otp_token`;
- any parameter, local variable, exception message or setting whose value is
  key-shaped (console.leakguard.find_key_shaped), and local variables with those names;
- settings as Django does (names with KEY, SECRET, PASS, TOKEN, …), plus the password of
  any URL-shaped setting (redis://:pw@host);
- finally the rendered page or text itself, so a key-shaped value reaching it by another
  route (a repr, a template) is still removed.

Settings: DEFAULT_EXCEPTION_REPORTER_FILTER = "console.error_reports.SecretSafeExceptionReporterFilter"
and DEFAULT_EXCEPTION_REPORTER = "console.error_reports.SecretSafeExceptionReporter".
"""

import re

from django.http import QueryDict
from django.utils.datastructures import MultiValueDict
from django.views.debug import ExceptionReporter, SafeExceptionReporterFilter

from console.leakguard import find_key_shaped, redact_key_shaped

SECRET_PARAMETER = re.compile(r"(?:^|[-_])(?:secret|password\w*|otp_token)$", re.IGNORECASE)
URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.\-]*://[^/@:\s]*:)[^/@\s]+(?=@)", re.IGNORECASE)


def is_secret_name(name):
    """True for a parameter or variable name that holds a secret by its name alone.
    `secret_env` (the NAME of a variable) is not one; `api_keys-0-secret` is."""
    return isinstance(name, str) and SECRET_PARAMETER.search(name) is not None


class SecretSafeExceptionReporterFilter(SafeExceptionReporterFilter):
    """Cleanses in DEBUG too (see the module docstring for what)."""

    def is_active(self, request):
        # Django's filter switches itself off in DEBUG; a secret on a developer's screen,
        # in a screenshot or a pasted traceback is still a leaked secret.
        return True

    def cleanse_value(self, name, value):
        """`value` with secrets replaced; dicts, lists and MultiValueDicts recursively."""
        if is_secret_name(name):
            return self.cleansed_substitute
        if isinstance(value, (str, bytes)):
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            return self.cleansed_substitute if find_key_shaped(text) else value
        if isinstance(value, MultiValueDict):
            return self.cleanse_multivaluedict(value)
        if isinstance(value, dict):
            return {k: self.cleanse_value(k, v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.cleanse_value("", v) for v in value)
        return value

    def cleanse_multivaluedict(self, multivaluedict):
        cleansed = multivaluedict.copy()  # a QueryDict copy is mutable
        for key, values in multivaluedict.lists():
            cleansed.setlist(key, [self.cleanse_value(key, v) for v in values])
        return cleansed

    def get_cleansed_multivaluedict(self, request, multivaluedict):
        return self.cleanse_multivaluedict(super().get_cleansed_multivaluedict(request, multivaluedict))

    def get_post_parameters(self, request):
        if request is None:
            return {}
        return self.cleanse_multivaluedict(super().get_post_parameters(request))

    def get_get_parameters(self, request):
        if request is None or not hasattr(request, "GET"):
            return QueryDict()
        return self.cleanse_multivaluedict(request.GET)

    def cleanse_setting(self, key, value):
        cleansed = super().cleanse_setting(key, value)
        if isinstance(cleansed, str):  # lazy strings too
            text = str(cleansed)
            if find_key_shaped(text):
                return self.cleansed_substitute
            without_password = URL_PASSWORD.sub(lambda m: m["head"] + self.cleansed_substitute, text)
            return cleansed if without_password == text else without_password
        return cleansed

    def get_traceback_frame_variables(self, request, tb_frame):
        variables = super().get_traceback_frame_variables(request, tb_frame)
        return {name: self.cleanse_frame_variable(name, value) for name, value in variables}.items()

    def cleanse_frame_variable(self, name, value):
        value = self.cleanse_value(name, value)
        if value is self.cleansed_substitute or isinstance(value, (str, bytes, dict, list, tuple, MultiValueDict)):
            return value
        try:
            shown = repr(value)
        except Exception:  # a broken __repr__ is Django's to report, not ours to raise
            return value
        return self.cleansed_substitute if find_key_shaped(shown) else value


class SecretSafeExceptionReporter(ExceptionReporter):
    """Uses the filter for GET parameters and the exception message too, and removes any
    key-shaped value left in the rendered report."""

    def get_traceback_data(self):
        data = super().get_traceback_data()
        if self.request is not None and "request_GET_items" in data:
            data["request_GET_items"] = self.filter.get_get_parameters(self.request).items()
        if "request_insecure_uri" in data:
            data["request_insecure_uri"] = self.cleanse_uri(data["request_insecure_uri"])
        if "exception_value" in data:
            data["exception_value"] = redact_key_shaped(data["exception_value"])
        return data

    def cleanse_uri(self, uri):
        path, _, query = str(uri).partition("?")
        if not query:
            return redact_key_shaped(path)
        params = self.filter.cleanse_multivaluedict(QueryDict(query))
        return redact_key_shaped(path) + "?" + params.urlencode(safe="*")

    def get_traceback_html(self):
        return redact_key_shaped(str(super().get_traceback_html()))

    def get_traceback_text(self):
        return redact_key_shaped(str(super().get_traceback_text()))
