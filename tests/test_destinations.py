"""Where a secret may be sent (console/destinations.py).

The URL rules are table tests. The request-time guard is tested against a real listener on
a loopback port that counts the connections it accepts: a refused request must reach it
with nothing at all. All traffic stays on 127.0.0.1; names that "resolve" elsewhere are
test-only names whose resolver is patched to answer 127.0.0.1.
"""

import asyncio
import ipaddress
import socket
import threading

import httpx2
import openai
import pytest
from django.core.exceptions import ValidationError

from console import destinations
from console.destinations import (
    API,
    WEBHOOK,
    ConfigurationError,
    DestinationError,
    DestinationRefused,
    GuardedSyncTransport,
    GuardedTransport,
    check_allowed_hosts,
    check_destination,
    is_public_address,
    validate_api_base_url,
    validate_azure_endpoint,
    validate_webhook_url,
)

DEFAULT_API_HOSTS = ["api.openai.com", "*.openai.azure.com", "*.cognitiveservices.azure.com"]


class Listener:
    """A TCP listener on 127.0.0.1 that counts every connection made to it and answers an
    HTTP request with an empty OpenAI-style list."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.requests = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            with conn:
                conn.settimeout(2)
                try:
                    data = conn.recv(65536)
                except OSError:
                    continue
                if data[:4] in (b"GET ", b"POST"):
                    self.requests.append(data.split(b"\r\n", 1)[0])
                    body = b'{"object": "list", "data": []}'
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                    )

    def connections(self):
        """Stop serving and return how many connections were made, counting any the
        kernel completed that were not accepted yet."""
        self._stop.set()
        self._thread.join()
        self.sock.setblocking(False)
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                break
            conn.close()
            self.accepted += 1
        self.sock.close()
        return self.accepted


@pytest.fixture
def listener():
    server = Listener()
    yield server
    if not server._stop.is_set():
        server.connections()


@pytest.fixture
def allow(settings):
    """Set CONSOLE_ALLOWED_API_HOSTS to the defaults plus the given entries."""

    def set_entries(*entries, webhook=None):
        settings.CONSOLE_ALLOWED_API_HOSTS = DEFAULT_API_HOSTS + list(entries)
        if webhook is not None:
            settings.CONSOLE_ALLOWED_WEBHOOK_HOSTS = list(webhook)

    set_entries()
    settings.CONSOLE_ALLOWED_WEBHOOK_HOSTS = []
    settings.OPENAI_BASE_URL = "https://api.openai.com/v1"
    return set_entries


@pytest.fixture
def resolves_to_loopback(monkeypatch):
    """Test-only names under .rebind.test resolve to 127.0.0.1 (and only those)."""
    real_async, real_sync = destinations.resolve, destinations.resolve_sync

    async def fake_resolve(host, port):
        if host.endswith(".rebind.test"):
            return ["127.0.0.1"]
        return await real_async(host, port)

    def fake_resolve_sync(host, port):
        if host.endswith(".rebind.test"):
            return ["127.0.0.1"]
        return real_sync(host, port)

    monkeypatch.setattr(destinations, "resolve", fake_resolve)
    monkeypatch.setattr(destinations, "resolve_sync", fake_resolve_sync)


async def _get(url, purpose=API):
    async with httpx2.AsyncClient(transport=GuardedTransport(purpose), timeout=5) as client:
        return await client.get(url)


def get(url, purpose=API):
    return asyncio.run(_get(url, purpose))


# --- The URL rules -------------------------------------------------------------------------

REFUSED = {
    "cloud metadata over http": "http://169.254.169.254/",
    "cloud metadata over https": "https://169.254.169.254/latest/",
    "private address": "http://10.0.0.1/",
    "private address over https": "https://10.0.0.1/v1",
    "redis on loopback": "http://127.0.0.1:6379/",
    "loopback over https, not listed": "https://127.0.0.1:6379/",
    "ipv6 loopback": "https://[::1]/v1",
    "ipv6 link-local": "https://[fe80::1]/",
    "ipv6 zone id": "https://[fe80::1%25eth0]/",
    "unspecified": "https://0.0.0.0/",
    "multicast": "https://224.0.0.1/",
    "shared address space": "https://100.64.0.1/",
    "ipv4-mapped metadata": "https://[::ffff:169.254.169.254]/",
    "ipv4-mapped loopback": "https://[::ffff:127.0.0.1]/",
    "nat64 loopback": "https://[64:ff9b::7f00:1]/",
    "6to4 loopback": "https://[2002:7f00:1::]/",
    "decimal ipv4": "http://2130706433/",
    "decimal ipv4 over https": "https://2130706433/",
    "hex ipv4": "https://0x7f.1/",
    "hex ipv4 whole": "https://0x7f000001/",
    "short ipv4": "https://127.1/",
    "octal ipv4": "https://0177.0.0.1/",
    "name ending in a number": "https://api.openai.com.1/",
    "ftp": "ftp://api.openai.com/",
    "file": "file:///etc/passwd",
    "no scheme": "api.openai.com/v1",
    "plain http to the real api": "http://api.openai.com/v1",
    "userinfo": "https://user:pass@api.openai.com/v1",
    "user only": "https://user@api.openai.com/v1",
    "userinfo hiding the host": "https://api.openai.com@attacker.test/v1",
    "backslash confusion": "https://api.openai.com\\@attacker.test/",
    "fragment": "https://api.openai.com/v1#x",
    "empty fragment": "https://api.openai.com/v1#",
    "query": "https://api.openai.com/v1?x=1",
    "bidi override": "https://\u202egnp.exe",
    "bidi override in a listed host": "https://x\u202e.openai.azure.com/",
    "zero-width joiner": "https://api\u200d.openai.com/v1",
    "control character": "https://api.openai.com\x00/v1",
    "newline": "https://api.openai.com/v1\n",
    "tab in host": "https://api.open\tai.com/v1",
    "space": "https://api.openai.com /v1",
    "idna garbage": "https://xn--zz.openai.azure.com/",
    "idna bad code point": "https://xn--a.openai.azure.com/",
    "label too long": "https://" + "a" * 64 + ".openai.azure.com/",
    "host too long": "https://" + ".".join(["a" * 60] * 5) + ".openai.azure.com/",
    "underscore": "https://a_b.openai.azure.com/",
    "percent in host": "https://api.openai.com%2f.attacker.test/",
    "lookalike suffix": "https://evil-openai.azure.com.attacker.test/",
    "suffix as a label": "https://openai.azure.com.attacker.test/",
    "glued suffix": "https://evilopenai.azure.com/",
    "bare wildcard suffix": "https://openai.azure.com/",
    "bare wildcard suffix 2": "https://cognitiveservices.azure.com/",
    "not listed": "https://attacker.test/v1",
    "trailing dot": "https://api.openai.com./v1",
    "port zero": "https://api.openai.com:0/v1",
    "port out of range": "https://api.openai.com:99999/v1",
    "empty host": "https:///v1",
    "too long": "https://api.openai.com/" + "a" * 2100,
}


@pytest.mark.parametrize("url", REFUSED.values(), ids=REFUSED.keys())
def test_it_refuses_each_unsafe_or_unlisted_destination(allow, url):
    with pytest.raises(DestinationError):
        check_destination(url)


ACCEPTED = {
    "openai": ("https://api.openai.com/v1", "https://api.openai.com/v1"),
    "openai upper case, explicit default port": ("https://API.OpenAI.com:443/v1", "https://api.openai.com/v1"),
    "azure resource": ("https://x.openai.azure.com/", "https://x.openai.azure.com/"),
    "azure two labels deep": ("https://a.b.openai.azure.com", "https://a.b.openai.azure.com"),
    "cognitive services": (
        "https://my-res.cognitiveservices.azure.com/",
        "https://my-res.cognitiveservices.azure.com/",
    ),
    "international name, idna-encoded": ("https://bücher.openai.azure.com/", "https://xn--bcher-kva.openai.azure.com/"),
}


@pytest.mark.parametrize("url, normalised", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_it_accepts_listed_https_hosts_and_normalises_them(allow, url, normalised):
    assert check_destination(url).url == normalised


def test_an_exact_loopback_entry_with_its_port_allows_plain_http_to_that_port_only(allow):
    allow("127.0.0.1:8100", "[::1]:8100")
    assert check_destination("http://127.0.0.1:8100/v1").may_be_internal
    assert check_destination("http://[::1]:8100/v1").url == "http://[::1]:8100/v1"
    assert check_destination("http://[0:0::1]:8100/v1").host == "::1"
    for url in ("http://127.0.0.1:8101/v1", "http://127.0.0.2:8100/v1", "http://localhost:8100/v1"):
        with pytest.raises(DestinationError):
            check_destination(url)


def test_plain_http_needs_a_loopback_ip_entry_with_a_port_not_a_name_or_a_private_address(allow):
    allow("localhost:8100", "10.0.0.5:8100", "127.0.0.1")
    for url in ("http://localhost:8100/", "http://10.0.0.5:8100/", "http://127.0.0.1/"):
        with pytest.raises(DestinationError) as refused:
            check_destination(url)
        assert refused.value.code == "insecure"
    # ... while https to the same exact entries is fine.
    assert check_destination("https://10.0.0.5:8100/").may_be_internal
    assert check_destination("https://127.0.0.1:9443/").may_be_internal


def test_a_name_entry_allows_any_port_but_not_internal_addresses(allow):
    allow("gateway.example.test")
    destination = check_destination("https://gateway.example.test:8443/v1")
    assert destination.port == 8443
    assert not destination.may_be_internal
    assert check_destination("https://gateway.example.test/v1").port == 443


def test_an_exact_entry_with_a_port_allows_that_port_only(allow):
    allow("gateway.example.test:8443")
    assert check_destination("https://gateway.example.test:8443/v1").may_be_internal
    with pytest.raises(DestinationError):
        check_destination("https://gateway.example.test/v1")


def test_a_refusal_tells_the_admin_an_operator_can_list_the_host(allow):
    with pytest.raises(DestinationError) as refused:
        check_destination("https://attacker.test/v1")
    assert str(refused.value) == "attacker.test is not on CONSOLE_ALLOWED_API_HOSTS; an operator can add it there."


@pytest.mark.parametrize(
    "url",
    [
        "https://\u202egnp.exe",
        "https://api.openai.com/v1\u202e",
        "https://api.openai.com/v1\x07",
        "https://api.openai.com/\u200bv1",
    ],
)
def test_invisible_bidi_and_control_characters_anywhere_are_refused_with_a_clear_message(allow, url):
    with pytest.raises(DestinationError) as refused:
        check_destination(url)
    assert "invisible or control characters" in str(refused.value)


def test_a_url_with_credentials_is_refused_with_a_message_saying_to_remove_them(allow):
    for url in ("https://user:pass@api.openai.com/v1", "https://key@api.openai.com:443/v1"):
        with pytest.raises(DestinationError) as refused:
            check_destination(url)
        assert str(refused.value).startswith("Remove the user name and password")


def test_a_trailing_dot_is_refused_with_a_message_saying_to_remove_it(allow):
    with pytest.raises(DestinationError) as refused:
        check_destination("https://x.openai.azure.com./")
    assert str(refused.value) == "Remove the trailing dot from the host name."


def test_a_port_out_of_range_is_refused_with_a_message_saying_so(allow):
    with pytest.raises(DestinationError) as refused:
        check_destination("https://api.openai.com:0/v1")
    assert str(refused.value) == "The port must be a number from 1 to 65535."


def test_it_refuses_a_url_the_http_client_would_read_as_another_host(allow, monkeypatch):
    # Simulate a parser differential: our parser sees api.openai.com, httpx2 sees attacker.test.
    real = destinations.urlsplit
    monkeypatch.setattr(destinations, "urlsplit", lambda url: real(url.replace("attacker.test", "api.openai.com")))
    with pytest.raises(DestinationError):
        check_destination("https://attacker.test/v1")


def test_a_refusal_never_repeats_a_password_from_the_url(allow):
    for url in ("https://admin:hunter2-canary@api.openai.com/v1", "https://hunter2-canary@attacker.test/"):
        with pytest.raises(DestinationError) as refused:
            check_destination(url)
        assert "hunter2-canary" not in str(refused.value)


@pytest.mark.parametrize(
    "address, public",
    [
        ("8.8.8.8", True),
        ("2606:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("fec0::1", False),
        ("ff02::1", False),
        ("::ffff:169.254.169.254", False),
        ("::ffff:8.8.8.8", False),
        ("::127.0.0.1", False),
        ("64:ff9b::a9fe:a9fe", False),
        ("2002:a00:1::", False),
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", False),  # Teredo embedding 10.0.0.1
    ],
)
def test_it_tells_public_addresses_from_internal_ones(address, public):
    assert is_public_address(ipaddress.ip_address(address)) is public


# --- Django validators -------------------------------------------------------------------


def test_the_base_url_validator_says_an_operator_can_add_the_host(allow):
    validate_api_base_url("https://api.openai.com/v1")
    with pytest.raises(ValidationError) as refused:
        validate_api_base_url("https://attacker.test/v1")
    assert refused.value.messages == [
        "attacker.test is not on CONSOLE_ALLOWED_API_HOSTS; an operator can add it there."
    ]
    assert refused.value.code == "not_allowed"


def test_the_azure_endpoint_validator_applies_the_same_rules(allow):
    validate_azure_endpoint("https://my-resource.openai.azure.com/")
    for url in ("http://my-resource.openai.azure.com/", "https://openai.azure.com/", "https://169.254.169.254/"):
        with pytest.raises(ValidationError):
            validate_azure_endpoint(url)


def test_the_webhook_validator_with_an_empty_list_takes_any_public_https_host(allow):
    validate_webhook_url("https://hooks.example.test/services/T0/B0?token=abc")
    for url in (
        "http://hooks.example.test/",
        "https://10.0.0.1/hook",
        "https://127.0.0.1:8080/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://2130706433/hook",
        "https://u:p@hooks.example.test/",
        "https://hooks.example.test/#x",
    ):
        with pytest.raises(ValidationError):
            validate_webhook_url(url)


def test_the_webhook_validator_with_a_list_takes_listed_hosts_only(allow):
    allow(webhook=["hooks.slack.com"])
    validate_webhook_url("https://hooks.slack.com/services/T0/B0")
    with pytest.raises(ValidationError) as refused:
        validate_webhook_url("https://hooks.example.test/")
    assert "CONSOLE_ALLOWED_WEBHOOK_HOSTS" in refused.value.messages[0]


# --- The settings ------------------------------------------------------------------------


def test_the_default_settings_pass_the_check(allow):
    assert check_allowed_hosts() == []


@pytest.mark.parametrize(
    "entry",
    ["https://api.openai.com", "*.com", "*.x.com:443", "a*.x.com", "api.*.com", "::1", "[::1", "host:0",
     "host:http", "127.1", "2130706433", "bad host", "x\u202e.com", "api.openai.com/v1", "user@host", ""],
)  # fmt: skip
def test_a_malformed_api_entry_is_check_error_e001_and_refuses_everything(settings, entry):
    settings.CONSOLE_ALLOWED_API_HOSTS = ["api.openai.com", entry]
    (error,) = check_allowed_hosts()
    assert error.id == "console.E001"
    assert "CONSOLE_ALLOWED_API_HOSTS is malformed" in error.msg
    with pytest.raises(ConfigurationError):
        check_destination("https://api.openai.com/v1")


def test_a_malformed_webhook_entry_is_check_error_e002(settings):
    settings.CONSOLE_ALLOWED_WEBHOOK_HOSTS = ["*.com"]
    (error,) = check_allowed_hosts()
    assert error.id == "console.E002"


def test_an_openai_base_url_off_the_list_is_check_warning_w001(allow, settings):
    settings.OPENAI_BASE_URL = "http://127.0.0.1:8100/v1"
    (warning,) = check_allowed_hosts()
    assert warning.id == "console.W001"
    allow("127.0.0.1:8100")
    assert check_allowed_hosts() == []


def test_importing_the_module_registers_the_check_with_django():
    from django.core.checks import registry

    assert check_allowed_hosts in registry.registry.get_checks()


# --- The request-time guard ----------------------------------------------------------------


def test_an_exact_loopback_entry_gets_through_to_the_listener(allow, listener):
    allow(f"127.0.0.1:{listener.port}")
    response = get(f"http://127.0.0.1:{listener.port}/v1/models")
    assert response.status_code == 200
    assert listener.connections() == 1
    assert listener.requests == [b"GET /v1/models HTTP/1.1"]


def test_a_listed_name_that_resolves_to_loopback_is_refused_before_connecting(allow, listener):
    allow("localhost")  # listed as a name: public addresses only
    with pytest.raises(DestinationRefused) as refused:
        get(f"https://localhost:{listener.port}/v1/models")
    assert "resolves to a private, loopback" in str(refused.value)
    assert listener.connections() == 0


def test_a_name_rebound_to_loopback_at_request_time_is_refused_before_connecting(allow, listener, resolves_to_loopback):
    allow("*.rebind.test")
    assert check_destination(f"https://api.rebind.test:{listener.port}/v1").host == "api.rebind.test"  # input time
    with pytest.raises(DestinationRefused):
        get(f"https://api.rebind.test:{listener.port}/v1/models")  # send time
    assert listener.connections() == 0


def test_an_exact_name_entry_may_resolve_to_loopback_and_connects_to_the_checked_address(
    allow, listener, resolves_to_loopback
):
    # gateway.rebind.test exists only in the patched resolver: reaching the listener
    # proves the connection went to the address the guard resolved and checked.
    allow(f"gateway.rebind.test:{listener.port}")
    with pytest.raises(httpx2.TransportError) as failed:
        get(f"https://gateway.rebind.test:{listener.port}/v1/models")  # the listener speaks no TLS
    assert not isinstance(failed.value, DestinationRefused)
    assert listener.connections() == 1


def test_the_request_url_is_checked_again_at_send_time(allow, listener):
    # The exact entry would let the connection through; plain http to a name is what is refused.
    allow(f"localhost:{listener.port}")
    with pytest.raises(DestinationRefused) as refused:
        get(f"http://localhost:{listener.port}/v1/models")
    assert "Use https://" in str(refused.value)
    assert listener.connections() == 0


def test_an_unlisted_loopback_port_is_refused_at_send_time(allow, listener):
    with pytest.raises(DestinationRefused):
        get(f"http://127.0.0.1:{listener.port}/v1/models")
    assert listener.connections() == 0


def test_the_openai_sdk_reports_a_refusal_as_a_connection_error_caused_by_it(allow, listener):
    allow("localhost")

    async def list_models():
        async with httpx2.AsyncClient(transport=GuardedTransport()) as http:
            client = openai.AsyncOpenAI(
                api_key="placeholder", base_url=f"https://localhost:{listener.port}/v1", max_retries=0, http_client=http
            )
            await client.models.list()

    with pytest.raises(openai.APIConnectionError) as failed:
        asyncio.run(list_models())
    assert isinstance(failed.value.__cause__, DestinationRefused)
    assert listener.connections() == 0


def test_the_sync_transport_refuses_a_name_resolving_to_loopback_and_passes_an_exact_entry(allow, listener):
    allow(f"127.0.0.1:{listener.port}", webhook=["localhost"])
    with httpx2.Client(transport=GuardedSyncTransport(WEBHOOK), timeout=5) as client:
        with pytest.raises(DestinationRefused):
            client.post(f"https://localhost:{listener.port}/hook", json={})
    with httpx2.Client(transport=GuardedSyncTransport(API), timeout=5) as client:
        assert client.get(f"http://127.0.0.1:{listener.port}/v1/models").status_code == 200
    assert listener.connections() == 1


def test_the_sync_transport_checks_the_request_url_again_at_send_time(allow, listener):
    allow(f"localhost:{listener.port}")
    with httpx2.Client(transport=GuardedSyncTransport(API), timeout=5) as client:
        with pytest.raises(DestinationRefused) as refused:
            client.get(f"http://localhost:{listener.port}/v1/models")
    assert "Use https://" in str(refused.value)
    assert listener.connections() == 0


def test_a_webhook_to_a_name_resolving_to_loopback_is_refused_with_an_empty_list(allow, listener):
    with httpx2.Client(transport=GuardedSyncTransport(WEBHOOK), timeout=5) as client:
        with pytest.raises(DestinationRefused):
            client.post(f"https://localhost:{listener.port}/hook", json={})
    assert listener.connections() == 0


def test_a_name_that_does_not_resolve_is_a_plain_connect_error_not_a_refusal(allow, monkeypatch):
    async def no_such_name(host, port):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(destinations, "resolve", no_such_name)
    with pytest.raises(httpx2.ConnectError) as failed:
        get("https://api.openai.com/v1/models")
    assert not isinstance(failed.value, DestinationRefused)


def test_a_resolver_that_hangs_ends_in_a_connect_timeout(allow, monkeypatch):
    async def hang(host, port):
        await asyncio.Event().wait()

    monkeypatch.setattr(destinations, "resolve", hang)

    async def fetch():
        timeout = httpx2.Timeout(5, connect=0.2)
        async with httpx2.AsyncClient(transport=GuardedTransport(), timeout=timeout) as client:
            await client.get("https://api.openai.com/v1/models")

    with pytest.raises(httpx2.ConnectTimeout):
        asyncio.run(asyncio.wait_for(fetch(), 30))  # the bound only keeps a broken guard from hanging the suite


def test_a_guarded_transport_refuses_a_proxy_or_a_unix_socket():
    for option in ({"proxy": "http://127.0.0.1:3128"}, {"uds": "/tmp/x.sock"}):
        with pytest.raises(TypeError):
            GuardedTransport(**option)
        with pytest.raises(TypeError):
            GuardedSyncTransport(**option)
