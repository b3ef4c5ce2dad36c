// The progress page of a job started from the admin (accounts/job_admin.py). Loaded as a
// file: the Content-Security-Policy allows no inline script. Polls the job's status
// (JSON; its URL is the page's data-url) about once a second until the job has finished,
// updating the bar, "done of total — step", the state and a stuck-job warning; then shows
// the outcome and the summary table, without a reload.
"use strict";
(function () {
  const POLL_MS = 1000;
  const RETRY_MS = 3000;

  function cell(tag, text) {
    const element = document.createElement(tag);
    element.textContent = text;
    return element;
  }

  function renderSummary(box, summary) {
    const parts = [];
    if (summary.columns && summary.columns.length) {
      const table = document.createElement("table");
      const head = document.createElement("tr");
      head.append(...summary.columns.map((c) => cell("th", c)));
      table.createTHead().append(head);
      const body = table.createTBody();
      for (const row of summary.rows || []) {
        const line = document.createElement("tr");
        line.append(...row.map((value) => cell("td", String(value))));
        body.append(line);
      }
      parts.push(table);
    }
    if (summary.facts && summary.facts.length) {
      const list = document.createElement("dl");
      for (const [label, value] of summary.facts) list.append(cell("dt", label), cell("dd", String(value)));
      parts.push(list);
    }
    box.replaceChildren(...parts);
  }

  function show(root, status) {
    const bar = document.getElementById("job-bar");
    if (status.total === null) {
      bar.removeAttribute("value"); // indeterminate until the work is counted
    } else {
      bar.max = Math.max(status.total, 1);
      bar.value = status.finished && status.succeeded ? bar.max : status.done;
    }
    bar.textContent = status.progress_text;
    document.getElementById("job-progress").textContent = status.progress_text;
    const state = document.getElementById("job-state");
    state.textContent = status.state_label;
    state.className = "state " + status.state;
    const stale = document.getElementById("job-stale");
    stale.textContent = status.stale_text;
    stale.hidden = !status.stale;
    root.dataset.state = status.state;
    if (status.finished) {
      const outcome = document.getElementById("job-outcome");
      outcome.textContent = status.outcome_text;
      outcome.className = "job-outcome " + status.state;
      outcome.hidden = false;
      renderSummary(document.getElementById("job-summary"), status.summary || {});
      root.dataset.finished = "1";
    }
  }

  function watch(root) {
    function poll() {
      fetch(root.dataset.url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then((response) => (response.ok ? response.json() : null))
        .then((status) => {
          if (status) show(root, status);
          if (status && status.finished) return;
          window.setTimeout(poll, status ? POLL_MS : RETRY_MS);
        })
        .catch(() => window.setTimeout(poll, RETRY_MS));
    }
    poll();
  }

  function start() {
    const root = document.getElementById("job");
    if (root && root.dataset.finished !== "1") watch(root);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
