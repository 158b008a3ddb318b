// Edge Cloud console: the device page's charts (uPlot), kept current by the live events.
//
// Data comes from the JSON API; labels and options are set as text (uPlot and new Option()
// use textContent), never as markup.
(() => {
  "use strict";

  const historyEl = document.getElementById("history-chart");
  const streamEl = document.getElementById("stream-chart");
  const streamSelect = document.getElementById("stream-select");
  const fieldSelect = document.getElementById("field-select");
  const sensorSelect = document.getElementById("sensor-select");
  if (!historyEl || !streamEl || !window.uPlot) return;

  const device = historyEl.dataset.device;
  const DAY_S = 86400;
  const OVERLAP_S = 600;
  const HEIGHT = 240;
  let points = [];
  let historyPlot = null;
  let streams = [];
  let streamPlot = null;
  let streamKey = "";

  // Every time on the console is UTC (tables, tooltips, charts): one format, whoever looks.
  const utc = (ts) => window.uPlot.tzDate(new Date(ts * 1000), "Etc/UTC");
  // The tables' format (24 h, UTC), not uPlot's "12/6/26 10:44pm".
  const clock = (ts) => (ts == null ? "--" : new Date(ts * 1000).toISOString().slice(11, 19));
  const timeAxis = (label) => ({ label, space: 90, values: (u, splits) => splits.map(clock) });
  const timeSeries = { value: (u, ts) => clock(ts) };

  const api = (path) => `/api/devices/${encodeURIComponent(device)}${path}`;

  async function getJSON(url) {
    const response = await fetch(url, { cache: "no-store", credentials: "same-origin" });
    if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
    return response.json();
  }

  function width(el) {
    return Math.max(260, Math.floor(el.getBoundingClientRect().width));
  }

  // The time axis spans the data itself; one point (or none) shows the five minutes before it,
  // where uPlot would otherwise stretch the axis over a day or more.
  function timeRange(u) {
    const xs = (u.data && u.data[0]) || [];
    if (!xs.length) return [Date.now() / 1000 - 300, Date.now() / 1000];
    const first = xs[0];
    const last = xs[xs.length - 1];
    if (last - first < 1) return [last - 300, last + 30];
    const pad = (last - first) * 0.03;
    return [first - pad, last + pad];
  }

  function note(el, text) {
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = text;
    el.replaceChildren(p);
  }

  // -- backlog and lag over time --------------------------------------------------------------

  async function loadHistory() {
    const last = points.length ? points[points.length - 1].at : 0;
    const since = last ? last - OVERLAP_S : Date.now() / 1000 - DAY_S;
    const rows = await getJSON(api(`/history?since=${since.toFixed(3)}`));
    points = points.filter((p) => p.at <= since).concat(rows);
    drawHistory();
  }

  function drawHistory() {
    if (!points.length) return;
    const data = [
      points.map((p) => p.at),
      points.map((p) => p.backlog),
      points.map((p) => (p.backlog ? p.oldest_unsent_age_s : 0)),
    ];
    if (historyPlot) {
      historyPlot.setData(data);
      return;
    }
    historyEl.replaceChildren();
    // On a phone two 60 px axes left the plot about 150 px: narrower axes, no axis titles (the
    // legend names both series), and a taller chart give it the room.
    const narrow = width(historyEl) < 520;
    const axis = narrow ? 42 : 60;
    historyPlot = new window.uPlot({
      tzDate: utc,
      width: width(historyEl),
      height: narrow ? 280 : HEIGHT,
      scales: { x: { time: true, range: timeRange }, rows: { auto: true }, secs: { auto: true } },
      series: [
        timeSeries,
        { label: "Backlog (rows)", scale: "rows", stroke: "#2563eb", width: 2, fill: "rgba(37,99,235,0.08)" },
        { label: "Oldest unsent (s)", scale: "secs", stroke: "#d97706", width: 2 },
      ],
      axes: [
        timeAxis(narrow ? undefined : "time (UTC)"),
        { scale: "rows", label: narrow ? undefined : "rows", size: axis },
        { scale: "secs", side: 1, label: narrow ? undefined : "seconds", size: axis, grid: { show: false } },
      ],
    }, data, historyEl);
  }

  // -- a chosen field of a chosen stream --------------------------------------------------------

  function fill(select, values, wanted) {
    const chosen = values.includes(wanted) ? wanted : values[0];
    select.replaceChildren(...values.map((v) => new Option(v, v, v === chosen, v === chosen)));
  }

  async function loadStreams() {
    const order = { summaries: 0, records: 1, events: 2 };
    streams = (await getJSON(api("/streams")))
      .filter((s) => s.fields.length)
      .sort((a, b) => order[a.kind] - order[b.kind] || a.stream.localeCompare(b.stream));
    if (!streams.length) {
      if (!streamEl.querySelector(".empty")) note(streamEl, "No stream with numeric fields yet.");
      return;
    }
    fill(streamSelect, streams.map((s) => s.stream), streamSelect.value);
    pickFields();
    await loadStream();
  }

  function pickFields() {
    const stream = streams.find((s) => s.stream === streamSelect.value);
    const fields = stream ? stream.fields : [];
    const preferred = fields.includes(fieldSelect.value) ? fieldSelect.value : (fields.includes("mean") ? "mean" : fields[0]);
    fill(fieldSelect, fields, preferred);
  }

  // One series per sensor: a stream mixes sensors (pressure beside temperatures), and one line
  // through all of them would zigzag between their scales. Records without a sensor are one series.
  async function loadStream() {
    const stream = streamSelect.value;
    const field = fieldSelect.value;
    if (!stream || !field) return;
    const rows = await getJSON(api(`/latest?stream=${encodeURIComponent(stream)}&limit=500`));
    const usable = rows.filter((r) => typeof r.data[field] === "number");
    const sensorOf = (r) => (typeof r.data.sensor === "string" ? r.data.sensor : "(all)");
    const sensors = [...new Set(usable.map(sensorOf))].sort();
    if (sensorSelect) fill(sensorSelect, sensors, sensorSelect.value);
    const sensor = sensorSelect ? sensorSelect.value : sensors[0];
    const mine = usable.filter((r) => sensorOf(r) === sensor);
    const units = [...new Set(mine.map((r) => r.data.unit).filter((u) => typeof u === "string"))];
    const unit = units.length === 1 && field !== "count" ? units[0] : ""; // a count has no unit
    const data = [mine.map((r) => r.ts), mine.map((r) => r.data[field])];
    const key = `${stream}\u0000${field}\u0000${sensor}\u0000${unit}`;
    if (streamPlot && key === streamKey) {
      streamPlot.setData(data);
      return;
    }
    if (streamPlot) streamPlot.destroy();
    streamEl.replaceChildren();
    streamKey = key;
    const axisLabel = unit ? `${field} (${unit})` : field;
    streamPlot = new window.uPlot({
      tzDate: utc,
      width: width(streamEl),
      height: HEIGHT,
      scales: { x: { time: true, range: timeRange } },
      series: [timeSeries, {
        label: `${stream} · ${field} · ${sensor}${unit ? ` (${unit})` : ""}`,
        stroke: "#059669", width: 2, points: { show: mine.length < 60 },
      }],
      axes: [timeAxis("time (UTC)"), { size: 60, label: axisLabel }],
    }, data, streamEl);
  }

  function report(error) {
    console.warn("device charts:", error); // eslint-disable-line no-console
  }

  streamSelect.addEventListener("change", () => {
    pickFields();
    loadStream().catch(report);
  });
  fieldSelect.addEventListener("change", () => loadStream().catch(report));
  if (sensorSelect) sensorSelect.addEventListener("change", () => loadStream().catch(report));
  document.body.addEventListener("console:changed", () => {
    loadHistory().catch(report);
    loadStreams().catch(report);
  });
  let resizeTimer = 0;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      for (const [plot, el] of [[historyPlot, historyEl], [streamPlot, streamEl]]) {
        if (plot) plot.setSize({ width: width(el), height: HEIGHT });
      }
    }, 150);
  });

  loadHistory().catch(report);
  loadStreams().catch(report);
})();
