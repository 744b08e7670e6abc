// Model Doctor's view, shared by the sidebar tab (web/doctor.js) and the full page (web/doctor.html):
// a summary (files, total size, space its fixes would free, problems by kind, models that cannot
// run), where the disk space goes (by family and by precision), and the files grouped by folder with
// their problems and, in a column of their own, the actions. Data from the pack's /modelsmith/doctor
// route. This module only exports; it registers nothing and touches nothing outside `root`.

const WIDE = [
  ["id", "file"], ["family", "family"], ["variant", "variant"], ["layout", "layout"], ["precision", "precision"],
  ["prediction", "prediction"], ["size", "size"], ["problems", "problems"], ["actions", "actions"],
];
const NARROW = [["id", "file"], ["family", "family"], ["size", "size"], ["problems", "problems"], ["actions", "actions"]];
const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
  "#bab0ac", "#86bcb6", "#d37295"];

function value(f, key) {
  const s = f.summary || {};
  if (key === "id") return f.id;
  if (key === "size") return f.size;
  if (key === "problems") return f.problems.length;
  if (key === "layout") return s.layout || s.kind || f.status;
  if (key === "prediction") return (s.prediction || "") + (s.ztsnr ? "+ztsnr" : "");
  if (key === "family" && s.lora) return "lora: " + (s.lora.family || "");
  if (key === "variant" && s.lora) return s.lora.targets || "";
  if (key === "precision" && s.quantization) {
    const counts = Object.assign({}, s.quantization, s.unquantized_layers || {});
    return s.precision + " (" + Object.entries(counts).map(([k, n]) => `${k} ${n}`).join(", ") + ")";
  }
  return s[key] ?? "";
}

export function fmtSize(n) {
  return n >= 1e8 ? (n / 1e9).toFixed(2) + " GB" : (n / 1e6).toFixed(1) + " MB";
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function colorOf(name, i) {
  return PALETTE[i % PALETTE.length];
}

// one horizontal bar split by share of bytes, with a legend
function spaceBar(title, parts, total) {
  const box = el("div", "modelsmith-doctor-space");
  box.dataset.kind = title;
  box.append(el("div", "modelsmith-doctor-space-title", title));
  const bar = el("div", "modelsmith-doctor-bar");
  bar.style.cssText = "display:flex;height:18px;border-radius:3px;overflow:hidden;background:#333;margin:2px 0";
  const legend = el("div", "modelsmith-doctor-legend");
  legend.style.cssText = "display:flex;flex-wrap:wrap;gap:2px 12px;font-size:12px";
  Object.entries(parts).forEach(([name, bytes], i) => {
    const seg = el("div", "modelsmith-doctor-seg");
    seg.dataset.name = name;
    seg.title = `${name}: ${fmtSize(bytes)}`;
    seg.style.cssText = `width:${(100 * bytes) / Math.max(total, 1)}%;background:${colorOf(name, i)}`;
    bar.append(seg);
    const item = el("span", "", `■ ${name} ${fmtSize(bytes)}`);
    item.style.color = colorOf(name, i);
    legend.append(item);
  });
  box.append(bar, legend);
  return box;
}

function summaryBlock(sum) {
  const box = el("div", "modelsmith-doctor-summary");
  box.style.cssText = "display:flex;flex-wrap:wrap;gap:8px;margin:6px 0";
  const card = (label, v, cls) => {
    const c = el("div", "modelsmith-doctor-card " + cls);
    c.style.cssText = "border:1px solid #555;border-radius:4px;padding:4px 10px;min-width:110px";
    c.append(el("div", "", label), el("b", "modelsmith-doctor-card-value", v));
    return c;
  };
  box.append(
    card("files", String(sum.files), "files"),
    card("total size", fmtSize(sum.total_bytes), "total"),
    card("fixes would free", fmtSize(sum.freeable_bytes), "freeable"),
    card("with problems", String(sum.with_problems), "problems"),
    card("cannot run as they are", String(sum.cannot_run.length), "cannot-run"),
  );
  const kinds = el("div", "modelsmith-doctor-kinds");
  kinds.style.cssText = "width:100%;font-size:12px";
  kinds.textContent = Object.keys(sum.problems_by_kind).length
    ? "problems: " + Object.entries(sum.problems_by_kind).map(([k, n]) => `${k} ${n}`).join(", ")
    : "no problems";
  box.append(kinds);
  if (sum.cannot_run.length) {
    const cr = el("div", "modelsmith-doctor-cannot", "cannot run: " + sum.cannot_run.join(", "));
    cr.style.cssText = "width:100%;font-size:12px;color:#e88";
    box.append(cr);
  }
  return box;
}

// root: the element to fill; fetchApi(path, options) -> Response; opts.wide: the full page layout;
// opts.pageUrl: where the full page is (the sidebar offers a button to open it)
export function renderDoctor(root, fetchApi, opts = {}) {
  const columns = opts.wide ? WIDE : NARROW;
  root.innerHTML = "";
  root.classList.add("modelsmith-doctor");
  root.dataset.layout = opts.wide ? "page" : "sidebar";
  root.style.cssText = "padding:8px;overflow:auto;height:100%;font-size:13px;color:var(--fg-color,#ddd);box-sizing:border-box";
  const head = el("div", "modelsmith-doctor-head");
  head.append(el("b", "", "Model Doctor "));
  const filter = el("input", "modelsmith-doctor-filter");
  filter.placeholder = "filter (name, family, problem...)";
  filter.style.cssText = `width:${opts.wide ? "30%" : "60%"};margin:4px`;
  const onlyBad = el("label");
  onlyBad.innerHTML = '<input type="checkbox" class="modelsmith-doctor-onlybad"> only problems';
  const refresh = el("button", "modelsmith-doctor-rescan", "Rescan");
  head.append(filter, onlyBad, refresh);
  if (opts.pageUrl) {
    const open = el("button", "modelsmith-doctor-open-page", "Open full page");
    open.title = "The Model Doctor as a page of its own, wide enough for every column";
    open.onclick = () => window.open(opts.pageUrl, "_blank");
    head.append(open);
  }
  const status = el("div", "modelsmith-doctor-status");
  const overview = el("div", "modelsmith-doctor-overview");
  const table = el("table", "modelsmith-doctor-table");
  table.style.cssText = "border-collapse:collapse;width:100%";
  root.append(head, status, overview, table);
  let files = [];
  let sum = null;
  let sortKey = "id";
  let sortDir = 1;

  function actionsCell(f, td) {
    for (const p of f.problems) {
      if (!p.fix) continue;
      const b = el("button", "modelsmith-doctor-fix", p.fix);
      b.dataset.fix = p.fix;
      b.title = p.why;
      b.onclick = () => runJob("/modelsmith/doctor/fix", { id: f.id, action: p.fix },
        (r) => `${p.fix}: wrote ${r.output}` + (r.note ? ` (${r.note})` : ""));
      td.append(b, " ");
    }
    if (!f.sha256 && f.status === "ok") {
      const b = el("button", "modelsmith-doctor-hashbtn", "hash");
      b.title = "sha256 and the AutoV2 hash (finds duplicates)";
      b.onclick = () => runJob("/modelsmith/doctor/hash", { id: f.id }, (r) => `${f.id}: AutoV2 ${r.autov2}`);
      td.append(b);
    }
  }

  function draw() {
    overview.innerHTML = "";
    if (sum) {
      overview.append(summaryBlock(sum), spaceBar("by family", sum.by_family, sum.total_bytes),
        spaceBar("by precision", sum.by_precision, sum.total_bytes));
    }
    const q = filter.value.toLowerCase();
    const bad = root.querySelector(".modelsmith-doctor-onlybad").checked;
    const rows = files
      .filter((f) => !bad || f.problems.length)
      .filter((f) => !q || JSON.stringify([f.id, f.summary, f.problems]).toLowerCase().includes(q))
      .sort((a, b) => (value(a, sortKey) > value(b, sortKey) ? sortDir : value(a, sortKey) < value(b, sortKey) ? -sortDir : 0));
    table.innerHTML = "";
    const tr = el("tr");
    for (const [key, label] of columns) {
      const th = el("th", "", label + (sortKey === key ? (sortDir > 0 ? " ▲" : " ▼") : ""));
      th.style.cssText = "cursor:pointer;text-align:left;border-bottom:1px solid #666;padding:2px 4px";
      if (key !== "actions") th.onclick = () => { sortDir = sortKey === key ? -sortDir : 1; sortKey = key; draw(); };
      tr.append(th);
    }
    table.append(tr);
    const groups = new Map();
    for (const f of rows) {
      const folder = f.id.split("/")[0];
      if (!groups.has(folder)) groups.set(folder, []);
      groups.get(folder).push(f);
    }
    for (const [folder, items] of [...groups.entries()].sort()) {
      const g = el("tr", "modelsmith-doctor-group");
      g.dataset.folder = folder;
      const gtd = el("td", "", `${folder}/  ·  ${items.length} files, ${fmtSize(items.reduce((a, f) => a + f.size, 0))}`);
      gtd.colSpan = columns.length;
      gtd.style.cssText = "font-weight:bold;padding:8px 4px 2px;border-bottom:1px solid #777";
      g.append(gtd);
      table.append(g);
      for (const f of items) {
        const row = el("tr", "modelsmith-doctor-row");
        row.dataset.id = f.id;
        row.dataset.folder = folder;
        for (const [key] of columns) {
          const td = el("td");
          td.dataset.col = key;
          td.style.cssText = "vertical-align:top;border-bottom:1px solid #333;padding:2px 4px";
          if (key === "problems") {
            for (const p of f.problems) {
              const div = el("div", "modelsmith-doctor-problem", p.why);
              div.dataset.code = p.code;
              td.append(div);
            }
            if (!f.problems.length) td.textContent = "ok";
          } else if (key === "actions") {
            actionsCell(f, td);
          } else if (key === "size") {
            td.textContent = fmtSize(f.size) + " ";
            if (f.sha256) {
              const h = el("div", "modelsmith-doctor-hash", "AutoV2 " + f.sha256.slice(0, 10).toUpperCase());
              h.title = "sha256 " + f.sha256;
              td.append(h);
            }
          } else if (key === "id") {
            td.textContent = f.id.slice(folder.length + 1);
            td.title = f.id;
            // what it runs with (a model) or who uses it (a text encoder / VAE)
            const uses = Object.entries(f.companions || {}).map(([k, ids]) => `${k}: ${ids.map((i) => i.split("/").pop()).join(", ")}`);
            const line = uses.length ? "uses " + uses.join("; ") : f.used_by && f.used_by.length ? "used by " + f.used_by.length + " model(s)" : "";
            if (line) {
              const d = el("div", "modelsmith-doctor-uses", line);
              d.style.cssText = "font-size:11px;opacity:0.75";
              td.append(d);
            }
          } else {
            td.textContent = value(f, key);
          }
          row.append(td);
        }
        table.append(row);
      }
    }
  }

  // one job (a fix or a hash): start it, follow its progress, then rescan so the table shows the result
  async function runJob(path, body, done) {
    status.textContent = `${path.split("/").pop()} ${body.id}...`;
    const r = await fetchApi(path, { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } });
    const j = await r.json();
    if (!r.ok) { status.textContent = j.error; return; }
    for (;;) {
      const res = await (await fetchApi(`/modelsmith/doctor/jobs/${j.job}`)).json();
      if (res.state !== "running") {
        status.textContent = res.state === "done" ? done(res.result) : res.error;
        break;
      }
      status.textContent = `working... ${Math.round((100 * res.done) / Math.max(res.total, 1))}%`;
      await new Promise((ok) => setTimeout(ok, 300));
    }
    await load(status.textContent);
  }

  async function load(keep) {
    status.textContent = "scanning...";
    const r = await (await fetchApi("/modelsmith/doctor")).json();
    files = r.files || [];
    sum = r.summary || null;
    status.textContent = keep || `${files.length} files, ${files.filter((f) => f.problems.length).length} with problems`;
    root.dataset.loaded = "1";
    draw();
  }
  filter.oninput = draw;
  root.querySelector(".modelsmith-doctor-onlybad").onchange = draw;
  refresh.onclick = () => load();
  load();
}
