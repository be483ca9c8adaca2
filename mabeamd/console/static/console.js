// mabeamd console: live sections and the agent search. No framework, no build step.
// The page's <body data-stream="PATH"> names the page; /console/live?page=PATH sends its
// sections again when they change (server-sent events), each swapped in by name.
"use strict";

function filterAgents() {
  const box = document.getElementById("agent-search");
  if (!box) return;
  const q = box.value.trim().toLowerCase();
  let shown = 0;
  document.querySelectorAll("table.agents tbody tr").forEach((row) => {
    const hit = !q || row.textContent.toLowerCase().includes(q);
    row.hidden = !hit;
    if (hit && !row.classList.contains("empty")) shown += 1;
  });
  const count = document.querySelector('[data-field="count"]');
  if (count) count.textContent = String(shown);
}

let retryIn = 2000; // after the browser gives up (a refused stream), ours: doubling to 30 s

function live() {
  const page = document.body.dataset.stream;
  const state = document.getElementById("live-state");
  if (!page || !window.EventSource) return;
  const source = new EventSource("/console/live?page=" + encodeURIComponent(page));
  source.addEventListener("open", () => {
    state.textContent = "live";
    state.className = "live-state on";
    retryIn = 2000;
  });
  source.addEventListener("error", () => {
    state.className = "live-state off";
    if (source.readyState === EventSource.CLOSED) {
      // A non-200 answer (e.g. 503: every live stream is taken) ends an EventSource for
      // good; try again ourselves.
      state.textContent = "busy, retrying in " + Math.round(retryIn / 1000) + " s";
      setTimeout(live, retryIn);
      retryIn = Math.min(retryIn * 2, 30000);
    } else {
      state.textContent = "reconnecting";
    }
  });
  source.addEventListener("section", (e) => {
    const { name, html } = JSON.parse(e.data);
    if (name === "search") return; // never replace what is being typed
    const el = document.querySelector('section[data-live="' + CSS.escape(name) + '"]');
    if (!el) return;
    el.innerHTML = html;
    el.dataset.updated = String(Date.now());
    if (name === "list") filterAgents();
  });
  source.addEventListener("gone", () => {
    source.close();
    state.textContent = "ended";
    state.className = "live-state off";
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const box = document.getElementById("agent-search");
  if (box) {
    box.addEventListener("input", filterAgents);
  }
  live();
});
