// The overview refreshes itself: every few seconds it reads /api/status and writes the counts,
// queues, throughput and ETA into the page. Text is set with textContent only (never as HTML).
"use strict";
(function () {
  const STATES = ["queued", "running", "done", "failed", "rejected"];
  const EVERY_MS = 2000;

  function text(el, value) { if (el && el.textContent !== String(value)) el.textContent = String(value); }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    if (seconds < 120) return Math.round(seconds) + " s";
    if (seconds < 7200) return Math.floor(seconds / 60) + " min";
    return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min";
  }

  function cell(content, cls) {
    const td = document.createElement("td");
    td.textContent = String(content);
    if (cls) td.className = cls;
    return td;
  }

  function runsTable(runs, order) {
    const body = document.querySelector("#runs tbody");
    if (!body) return;
    const tasks = (order || []).slice();  // the catalog's order, as the page was first drawn
    for (const key of Object.keys(runs)) {
      const task = key.slice(0, key.lastIndexOf(":"));
      if (!tasks.includes(task)) tasks.push(task);
    }
    const rows = [];
    for (const task of tasks) {
      const tr = document.createElement("tr");
      tr.appendChild(cell(task));
      for (const st of STATES) {
        const td = cell(runs[task + ":" + st] || 0, "num");
        td.dataset.run = task + ":" + st;
        tr.appendChild(td);
      }
      rows.push(tr);
    }
    if (rows.length) body.replaceChildren(...rows);
  }

  function show(status) {
    let total = 0;
    for (const st of STATES) {
      const n = status.images[st] || 0;
      total += n;
      text(document.querySelector('[data-image="' + st + '"]'), n);
    }
    text(document.getElementById("total-images"), total);
    text(document.getElementById("uncounted"), status.uncounted ?
      status.uncounted + " more changed state a moment ago and are still being counted" : "");
    runsTable(status.runs, status.tasks);
    const queues = document.getElementById("queues");
    if (queues) {
      if (typeof status.queues === "string") {
        text(queues, status.queues);
      } else {
        const pills = Object.entries(status.queues).map(([q, n]) => {
          const span = document.createElement("span");
          span.className = "pill";
          span.textContent = q + " " + n;
          return span;
        });
        queues.replaceChildren(...pills);
      }
    }
    text(document.getElementById("runs-per-second"), status.throughput.runs_per_second.toFixed(2));
    text(document.getElementById("registered-per-second"), status.throughput.registered_per_second.toFixed(2));
    text(document.getElementById("pending"), status.pending_runs);
    text(document.getElementById("eta"), duration(status.eta_seconds));
    document.body.dataset.refreshed = String(Date.now());
  }

  async function refresh() {
    try {
      const response = await fetch("/api/status", { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (response.ok) show(await response.json());
    } catch (e) {
      // the server is away for a moment: try again at the next turn
    }
    setTimeout(refresh, EVERY_MS);
  }

  setTimeout(refresh, EVERY_MS);
})();
