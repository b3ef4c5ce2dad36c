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
        # Every POST carries a JSON body: the control API refuses any other content type.
        if method == "POST" and json is None:
            json = {}
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
        fail_times, delay_ms, rpm, tpm, provider, retry_after, retry_after_ms,
        quota_type_only and should_retry (see docs/sandbox.md). Returns the key's hint,
        which is also its name in stats()["per_key"]."""
        return self._call("POST", "/_sandbox/keys", {"key": secret, **plan})["hint"]

    def set_usage(self, admin_secret, keys=(), projects=(), models=("gpt-4o-mini",), seed="sandbox", **options):
        """Give a registered admin key's organization synthetic usage and costs (see
        sandbox/usage.py and docs/sandbox.md). `keys` is [(key_id, project_id)] or
        [{"id", "project"}]; `projects` adds projects without keys (vector stores, code
        interpreter); `options` takes repeat_cursor and endless (bools). Replaces any
        earlier plan of that key, and its bumps."""
        keys = [k if isinstance(k, dict) else {"id": k[0], "project": k[1]} for k in keys]
        body = {"key": admin_secret, "keys": keys, "projects": list(projects), "models": list(models), "seed": seed}
        return self._call("POST", "/_sandbox/usage", {**body, **options})

    def bump_usage(self, admin_secret, day, factor=1.5):
        """Late data: from now on, the UTC day containing `day` (unix seconds) reads
        `factor` × its numbers (every usage endpoint and costs). Returns the day's start."""
        return self._call("POST", "/_sandbox/usage/bump", {"key": admin_secret, "day": day, "factor": factor})["day"]

    def seed_admin(self, organization=None, key=None, **state):
        """Seed (or with replace=False, add to) an organization's Administration API state:
        users, projects (with users, service_accounts, api_keys, rate_limits,
        spend_alerts), admin_keys, spend_alerts, audit_logs, faults, generate, redaction
        (see docs/sandbox.md). Name the organization, or give its registered admin `key`.
        Returns the counts."""
        body = {**state}
        if organization is not None:
            body["organization"] = organization
        if key is not None:
            body["key"] = key
        return self._call("POST", "/_sandbox/admin", body)

    def admin_state(self, organization):
        """An organization's counts, and `calls`: "METHOD /path" → admin requests served."""
        return self._call("GET", "/_sandbox/admin?organization=" + organization)

    def reset(self):
        """Forget all keys, usage plans, rate windows and stats."""
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
