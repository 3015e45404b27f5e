// kwheel ui: poll /api/status every second and fill in the page. Text only (textContent),
// never markup, so nothing from the status can inject into the page.
"use strict";
(function () {
  const POLL_MS = 1000;
  const state = document.getElementById("state");
  let polls = 0;
  let lastOk = null;

  function clock(ms) {
    const d = new Date(ms);
    return d.toISOString().substring(11, 23);
  }
  function watermark(w) {
    if (w === null || w === undefined) return "unknown";
    if (typeof w === "string") return w;  // "none" or "end"
    return clock(w);
  }
  function seconds(ms) {
    if (ms === null || ms === undefined) return "–";
    return (ms / 1000).toFixed(1) + " s";
  }
  function number(n) {
    return typeof n === "number" ? n.toLocaleString("en-US") : "–";
  }
  const FORMAT = {
    low_watermark: watermark, watermark_lag_ms: seconds, lag: number, records_per_s: number,
    processed: number, duplicates: number, late: number, dead_lettered: number, pending_timers: number,
  };
  const ALERT = { dead_lettered: (v) => v > 0, late: (v) => v > 0 };

  function byData(selector, name) {
    return Array.from(document.querySelectorAll(selector)).filter((el) => el.dataset.computation === name);
  }

  function render(st) {
    for (const comp of st.computations) {
      for (const row of byData("tr[data-computation]", comp.name)) {
        for (const cell of row.querySelectorAll("td[data-field]")) {
          const f = cell.dataset.field;
          cell.textContent = FORMAT[f](comp[f]);
          cell.classList.toggle("alert", Boolean(ALERT[f] && ALERT[f](comp[f])));
        }
      }
      for (const el of byData("text[data-computation]", comp.name)) {
        el.textContent = `${number(comp.processed)} processed · lag ${number(comp.lag)} · ${number(Math.round(comp.records_per_s))}/s`;
      }
    }
    const body = document.querySelector("#injectors tbody");
    const rows = st.injectors.map((inj) => {
      const tr = document.createElement("tr");
      tr.dataset.producer = inj.producer;
      const th = document.createElement("th");
      th.textContent = inj.producer;
      tr.appendChild(th);
      for (const v of [inj.streams.join(", "), watermark(inj.low_watermark), number(inj.sent),
                       inj.final ? "yes" : "no", inj.reported_at ? clock(inj.reported_at) : "–"]) {
        const td = document.createElement("td");
        td.textContent = v;
        tr.appendChild(td);
      }
      return tr;
    });
    body.replaceChildren(...rows);
    document.getElementById("no-injectors").hidden = rows.length > 0;
  }

  async function poll() {
    try {
      const r = await fetch("api/status", { cache: "no-store" });
      const st = await r.json();
      if (!r.ok) throw new Error(st.error || `HTTP ${r.status}`);
      render(st);
      polls += 1;
      lastOk = st.time;
      state.dataset.state = "ok";
      state.dataset.polls = String(polls);
      state.textContent = `updated ${clock(st.time)} UTC`;
    } catch (err) {
      state.dataset.state = "error";
      state.textContent = `status unavailable: ${err.message}` + (lastOk ? ` (last update ${clock(lastOk)} UTC)` : "");
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }
  poll();
})();
