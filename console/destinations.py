"""Where a secret may be sent: the destination allow-lists and the guard that enforces them.

An API key is only ever sent to a destination an operator allowed in the environment,
never to one a console admin typed: a base URL or Azure endpoint is checked when it is
entered (form and model validators) and again for every request (the guarded httpx2
transport), and the address the host name resolves to is checked at connect time, so a
name that later resolves somewhere internal (DNS rebinding) is refused too.

The allow-lists (settings, from the environment):

    CONSOLE_ALLOWED_API_HOSTS      default "api.openai.com,*.openai.azure.com,*.cognitiveservices.azure.com"
    CONSOLE_ALLOWED_WEBHOOK_HOSTS  default "" (any public https host)

Entries, case-insensitive, comma-separated:

    api.openai.com       a host name: that host, https, any port; it must resolve to public
                         addresses only.
    *.openai.azure.com   a wildcard: any host one or more labels below the suffix (never the
                         bare suffix), https, any port, public addresses only.
    gateway.corp:8443    an exact entry: a host (name or IP literal) with a port, or an IP
    127.0.0.1:8100       literal alone (then any port). The operator named this origin, so it
    [::1]:8100           may be or resolve to a private/loopback address. Plain http is
    10.0.0.5             allowed only for an exact entry whose host is a loopback IP literal
                         and that names its port (the demo sandbox, tests).

A name or wildcard entry does not pin the port: the host is trusted and its addresses must
be public, so a port widens nothing. Only exact entries reach internal addresses, and only
the origin they name. An empty CONSOLE_ALLOWED_API_HOSTS allows no API destination at all.

The rules for a URL (`check_destination`):

- https only; http only for a loopback IP literal listed with its port (above); no other scheme.
- No userinfo (`user:pass@`): the key travels in a header, a password in a URL leaks into logs.
- No fragment. A base URL (API) takes no query string either; a webhook URL may have one.
- No whitespace, control (Cc), format (Cf: U+202E and other bidi overrides) characters or
  backslashes anywhere; at most 2,048 characters.
- Host names: IDNA-encoded (`idna`, as httpx2 does), every label letters/digits/hyphens, at
  most 63 characters per label and 253 in all, no trailing dot (write the name without it).
- IPv4 only as four decimal numbers: `2130706433`, `0x7f.1`, `127.1`, `0177.0.0.1` and any
  name ending in a numeric label are refused, because resolvers read them as 127.0.0.1.
  IPv6 in brackets, without a zone. Private, loopback, link-local, multicast, reserved,
  shared and unspecified addresses (IPv4-mapped, 6to4, Teredo and NAT64 forms included)
  are refused unless that exact address is listed.
- The host (and port) must be on the purpose's allow-list; for webhooks an empty list
  means any host with a public address.

At request time `GuardedTransport` (async; `GuardedSyncTransport` for sync) re-checks each
request URL (query allowed) and, at connect time, resolves the host itself, checks every
address it gets (all must be public unless the matched entry is exact) and connects to the
checked address, so there is no second lookup for an attacker's DNS to answer differently.
TLS still verifies the certificate against the host name. A refusal raises
`DestinationRefused`, an `httpx2.ConnectError` (the openai SDK turns it into
`APIConnectionError` with the refusal as `__cause__`). Messages never contain the URL as
typed (it may hold a password), only a validated host name.
"""

import asyncio
import functools
import ipaddress
import re
import socket
import unicodedata
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio
import httpcore2
import httpx2
import idna
from django.conf import settings
from django.core.checks import Error, Warning, register
from django.core.exceptions import ValidationError

API = "api"
WEBHOOK = "webhook"
SETTING = {API: "CONSOLE_ALLOWED_API_HOSTS", WEBHOOK: "CONSOLE_ALLOWED_WEBHOOK_HOSTS"}

MAX_URL_LENGTH = 2048
MAX_HOST_LENGTH = 253
LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
DOTTED_QUAD = re.compile(
    r"^(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}$"
)
# WHATWG URL: a host whose last label is a number is parsed as IPv4 (inet_aton does the same).
NUMERIC_LABEL = re.compile(r"^(?:0[xX][0-9a-fA-F]*|[0-9]+)$")
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
LOOPBACK_NETWORKS = (ipaddress.IPv4Network("127.0.0.0/8"), ipaddress.IPv6Network("::1/128"))


class DestinationError(ValueError):
    """A URL is not an allowed destination. `str(e)` is a message for the person who typed
    it (it never repeats the URL, only a validated host); `code` is a short reason."""

    def __init__(self, message, code="not_allowed"):
        super().__init__(message)
        self.code = code


class ConfigurationError(DestinationError):
    """An allow-list setting is malformed. Everything is refused until it is fixed."""

    def __init__(self, message):
        super().__init__(message, code="misconfigured")


class DestinationRefused(httpx2.ConnectError):
    """A request was stopped before any byte left: its URL or the address its host resolved
    to is not allowed. A ConnectError so the openai SDK reports APIConnectionError (with
    this as `__cause__`); `reason` is the same text as the message."""

    def __init__(self, message, *, request=None):
        super().__init__(message, request=request)
        self.reason = message


# --- Allow-list entries ------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One parsed allow-list entry. `kind` is "name", "wildcard" or "exact"; `host` is the
    normalised host (wildcards: the suffix); `port` is None for any port."""

    kind: str
    host: str
    port: int | None = None
    text: str = ""

    @property
    def is_loopback_ip(self):
        ip = _ip_or_none(self.host)
        return ip is not None and any(ip in net for net in LOOPBACK_NETWORKS)

    def matches(self, host, port):
        if self.port is not None and port != self.port:
            return False
        if self.kind == "wildcard":
            return host.endswith("." + self.host)
        return host == self.host


def parse_entry(text):
    """Parse one allow-list entry, or raise ConfigurationError saying what is wrong."""
    raw = text.strip().lower()
    where = f"entry {text.strip()!r}"
    if not raw:
        raise ConfigurationError("an entry is empty (check for doubled or trailing commas)")
    if "://" in raw or "/" in raw or "@" in raw:
        raise ConfigurationError(f"{where} is a URL; list host names or host:port only")
    if raw.startswith("*."):
        if ":" in raw:
            raise ConfigurationError(f"{where}: a wildcard cannot carry a port")
        suffix = _entry_host(raw[2:], where)
        if _ip_or_none(suffix) is not None or "." not in suffix:
            raise ConfigurationError(f"{where}: a wildcard needs a domain of two or more labels")
        return Entry("wildcard", suffix, None, text.strip())
    if "*" in raw:
        raise ConfigurationError(f"{where}: '*' is allowed only as the whole first label ('*.example.com')")
    port = None
    if raw.startswith("["):
        close = raw.find("]")
        if close < 0:
            raise ConfigurationError(f"{where}: unclosed '['")
        host_text, rest = raw[1:close], raw[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ConfigurationError(f"{where}: expected ':port' after ']'")
            port = _entry_port(rest[1:], where)
        if _ip_or_none(host_text) is None or ":" not in host_text:
            raise ConfigurationError(f"{where}: brackets are for IPv6 addresses only")
    elif raw.count(":") == 1:
        host_text, port_text = raw.split(":")
        port = _entry_port(port_text, where)
    elif ":" in raw:
        raise ConfigurationError(f"{where}: write an IPv6 address in brackets, e.g. [::1]:8100")
    else:
        host_text = raw
    host = _entry_host(host_text, where)
    exact = port is not None or _ip_or_none(host) is not None
    return Entry("exact" if exact else "name", host, port, text.strip())


def _entry_port(text, where):
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigurationError(f"{where}: the port must be a number from 1 to 65535")
    return int(text)


def _entry_host(text, where):
    try:
        host, _ip = normalise_host(text)
    except DestinationError as e:
        raise ConfigurationError(f"{where}: {str(e).rstrip('.')}") from None
    return host


@functools.lru_cache(maxsize=16)
def _parse_list(entries):
    return tuple(parse_entry(e) for e in entries)


def allow_list(purpose=API):
    """The parsed entries of the purpose's setting (cached per value, so overriding the
    setting in a test takes effect). Raises ConfigurationError naming the setting."""
    name = SETTING[purpose]
    value = getattr(settings, name, None)
    if value is None:
        value = []
    if isinstance(value, str):
        value = [part for part in value.split(",")]
    try:
        return _parse_list(tuple(value))
    except ConfigurationError as e:
        raise ConfigurationError(f"{name} is malformed: {e}. Nothing is sent until it is fixed.") from None


# --- Hosts and addresses -----------------------------------------------------------------


def _ip_or_none(host):
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def is_public_address(ip):
    """True for an address on the public internet: not private, loopback, link-local,
    multicast, reserved, shared (100.64/10), unspecified, or an IPv6 form that embeds
    such an IPv4 address (IPv4-mapped, 6to4, Teredo, NAT64)."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = [ip.ipv4_mapped, ip.sixtofour]
        if ip.teredo:
            embedded.append(ip.teredo[1])
        if ip in NAT64:
            embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if any(e is not None and not is_public_address(e) for e in embedded):
            return False
        if ip.is_site_local or ip.ipv4_mapped is not None:
            return False
    return ip.is_global and not (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved or ip.is_unspecified
    )


def normalise_host(host):
    """(ascii host, ip or None) for a host as written in a URL or an entry (IPv6 without
    brackets). Raises DestinationError for anything a resolver or HTTP client could read
    differently from the way it looks."""
    if not host:
        raise DestinationError("The URL has no host.", code="invalid")
    if _has_invisible(host) or "%" in host or "\\" in host:
        raise DestinationError("The host contains characters that are not allowed.", code="invalid")
    if ":" in host:
        ip = _ip_or_none(host)
        if not isinstance(ip, ipaddress.IPv6Address):
            raise DestinationError("The host is not a valid IPv6 address.", code="invalid")
        return ip.compressed, ip
    host = host.lower()
    if host.endswith("."):
        raise DestinationError("Remove the trailing dot from the host name.", code="invalid")
    labels = host.split(".")
    if NUMERIC_LABEL.match(labels[-1]):
        if DOTTED_QUAD.match(host):
            ip = ipaddress.IPv4Address(host)
            return str(ip), ip
        raise DestinationError("Write an IPv4 address as four decimal numbers, e.g. 203.0.113.7.", code="invalid")
    if not host.isascii():
        try:
            host = idna.encode(host).decode("ascii")
        except (idna.IDNAError, UnicodeError):
            raise DestinationError("The host name is not a valid international domain name.", code="invalid") from None
    if len(host) > MAX_HOST_LENGTH:
        raise DestinationError("The host name is too long.", code="invalid")
    for label in host.split("."):
        if not LABEL.match(label):
            raise DestinationError("The host name may contain only letters, digits, hyphens and dots.", code="invalid")
        if label.startswith("xn--"):
            try:
                idna.decode(label)
            except (idna.IDNAError, UnicodeError):
                raise DestinationError(
                    "The host name is not a valid international domain name.", code="invalid"
                ) from None
    return host, None


def _has_invisible(text):
    return any(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Zs") for ch in text)


# --- The rule ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Destination:
    """An allowed destination. `host` is the normalised ascii host (IPv6 without brackets),
    `port` the effective port, `entry` the allow-list entry that let it in (None: a webhook
    with an empty list). `url` is the URL rebuilt from the checked parts."""

    scheme: str
    host: str
    port: int
    path: str
    query: str
    entry: Entry | None
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None

    @property
    def may_be_internal(self):
        """True when the operator listed this exact origin, so its addresses are not checked."""
        return self.entry is not None and self.entry.kind == "exact"

    @property
    def url(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = {"https": 443, "http": 80}[self.scheme]
        netloc = host if self.port == default else f"{host}:{self.port}"
        return f"{self.scheme}://{netloc}{self.path}" + (f"?{self.query}" if self.query else "")


def check_destination(url, purpose=API, *, allow_query=None):
    """Return the Destination for `url` if a secret (API) or an alert (WEBHOOK) may be sent
    there, else raise DestinationError with a message fit for a form field.

    `allow_query` defaults to False for API base URLs and True for webhooks; the guarded
    transport passes True, since request URLs carry the SDK's query strings."""
    if allow_query is None:
        allow_query = purpose == WEBHOOK
    name = SETTING[purpose]
    entries = allow_list(purpose)
    if not isinstance(url, str):
        url = str(url)
    if len(url) > MAX_URL_LENGTH:
        raise DestinationError(f"The URL is longer than {MAX_URL_LENGTH} characters.", code="invalid")
    if _has_invisible(url) or "\\" in url:
        raise DestinationError(
            "The URL contains spaces, invisible or control characters, or a backslash; type it again.",
            code="invalid",
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise DestinationError("This is not a valid URL.", code="invalid") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise DestinationError("Use an https:// URL.", code="insecure")
    if "@" in parts.netloc:
        raise DestinationError(
            "Remove the user name and password from the URL; credentials never go in a URL.", code="invalid"
        )
    if "#" in url:
        raise DestinationError("Remove the #fragment from the URL.", code="invalid")
    if "?" in url and not allow_query:
        raise DestinationError("Remove the ?query from the URL; a base URL takes none.", code="invalid")
    netloc_host = parts.netloc.rsplit(":", 1)[0] if not parts.netloc.startswith("[") else parts.netloc
    if netloc_host.startswith("["):
        if "]" not in netloc_host:
            raise DestinationError("This is not a valid URL.", code="invalid")
        netloc_host = netloc_host[1 : netloc_host.index("]")]
    host, ip = normalise_host(netloc_host)
    if port is not None and not 0 < port < 65536:
        raise DestinationError("The port must be a number from 1 to 65535.", code="invalid")
    port = port if port is not None else (443 if scheme == "https" else 80)
    _same_as_http_client(url, host, port)

    entry = next((e for e in entries if e.matches(host, port)), None)
    if scheme == "http" and not (entry is not None and entry.kind == "exact" and entry.port and entry.is_loopback_ip):
        raise DestinationError(
            f"Use https://. Plain http is allowed only for a loopback address listed with its port on {name} "
            "(e.g. 127.0.0.1:8100).",
            code="insecure",
        )
    if ip is not None and not is_public_address(ip) and (entry is None or entry.kind != "exact"):
        raise DestinationError(
            f"{host} is a private, loopback, link-local or reserved address; an operator can allow an exact "
            f"address by listing it on {name}.",
        )
    if entry is None and (entries or purpose == API):
        raise DestinationError(f"{_shown(host)} is not on {name}; an operator can add it there.")
    return Destination(scheme, host, port, parts.path, parts.query, entry, ip)


def _shown(host):
    return f"[{host}]" if ":" in host else host


def _same_as_http_client(url, host, port):
    """Refuse a URL that httpx2 would parse to a different host or port than we checked."""
    try:
        parsed = httpx2.URL(url)
    except (httpx2.InvalidURL, ValueError, TypeError):
        raise DestinationError("This is not a valid URL.", code="invalid") from None
    theirs = parsed.raw_host.decode("ascii").lower()
    same = _ip_or_none(theirs) == _ip_or_none(host) if _ip_or_none(host) is not None else theirs == host
    if not same:
        raise DestinationError("This is not a valid URL.", code="invalid")
    if (parsed.port or {"https": 443, "http": 80}.get(parsed.scheme)) != port:
        raise DestinationError("This is not a valid URL.", code="invalid")


def check_addresses(destination_host, port, addresses, purpose=API):
    """Check the addresses a host resolved to, for the connection about to be made.

    Every address must be public unless the host:port matched an exact entry. Returns the
    addresses as strings, in order; raises DestinationRefused."""
    ip = _ip_or_none(destination_host)
    if ip is not None:
        destination_host = ip.compressed
    entry = next((e for e in allow_list(purpose) if e.matches(destination_host, port)), None)
    checked = []
    for address in addresses:
        ip = _ip_or_none(str(address).split("%", 1)[0])
        if ip is None:
            raise DestinationRefused(f"{_shown(destination_host)} resolved to something that is not an address.")
        if not is_public_address(ip) and not (entry is not None and entry.kind == "exact"):
            raise DestinationRefused(
                f"{_shown(destination_host)} resolves to a private, loopback, link-local or reserved address; "
                f"refused. Only an exact host:port entry on {SETTING[purpose]} may reach such addresses."
            )
        checked.append(str(ip))
    if not checked:
        raise httpcore2.ConnectError(f"{_shown(destination_host)} did not resolve to any address.")
    return checked


# --- Django validators -------------------------------------------------------------------


def _validate(value, purpose, **kwargs):
    try:
        check_destination(value, purpose, **kwargs)
    except DestinationError as e:
        raise ValidationError(str(e), code=e.code) from None


def validate_api_base_url(value):
    """Form/model validator for an OpenAI-compatible base URL."""
    _validate(value, API)


def validate_azure_endpoint(value):
    """Form/model validator for an Azure OpenAI endpoint (https://<resource>.openai.azure.com/)."""
    _validate(value, API)


def validate_webhook_url(value):
    """Form/model validator for an alert webhook URL (query string allowed)."""
    _validate(value, WEBHOOK)


# --- Request-time guard (httpx2 transports) ------------------------------------------------


async def resolve(host, port):
    """The addresses `host` resolves to (the event loop's getaddrinfo). Tests patch this."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


def resolve_sync(host, port):
    """Blocking twin of `resolve`. Tests patch this."""
    return [info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def _unique(addresses):
    return list(dict.fromkeys(addresses))


class _GuardedAsyncBackend(httpcore2.AsyncNetworkBackend):
    """Resolves, checks, then connects to the checked address (no second lookup)."""

    def __init__(self, inner, purpose):
        self._inner = inner
        self._purpose = purpose

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        try:
            ip = _ip_or_none(host)
            if ip is not None:
                addresses = [host]
            else:
                try:
                    with anyio.fail_after(timeout):
                        addresses = _unique(await resolve(host, port))
                except TimeoutError:
                    raise httpcore2.ConnectTimeout(f"Resolving {host} timed out.") from None
                except OSError as e:
                    raise httpcore2.ConnectError(f"Could not resolve {host}: {e.strerror or e}") from None
            checked = check_addresses(host.lower(), port, addresses, self._purpose)
        except DestinationError as e:
            raise DestinationRefused(str(e)) from None
        last = None
        for address in checked:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as e:
                last = e
        raise last

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise DestinationRefused("Unix sockets are not a destination.")

    async def sleep(self, seconds):
        await self._inner.sleep(seconds)


class _GuardedSyncBackend(httpcore2.NetworkBackend):
    """Blocking twin of _GuardedAsyncBackend. getaddrinfo itself has no timeout here."""

    def __init__(self, inner, purpose):
        self._inner = inner
        self._purpose = purpose

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        try:
            if _ip_or_none(host) is not None:
                addresses = [host]
            else:
                try:
                    addresses = _unique(resolve_sync(host, port))
                except OSError as e:
                    raise httpcore2.ConnectError(f"Could not resolve {host}: {e.strerror or e}") from None
            checked = check_addresses(host.lower(), port, addresses, self._purpose)
        except DestinationError as e:
            raise DestinationRefused(str(e)) from None
        last = None
        for address in checked:
            try:
                return self._inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as e:
                last = e
        raise last

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise DestinationRefused("Unix sockets are not a destination.")

    def sleep(self, seconds):
        self._inner.sleep(seconds)


def _guard_pool(transport, backend_class, pool_class, purpose):
    # httpx2's transports do not take a network backend, so the pool's is swapped for the
    # guarded one. This reads a private attribute of the pinned httpcore2; if it changes,
    # construction fails here (closed), and tests/test_destinations.py goes red.
    pool = getattr(transport, "_pool", None)
    if not isinstance(pool, pool_class) or not hasattr(pool, "_network_backend"):
        raise RuntimeError("httpx2/httpcore2 changed: cannot install the destination guard.")
    pool._network_backend = backend_class(pool._network_backend, purpose)


def _refuse_unguardable(kwargs):
    for name in ("proxy", "uds"):
        if kwargs.get(name) is not None:
            raise TypeError(f"A guarded transport cannot use {name}=: the guard checks the address it connects to.")


class GuardedTransport(httpx2.AsyncBaseTransport):
    """An httpx2.AsyncHTTPTransport that sends only to allowed destinations.

    `purpose` is API (CONSOLE_ALLOWED_API_HOSTS) or WEBHOOK; other keyword arguments go to
    AsyncHTTPTransport (limits, verify, http2, retries, ...; not proxy or uds). Each request
    URL is re-checked (query allowed) before it reaches the pool, and each new connection
    resolves, checks and connects as described in the module docstring. Passing this as
    `transport=` to httpx2.AsyncClient also turns off proxies from the environment."""

    def __init__(self, purpose=API, **kwargs):
        _refuse_unguardable(kwargs)
        self.purpose = purpose
        self._inner = httpx2.AsyncHTTPTransport(**kwargs)
        _guard_pool(self._inner, _GuardedAsyncBackend, httpcore2.AsyncConnectionPool, purpose)

    async def handle_async_request(self, request):
        try:
            check_destination(str(request.url), self.purpose, allow_query=True)
        except DestinationError as e:
            raise DestinationRefused(str(e), request=request) from None
        return await self._inner.handle_async_request(request)

    async def aclose(self):
        await self._inner.aclose()


class GuardedSyncTransport(httpx2.BaseTransport):
    """Blocking twin of GuardedTransport, for httpx2.Client (webhooks)."""

    def __init__(self, purpose=WEBHOOK, **kwargs):
        _refuse_unguardable(kwargs)
        self.purpose = purpose
        self._inner = httpx2.HTTPTransport(**kwargs)
        _guard_pool(self._inner, _GuardedSyncBackend, httpcore2.ConnectionPool, purpose)

    def handle_request(self, request):
        try:
            check_destination(str(request.url), self.purpose, allow_query=True)
        except DestinationError as e:
            raise DestinationRefused(str(e), request=request) from None
        return self._inner.handle_request(request)

    def close(self):
        self._inner.close()


# --- System checks -----------------------------------------------------------------------


@register()
def check_allowed_hosts(app_configs=None, **kwargs):
    """console.E001/E002: an allow-list setting is malformed. console.W001: OPENAI_BASE_URL
    is not an allowed destination, so every OpenAI probe would be refused."""
    problems = []
    for purpose, check_id in ((API, "console.E001"), (WEBHOOK, "console.E002")):
        try:
            allow_list(purpose)
        except ConfigurationError as e:
            problems.append(
                Error(str(e), hint="Entries: host, *.domain, host:port, [ipv6]:port (see README).", id=check_id)
            )
    if not problems:
        try:
            check_destination(settings.OPENAI_BASE_URL, API)
        except DestinationError as e:
            problems.append(
                Warning(
                    f"OPENAI_BASE_URL is refused: {e}",
                    hint="Fix OPENAI_BASE_URL or CONSOLE_ALLOWED_API_HOSTS.",
                    id="console.W001",
                )
            )
    return problems
