"""The Content-Security-Policy in a real browser: the admin's pages, their JavaScript (the
inline "Add another" rows) and the two-factor pages run under the policy with no
violation at all. Debian's Chromium through Playwright, started the way
tests/browser/test_admin_flow.py does it (its fixtures are reused here)."""

import pytest
from django.db import connections
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.models import Organization
from tests.browser.test_admin_flow import PASSWORD, browser, console_admin, log_in, page  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

# Runs in every page before its own scripts: keeps each violation the page reports.
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  const where = `${e.sourceFile}:${e.lineNumber}`;
  window.__cspViolations.push(`${e.violatedDirective} blocked ${e.blockedURI || "inline"} at ${where}`);
});
"""
# Violation events are queued tasks: let them run before reading the list.
READ_VIOLATIONS = "new Promise((resolve) => setTimeout(() => resolve(window.__cspViolations || []), 0))"


class PolicyWatch:
    """Collects securitypolicyviolation events and CSP console messages, page by page."""

    def __init__(self, browser_page):
        self.page = browser_page
        self.found = []
        browser_page.add_init_script(RECORD_VIOLATIONS)
        browser_page.on("console", self.on_console)
        browser_page.on("pageerror", lambda error: self.found.append(f"{browser_page.url}: script error {error}"))

    def on_console(self, message):
        text = message.text
        if "Content Security Policy" in text or "Refused to" in text:
            self.found.append(f"{self.page.url}: console {message.type}: {text}")

    def check(self):
        """Read the current page's events; call before leaving it."""
        self.page.wait_for_load_state("load")
        self.found += [f"{self.page.url}: {v}" for v in self.page.evaluate(READ_VIOLATIONS)]

    def visit(self, url):
        response = self.page.goto(url)
        assert response.status == 200, (url, response.status)
        assert "default-src 'self'" in response.headers["content-security-policy"]
        self.check()


def totp_code(device):
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    return f"{totp.token():0{device.digits}d}"


def test_the_admin_runs_under_the_content_security_policy_without_a_violation(
    page,  # noqa: F811
    live_server,
    console_admin,  # noqa: F811
    make_key,
):
    key, secret = make_key(name="csp-key")
    org, project = key.organization, key.project
    watch = PolicyWatch(page)
    base = live_server.url

    watch.visit(f"{base}/admin/login/")
    log_in(page, live_server, "carol", PASSWORD)
    watch.check()

    watch.visit(f"{base}/admin/")
    watch.visit(f"{base}/admin/keys/apikey/")
    assert "csp-key" in page.inner_text("#result_list")
    watch.visit(f"{base}/admin/keys/apikey/rotation-report/")
    assert "csp-key" in page.inner_text("#report-rows")
    watch.visit(f"{base}/admin/keys/apikey/{key.pk}/change/")
    assert secret not in page.content()

    # The organization page: its inlines' "Add another" link is the admin's JavaScript.
    watch.visit(f"{base}/admin/accounts/organization/{org.pk}/change/")
    rows = page.locator("#projects-group tr.form-row").count()
    page.locator("#projects-group .add-row a").click()
    assert page.locator("#projects-group tr.form-row").count() == rows + 1
    watch.check()

    watch.visit(f"{base}/admin/accounts/project/{project.pk}/change/")
    watch.visit(f"{base}/admin/accounts/organization/add/")
    page.locator("#id_name").press_sequentially("Policy Org")
    assert page.input_value("#id_slug") == "policy-org"  # prepopulated by the admin's script
    watch.check()

    # Two-factor enrolment: the QR code is an inline SVG, the codes page follows.
    watch.visit(f"{base}/admin/two-factor/")
    assert page.locator("#qr-code svg").count() == 1
    device = TOTPDevice.objects.get(user=console_admin)
    page.fill("#id_otp_token", totp_code(device))
    with page.expect_navigation():
        page.click("#confirm-form input[type=submit]")
    assert page.locator("#recovery-codes li").count() == 10
    watch.check()

    watch.visit(f"{base}/admin/accounts/auditevent/")
    assert "auth.2fa_enabled" in page.inner_text("#result_list")

    assert watch.found == []
    assert Organization.objects.filter(pk=org.pk).exists()
    connections.close_all()  # see test_admin_flow: Playwright's loop got its own connections
