// trigger.rs dashboard: local times, confirmations, log tools, and live updates over SSE.
// The server renders every fragment; this script only swaps them in.
(function () {
  "use strict";
  var body = document.body;

  function localize(root) {
    root.querySelectorAll("time[datetime]").forEach(function (t) {
      if (t.dataset.local) return;
      var d = new Date(t.getAttribute("datetime"));
      if (isNaN(d)) return;
      t.title = t.textContent;
      t.textContent = d.toLocaleString(undefined, {
        year: "numeric", month: "short", day: "numeric",
        hour: "2-digit", minute: "2-digit", second: "2-digit",
      });
      t.dataset.local = "1";
    });
  }

  function fromHtml(html) {
    var t = document.createElement("template");
    t.innerHTML = html;
    return t.content;
  }

  // Forms that need a second thought.
  document.addEventListener("submit", function (e) {
    var f = e.target;
    if (f.dataset && f.dataset.confirm && !window.confirm(f.dataset.confirm)) e.preventDefault();
  });

  // Copy buttons.
  document.addEventListener("click", function (e) {
    var b = e.target.closest && e.target.closest("[data-copy]");
    if (!b) return;
    var input = document.querySelector(b.dataset.copy);
    if (!input) return;
    input.select();
    if (navigator.clipboard) navigator.clipboard.writeText(input.value).catch(function () {});
    b.textContent = "Copied";
  });

  // Log tools: expand all, minimum level.
  var rank = { trace: 0, debug: 1, info: 2, log: 2, warn: 3, error: 4 };
  function applyLogTools() {
    var logs = document.getElementById("run-logs");
    if (!logs) return;
    var expand = document.getElementById("logs-expand");
    var level = document.getElementById("log-level");
    var min = level && level.value ? rank[level.value] : -1;
    logs.querySelectorAll("li.ev").forEach(function (li) {
      var m = /lvl-(\w+)/.exec(li.className);
      var r = m ? rank[m[1]] : 2;
      li.classList.toggle("hidden", r < min);
      if (expand && expand.dataset.touched) li.querySelector("details").open = expand.checked;
    });
  }
  document.addEventListener("change", function (e) {
    if (e.target.id === "logs-expand") { e.target.dataset.touched = "1"; applyLogTools(); }
    if (e.target.id === "log-level") applyLogTools();
  });

  // Live updates.
  var status = document.getElementById("live-status");
  function setLive(on, text) {
    if (!status) return;
    status.classList.toggle("on", on);
    status.textContent = text;
  }

  function refetchRegion() {
    var region = document.getElementById("live-region");
    if (!region) return;
    fetch(location.href, { headers: { "x-fragment": "1" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        // Keep forms the user has open (a token being completed) untouched.
        if (region.querySelector("details[open]")) return;
        region.innerHTML = html;
        localize(region);
      })
      .catch(function () {});
  }

  function applyRow(data) {
    var tbody = document.getElementById("runs-body");
    var table = document.getElementById("runs-table");
    if (!tbody || !table) return;
    var existing = tbody.querySelector('tr[data-run="' + CSS.escape(data.id) + '"]');
    var row = fromHtml(data.html).firstElementChild;
    if (!row) return;
    if (existing) {
      existing.replaceWith(row);
    } else {
      var first = tbody.querySelector("tr[data-run]");
      var newer = !first || data.id > first.dataset.run;
      if (!(data.matches && newer && table.dataset.firstPage === "true")) return;
      tbody.insertBefore(row, tbody.firstChild);
      var size = parseInt(table.dataset.size || "50", 10);
      var rows = tbody.querySelectorAll("tr[data-run]");
      if (rows.length > size) rows[rows.length - 1].remove();
      var empty = document.getElementById("runs-empty");
      if (empty) empty.remove();
    }
    row.classList.add("flash");
    localize(row);
  }

  var lastSeq = 0;
  function applyRun(data) {
    Object.keys(data.set || {}).forEach(function (id) {
      var el = document.getElementById(id);
      if (!el) return;
      // Leave an open reschedule form alone while the user types in it.
      if (id === "run-actions" && el.querySelector("details[open]")) return;
      el.innerHTML = data.set[id];
      localize(el);
    });
    var logs = document.getElementById("run-logs");
    var html = data.append && data.append["run-logs"];
    if (logs && html) {
      var frag = fromHtml(html);
      Array.prototype.slice.call(frag.children).forEach(function (li) {
        if (parseInt(li.dataset.seq, 10) > lastSeq) logs.appendChild(li);
      });
      localize(logs);
      applyLogTools();
    }
    if (data.lastSeq > lastSeq) lastSeq = data.lastSeq;
    body.dataset.runStatus = data.status;
  }

  function connect() {
    var url = body.dataset.live;
    if (!url || !window.EventSource) return;
    var kind = body.dataset.liveKind;
    var logs = document.getElementById("run-logs");
    if (logs) lastSeq = parseInt(logs.dataset.lastSeq || "0", 10);
    var es = new EventSource(url);
    es.onopen = function () { setLive(true, "live"); };
    es.onerror = function () { setLive(false, "reconnecting…"); };
    es.addEventListener("ready", function () { setLive(true, "live"); });
    es.addEventListener("row", function (e) { setLive(true, "live"); applyRow(JSON.parse(e.data)); });
    es.addEventListener("reload", refetchRegion);
    es.addEventListener("refresh", refetchRegion);
    es.addEventListener("run", function (e) { setLive(true, "live"); applyRun(JSON.parse(e.data)); });
    body.dataset.liveConnected = kind;
  }

  localize(document);
  applyLogTools();
  connect();
})();
