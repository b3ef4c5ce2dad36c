// The key page (keys/probe_admin.py). Loaded as a file: the Content-Security-Policy
// allows no inline script.
// - While a probe is queued, poll the key's probe-status endpoint (JSON: when, outcome,
//   HTTP status — never a secret) and show the outcome when it arrives, without a reload.
// - On the add page, pasting a secret selects the kind its prefix implies.
"use strict";
(function () {
  const POLL_MS = 1000;
  const GIVE_UP_MS = 3 * 60 * 1000;

  function describe(status) {
    const parts = ["Last probe: " + status.outcome_label];
    if (status.http_status) parts.push("HTTP status " + status.http_status);
    parts.push(status.last_probe_at_display);
    return parts.join(" · ");
  }

  function watchProbe(panel) {
    const url = panel.dataset.url;
    const since = panel.dataset.since || "";
    const started = Date.now();
    function poll() {
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then((response) => (response.ok ? response.json() : null))
        .then((status) => {
          if (status && status.last_probe_at && status.last_probe_at !== since) {
            panel.textContent = describe(status);
            panel.dataset.outcome = status.outcome;
            panel.dataset.waiting = "0";
            panel.classList.add("done");
            return;
          }
          if (Date.now() - started > GIVE_UP_MS) {
            panel.textContent = "Still queued: the outcome will appear under “Last probe” once a worker probes it.";
            return;
          }
          window.setTimeout(poll, POLL_MS);
        })
        .catch(() => window.setTimeout(poll, POLL_MS * 3));
    }
    poll();
  }

  // sk-svcacct- before sk-proj-: the longest prefix decides.
  const KIND_OF_PREFIX = [
    ["sk-svcacct-", "service_account"],
    ["sk-admin-", "admin"],
    ["sk-proj-", "project"],
  ];

  function followSecret(secret, kind) {
    function pick() {
      const value = secret.value.trim();
      for (const [prefix, choice] of KIND_OF_PREFIX) {
        if (value.startsWith(prefix)) {
          if (kind.value !== choice && kind.querySelector(`option[value="${choice}"]`)) {
            kind.value = choice;
            kind.dispatchEvent(new Event("change", { bubbles: true }));
          }
          return;
        }
      }
    }
    secret.addEventListener("input", pick);
    secret.addEventListener("paste", () => window.setTimeout(pick, 0));
  }

  // "Probe now" on selected keys: how many of them were probed since, by outcome.
  function watchRun(run) {
    const bar = document.getElementById("probe-run-bar");
    const count = document.getElementById("probe-run-count");
    const outcomes = document.getElementById("probe-run-outcomes");
    const done = document.getElementById("probe-run-done");
    const started = Date.now();
    function show(progress) {
      bar.max = progress.total;
      bar.value = progress.probed;
      count.textContent = `${progress.probed} of ${progress.total} probed`;
      outcomes.replaceChildren(
        ...progress.outcomes.map(([label, n]) => {
          const item = document.createElement("li");
          item.textContent = `${label}: ${n}`;
          return item;
        }),
      );
    }
    function poll() {
      fetch(run.dataset.url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then((response) => (response.ok ? response.json() : null))
        .then((progress) => {
          if (progress) show(progress);
          if (progress && progress.finished) {
            run.dataset.finished = "1";
            done.hidden = false;
            return;
          }
          if (Date.now() - started > GIVE_UP_MS) {
            count.textContent += " — the rest are queued; the next sweep probes any left behind.";
            return;
          }
          window.setTimeout(poll, POLL_MS);
        })
        .catch(() => window.setTimeout(poll, POLL_MS * 3));
    }
    poll();
  }

  function start() {
    const run = document.getElementById("probe-run");
    if (run && run.dataset.finished !== "1") watchRun(run);
    const panel = document.getElementById("probe-status");
    if (panel && panel.dataset.waiting === "1") watchProbe(panel);
    const secret = document.getElementById("id_secret");
    const kind = document.getElementById("id_kind");
    if (secret && kind && kind.tagName === "SELECT") followSecret(secret, kind);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
