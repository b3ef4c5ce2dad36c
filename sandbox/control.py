"""Drive a running sandbox API from Python: register keys with fault plans, reset, read stats.

Example::

    control = SandboxControl("http://127.0.0.1:8100")
    control.wait_ready()
    control.register(secret, project="proj_a", fault="flaky", fail_rate=0.5)
    AsyncOpenAI(api_key=secret, base_url=control.openai_url)
"""

import time

import httpx2


def openai_base_url(root):
    """The base URL to give an OpenAI client for a sandbox at `root`."""
    return root.rstrip("/") + "/v1"


class SandboxError(RuntimeError):
    """The control API refused a call; the message is the sandbox's, never a secret."""


class SandboxControl:
    def __init__(self, root_url, timeout=10.0):
        self.root = root_url.rstrip("/")
        self.openai_url = openai_base_url(self.root)
        self.azure_endpoint = self.root  # AzureOpenAI(azure_endpoint=…) appends /openai itself
        self.http = httpx2.Client(timeout=timeout)

    def __repr__(self):
        return f"SandboxControl({self.root!r})"

    def _call(self, method, path, json=None):
        response = self.http.request(method, self.root + path, json=json)
        if response.status_code >= 400:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise SandboxError(f"{method} {path} → {response.status_code}: {message}")
        return response.json()

    def register(self, secret, **plan):
        """Register or replace a key. `plan` takes project, organization, fault, fail_rate,
        delay_ms, rpm, tpm and provider (see docs/sandbox.md). Returns the key's hint."""
        return self._call("POST", "/_sandbox/keys", {"key": secret, **plan})["hint"]

    def reset(self):
        """Forget all keys, rate windows and stats."""
        self._call("POST", "/_sandbox/reset")

    def set_latency(self, ms):
        """Add `ms` milliseconds to every API request (0 to turn it off)."""
        self._call("POST", "/_sandbox/settings", {"latency_ms": ms})

    def stats(self):
        """{total, per_project, per_key, in_flight, max_in_flight, recent: [[monotonic, project]], now}."""
        return self._call("GET", "/_sandbox/stats")

    def wait_ready(self, timeout=10):
        """Poll /_sandbox/health until it answers 200. Returns True, or False after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.http.get(self.root + "/_sandbox/health", timeout=1.0).status_code == 200:
                    return True
            except httpx2.TransportError:
                pass
            time.sleep(0.05)
        return False

    def close(self):
        self.http.close()
