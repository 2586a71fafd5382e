// Ironpool fleet view: the machine table, machine pages and Subnet pages, kept live by
// the Server-Sent Events of /api/stream. No framework: rows are plain DOM, replaced one
// at a time when their Machine changes.
"use strict";
(() => {
  const state = { machines: new Map(), subnets: new Map(), route: null };
  // Read by the browser test: when the first table was drawn, and when each row changed.
  const probe = (window.ironpool = { firstTable: null, updates: [] });
  const view = document.getElementById("view");
  const live = document.getElementById("live");

  const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) =>
    ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  const dash = (v) => (v === null || v === undefined || v === "" ? "–" : esc(v));
  const time = (t) => (t ? new Date(t).toLocaleTimeString() : "");
  const link = (kind, key, text) => `<a href="#/${kind}/${esc(key)}">${esc(text)}</a>`;
  const size = (b) => {
    if (b === null || b === undefined) return "?";
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let v = b, u = 0;
    while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
    return `${u === 0 || v >= 100 || Math.abs(v - Math.round(v)) < 0.05 ? v.toFixed(0) : v.toFixed(1)} ${units[u]}`;
  };

  async function getJSON(url) {
    const r = await fetch(url, { credentials: "same-origin" });
    if (r.status === 401 || r.status === 403) { location.href = "/login"; throw new Error("signed out"); }
    if (!r.ok) throw new Error(`${url}: ${r.status} ${await r.text()}`);
    return r.json();
  }

  // ---- machine table ----
  const PHASES = ["New", "Commissioning", "Ready", "Allocated", "Deploying", "Deployed", "Releasing",
    "FailedCommissioning", "FailedDeployment", "Broken", "Maintenance"];
  const filters = { phase: "", label: "", subnet: "" };
  function matches(m) {
    if (filters.phase && m.phase !== filters.phase) return false;
    if (filters.subnet && !(m.subnets || []).includes(filters.subnet)) return false;
    if (filters.label) {
      const [k, v] = filters.label.split("=").map((s) => s.trim());
      const labels = m.labels || {};
      if (!(k in labels)) return false;
      if (v !== undefined && labels[k] !== v) return false;
    }
    return true;
  }
  function rowHTML(m) {
    const boot = m.lastBoot ? `${esc(m.lastBoot.step)} <span class="at">${time(m.lastBoot.at)}</span><div class="detail" title="${esc(m.lastBoot.detail)}">${esc(m.lastBoot.detail || "")}</div>` : "–";
    const why = m.attention && m.attention.message ? `<div class="attention">${esc(m.attention.reason)}: ${esc(m.attention.message)}</div>` : "";
    return `<td class="name">${link("m", m.key, m.name)}<span class="muted"> ${esc(m.namespace)}</span>${why}</td>` +
      `<td class="phase p-${esc(m.phase)}">${esc(m.phase)}</td><td class="power">${dash(m.power)}</td>` +
      `<td>${dash(m.arch)}</td><td>${dash(m.cores)}</td><td>${dash(m.memory)}</td><td>${dash(m.disks)}</td>` +
      `<td>${dash(m.deployment)}</td><td class="boot">${boot}</td>`;
  }
  function drawTable() {
    const ms = [...state.machines.values()].sort((a, b) => a.key.localeCompare(b.key));
    const phases = PHASES.concat([...new Set(ms.map((m) => m.phase))].filter((p) => !PHASES.includes(p)));
    const subnets = [...state.subnets.values()].sort((a, b) => a.key.localeCompare(b.key));
    const opt = (v, sel) => `<option${v === sel ? " selected" : ""}>${esc(v)}</option>`;
    view.innerHTML = `<h1>Machines <span class="count" id="count"></span></h1>
      <div class="filters">
        <label>Phase <select id="f-phase"><option value="">all</option>${phases.map((p) => opt(p, filters.phase)).join("")}</select></label>
        <label>Label <input id="f-label" placeholder="key=value" value="${esc(filters.label)}"></label>
        <label>Subnet <select id="f-subnet"><option value="">all</option>${[...new Set(subnets.map((s) => s.name))].sort().map((n) => opt(n, filters.subnet)).join("")}</select></label>
      </div>
      <table id="machines"><thead><tr><th>Name</th><th>Phase</th><th>Power</th><th>Arch</th><th>Cores</th><th>Memory</th><th>Disks</th><th>Deployment</th><th>Last boot step</th></tr></thead><tbody></tbody></table>
      <h2>Subnets</h2>
      <table id="subnets"><thead><tr><th>Name</th><th>CIDR</th><th>Served by</th><th>Free / total</th></tr></thead><tbody>${subnets.map(subnetRowHTML).join("")}</tbody></table>`;
    const body = view.querySelector("#machines tbody");
    for (const m of ms) body.appendChild(rowElement(m));
    applyFilters();
    for (const id of ["f-phase", "f-label", "f-subnet"]) {
      view.querySelector("#" + id).addEventListener("input", (e) => {
        filters[id.slice(2)] = e.target.value; applyFilters();
      });
    }
  }
  function drawSubnets() {
    const body = view.querySelector("#subnets tbody");
    if (body) body.innerHTML = [...state.subnets.values()].sort((a, b) => a.key.localeCompare(b.key)).map(subnetRowHTML).join("");
  }
  function subnetRowHTML(s) {
    const a = s.addresses || {};
    return `<tr data-key="${esc(s.key)}"><td>${link("s", s.key, s.name)}<span class="muted"> ${esc(s.namespace)}</span></td><td>${esc(s.cidr)}</td><td>${dash(s.servedBy)}</td><td>${a.total !== undefined ? `${a.free} / ${a.total}` : "–"}</td></tr>`;
  }
  function rowElement(m) {
    const tr = document.createElement("tr");
    tr.dataset.key = m.key;
    tr.innerHTML = rowHTML(m);
    return tr;
  }
  function applyFilters() {
    let shown = 0;
    for (const tr of view.querySelectorAll("#machines tbody tr")) {
      const ok = matches(state.machines.get(tr.dataset.key) || {});
      tr.hidden = !ok;
      if (ok) shown++;
    }
    const c = view.querySelector("#count");
    if (c) c.textContent = `${shown} of ${state.machines.size}`;
  }
  function upsertRows(rows) {
    const body = state.route.kind === "table" && view.querySelector("#machines tbody");
    for (const m of rows) {
      state.machines.set(m.key, m);
      if (!body) continue;
      const old = body.querySelector(`tr[data-key="${CSS.escape(m.key)}"]`);
      const tr = rowElement(m);
      if (old) old.replaceWith(tr);
      else {
        const next = [...body.children].find((r) => r.dataset.key > m.key);
        body.insertBefore(tr, next || null);
      }
      probe.updates.push({ key: m.key, phase: m.phase, power: m.power, at: Date.now() });
      if (probe.updates.length > 500) probe.updates.shift();
    }
    if (body) applyFilters();
  }

  // ---- machine page ----
  function section(title, html) { return `<section><h2>${esc(title)}</h2>${html}</section>`; }
  function dl(pairs) { return `<dl>${pairs.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${v}</dd>`).join("")}</dl>`; }
  function timeline(boot) {
    if (!boot.length) return `<p class="muted">No boot steps recorded yet.</p>`;
    const t0 = Date.parse(boot[0].at);
    return `<ol class="timeline" id="timeline">${boot.map((b) => `<li><span class="step">${esc(b.step)}</span>` +
      `<span class="at">${time(b.at)} (+${((Date.parse(b.at) - t0) / 1000).toFixed(1)} s)</span>` +
      (b.detail ? `<div class="detail">${esc(b.detail)}</div>` : "") + `</li>`).join("")}</ol>`;
  }
  function progress(p, d) {
    const parts = [];
    if (p) {
      const pct = p.bytesTotal ? Math.round((100 * (p.bytesWritten || 0)) / p.bytesTotal) : null;
      // Bytes only while the ramdisk reports them (a finished step says it in its message).
      const written = p.bytesTotal || p.bytesWritten
        ? [["Written", `${size(p.bytesWritten || 0)} of ${size(p.bytesTotal)}${pct !== null ? ` (${pct}%)` : ""}`]] : [];
      parts.push(dl([["Step", esc(p.step)], ...written, ["Message", dash(p.message)]]));
      if (pct !== null) parts.push(`<div class="bar" title="${pct}%"><div style="width:${pct}%"></div></div>`);
    }
    if (d) parts.push(dl([["Deployment", esc(d.name)], ["Phase", dash(d.phase)], ["Progress", dash(d.progress && (d.progress.summary || d.progress.step))], ["Image", dash(d.image)], ["Addresses", dash((d.addresses || []).join(", "))]]));
    return parts.join("") || `<p class="muted">Not deploying.</p>`;
  }
  function conditions(cs) {
    return cs && cs.length ? `<table><thead><tr><th>Type</th><th>Status</th><th>Reason</th><th>Message</th><th>Since</th></tr></thead><tbody>${cs.map((c) =>
      `<tr><td>${esc(c.type)}</td><td>${esc(c.status)}</td><td>${esc(c.reason)}</td><td class="wrap">${esc(c.message)}</td><td>${time(c.lastTransitionTime)}</td></tr>`).join("")}</tbody></table>` : `<p class="muted">None.</p>`;
  }
  async function drawMachine(key) {
    const d = await getJSON(`/api/machines/${key}`);
    if (state.route.kind !== "machine" || state.route.key !== key) return;
    const r = d.row, inv = d.inventory || {}, op = d.lastOperation, intent = d.bootIntent;
    view.innerHTML = `<h1 id="machine-name">${esc(r.name)} <span class="phase p-${esc(r.phase)}">${esc(r.phase)}</span> <span class="muted">power ${dash(r.power)}</span></h1>
      <div class="grid">
      ${section("Machine", dl([["Namespace", esc(r.namespace)], ["Boot MAC", esc(d.spec.bootMACAddress)], ["BMC", dash(d.spec.bmc)], ["Boot mode", dash(d.spec.bootMode)], ["Subnets", r.subnets.map((s) => link("s", `${r.namespace}/${s}`, s)).join(", ") || "–"], ["Labels", esc(Object.entries(r.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ")) || "–"], ["Boot intent", intent ? `${esc(intent.target)} / ${esc(intent.purpose)}, attempt ${esc(intent.attempt)}` : "–"], ["Last operation", op ? `${esc(op.kind)} ${esc(op.result)}${op.message ? ": " + esc(op.message) : ""}` : "–"]]))}
      ${section("Inventory", dl([["Architecture", dash(inv.architecture || r.arch)], ["Cores / threads", `${dash(inv.cores)} / ${dash(inv.threads)}`], ["Memory", dash(r.memory)], ["Disks", (d.disks || []).map((x) => `${esc(x.name)} ${esc(size(x.sizeBytes))}${x.model ? " " + esc(x.model) : ""}`).join("<br>") || "–"], ["NICs", dash(inv.nicCount)]]))}
      ${section("Deploy progress", progress(d.provisioning, d.deployment))}
      ${section("Flight recorder", timeline(d.boot))}
      </div>
      ${section("Conditions", conditions(d.conditions))}
      ${section("Events", d.events.length ? `<table id="events"><thead><tr><th>Time</th><th>Type</th><th>Reason</th><th>Message</th></tr></thead><tbody>${d.events.map((e) =>
        `<tr><td>${time(e.at)}</td><td>${esc(e.type)}</td><td>${esc(e.reason)}</td><td class="wrap">${esc(e.message)}</td></tr>`).join("")}</tbody></table>` : `<p class="muted">No events.</p>`)}`;
  }

  // ---- Subnet page ----
  async function drawSubnet(key) {
    const d = await getJSON(`/api/subnets/${key}`);
    if (state.route.kind !== "subnet" || state.route.key !== key) return;
    const sp = d.spec, a = d.row.addresses || {}, range = (x) => (x ? `${esc(x.start)} – ${esc(x.end)}` : "–");
    view.innerHTML = `<h1>Subnet ${esc(d.row.name)} <span class="muted">${esc(sp.cidr)}</span></h1><div class="grid">
      ${section("Network", dl([["Gateway", dash(sp.gateway)], ["DNS", dash((sp.dnsServers || []).join(", "))], ["Domain", dash(sp.domain)], ["VLAN", dash(sp.vlan)], ["PXE", dash(sp.pxe)], ["Interface", dash(sp.interface)], ["Lease time", dash(sp.leaseTime)]]))}
      ${section("Ranges", dl([["Dynamic", range(sp.dynamicRange)], ["Reserved", (sp.reservedRanges || []).map(range).join("<br>") || "–"], ["Addresses", a.total !== undefined ? `${a.total} total, ${a.dynamic} dynamic, ${a.reserved} reserved, ${a.allocated} static, ${a.free} free` : "–"]]))}
      ${section("Served by", dl([["Agent", dash(d.servedBy && d.servedBy.agent)], ["Since", dash(d.servedBy && time(d.servedBy.since))], ["Candidate nodes", dash((d.candidateNodes || []).join(", "))]]))}
      </div>
      ${section("Static leases", d.allocations.length ? `<table><thead><tr><th>Address</th><th>Deployment</th></tr></thead><tbody>${d.allocations.map((x) => `<tr><td>${esc(x.address)}</td><td>${esc(x.deployment)}</td></tr>`).join("")}</tbody></table>` : `<p class="muted">None. Dynamic leases live in the serving agent's journal.</p>`)}
      ${section("Machines on it", d.machines.length ? `<table><tbody>${d.machines.map((m) => `<tr><td>${link("m", m.key, m.name)}</td><td class="phase p-${esc(m.phase)}">${esc(m.phase)}</td><td>${dash(m.power)}</td></tr>`).join("")}</tbody></table>` : `<p class="muted">None seen.</p>`)}
      ${section("Conditions", conditions(d.conditions))}`;
  }

  // ---- routing and the live stream ----
  function route() {
    const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
    if (parts[0] === "m" && parts.length === 3) return { kind: "machine", key: `${parts[1]}/${parts[2]}` };
    if (parts[0] === "s" && parts.length === 3) return { kind: "subnet", key: `${parts[1]}/${parts[2]}` };
    return { kind: "table" };
  }
  let ready = false;
  function draw() {
    state.route = route();
    const fail = (e) => { view.innerHTML = `<p class="problem">${esc(e.message)}</p>`; };
    if (state.route.kind === "machine") drawMachine(state.route.key).catch(fail);
    else if (state.route.kind === "subnet") drawSubnet(state.route.key).catch(fail);
    else if (ready) {
      drawTable();
      if (probe.firstTable === null) probe.firstTable = performance.now();
    }
  }
  let redraw = null;
  function redrawSoon() { clearTimeout(redraw); redraw = setTimeout(draw, 100); }
  function connect() {
    const es = new EventSource("/api/stream");
    es.addEventListener("open", () => { live.textContent = "live"; live.classList.remove("off"); });
    es.addEventListener("error", () => {
      live.textContent = "reconnecting"; live.classList.add("off");
      if (es.readyState === EventSource.CLOSED) {
        // Refused (401/403) or gone: find out which, then retry.
        fetch("/api/fleet").then((r) => { if (r.status === 401 || r.status === 403) location.href = "/login"; });
        setTimeout(connect, 2000);
      }
    });
    es.addEventListener("snapshot", (e) => {
      const d = JSON.parse(e.data);
      state.machines = new Map(d.machines.map((m) => [m.key, m]));
      state.subnets = new Map(d.subnets.map((s) => [s.key, s]));
      ready = true;
      draw();
    });
    es.addEventListener("rows", (e) => {
      const rows = JSON.parse(e.data);
      upsertRows(rows);
      if (state.route.kind === "machine" && rows.some((m) => m.key === state.route.key)) redrawSoon();
    });
    es.addEventListener("gone", (e) => {
      const key = JSON.parse(e.data);
      state.machines.delete(key);
      if (state.route.kind === "table") view.querySelector(`#machines tr[data-key="${CSS.escape(key)}"]`)?.remove(), applyFilters();
    });
    es.addEventListener("subnet", (e) => {
      const s = JSON.parse(e.data);
      const known = [...state.subnets.values()].some((x) => x.name === s.name);
      state.subnets.set(s.key, s);
      // A new name changes the filter's choices; otherwise only the Subnets table changes
      // (a redraw would take the focus from the filter being typed in).
      if (state.route.kind === "table" && !known) redrawSoon();
      else if (state.route.kind === "table") drawSubnets();
      if (state.route.kind === "subnet" && state.route.key === s.key) redrawSoon();
    });
    es.addEventListener("subnet-gone", (e) => { state.subnets.delete(JSON.parse(e.data)); if (state.route.kind === "table") redrawSoon(); });
    es.addEventListener("deployment", (e) => {
      if (state.route.kind === "machine" && state.route.key === JSON.parse(e.data)) redrawSoon();
    });
  }
  window.addEventListener("hashchange", draw);
  state.route = route();
  if (state.route.kind !== "table") draw();
  connect();
})();
