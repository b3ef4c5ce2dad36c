"""The REST API's docs page (Swagger UI from the console's own static files) and the page
that shows a new API token once, in Chromium under the console's Content-Security-Policy:
they render with no violation. Fixtures from tests/browser/test_admin_flow.py."""

import pytest

from api.models import ApiToken
from tests.browser.test_admin_flow import PASSWORD, browser, console_admin, log_in, page  # noqa: F401
from tests.browser.test_csp import PolicyWatch

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


def test_the_api_docs_and_the_new_token_page_render_under_the_policy(page, live_server, console_admin):  # noqa: F811
    watch = PolicyWatch(page)
    base = live_server.url

    watch.visit(f"{base}/api/v1/docs")
    page.wait_for_selector("#swagger-ui .opblock", timeout=15_000)  # the operations are drawn
    assert "/api/v1/keys/{key_id}/status" in page.inner_text("#swagger-ui")
    watch.check()

    log_in(page, live_server, "carol", PASSWORD)
    watch.visit(f"{base}/admin/api/apitoken/add/")
    page.fill("#id_name", "browser token")
    page.click("input[name=_save]")
    page.wait_for_selector("#api-token")
    shown = page.input_value("#api-token")
    token = ApiToken.objects.get(name="browser token")
    assert shown.startswith(token.prefix) and len(shown) == 44
    watch.check()
    watch.visit(f"{base}/admin/api/apitoken/")
    assert shown not in page.content()
    assert watch.found == []
