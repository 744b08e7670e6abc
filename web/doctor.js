// Model Doctor: every file of ComfyUI's model folders at a glance (from the tensors, via the pack's
// /modelsmith/doctor route), with filters, sorting, problems and one-step fixes. Shown as a sidebar
// tab of the frontend's extension manager.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const COLUMNS = [
  ["id", "file"], ["family", "family"], ["variant", "variant"], ["layout", "layout"], ["precision", "precision"],
  ["prediction", "prediction"], ["size", "size"], ["problems", "problems"],
];

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
    return s.precision + " (" + Object.entries(s.quantization).map(([k, n]) => `${k} ${n}`).join(", ") + ")";
  }
  return s[key] ?? "";
}

function fmtSize(n) {
  return n >= 1e8 ? (n / 1e9).toFixed(2) + " GB" : (n / 1e6).toFixed(1) + " MB";
}

async function waitJob(job, status) {
  for (;;) {
    const r = await (await api.fetchApi(`/modelsmith/doctor/jobs/${job}`)).json();
    if (r.state !== "running") return r;
    status.textContent = `working... ${Math.round((100 * r.done) / Math.max(r.total, 1))}%`;
    await new Promise((res) => setTimeout(res, 300));
  }
}

function render(root) {
  root.innerHTML = "";
  root.classList.add("modelsmith-doctor");
  root.style.cssText = "padding:8px;overflow:auto;height:100%;font-size:13px;color:var(--fg-color,#ddd)";
  const head = document.createElement("div");
  head.innerHTML = "<b>Model Doctor</b> ";
  const filter = document.createElement("input");
  filter.placeholder = "filter (name, family, problem...)";
  filter.className = "modelsmith-doctor-filter";
  filter.style.cssText = "width:60%;margin:4px";
  const onlyBad = document.createElement("label");
  onlyBad.innerHTML = '<input type="checkbox" class="modelsmith-doctor-onlybad"> only problems';
  const refresh = document.createElement("button");
  refresh.textContent = "Rescan";
  const status = document.createElement("div");
  status.className = "modelsmith-doctor-status";
  head.append(filter, onlyBad, refresh);
  const table = document.createElement("table");
  table.className = "modelsmith-doctor-table";
  table.style.cssText = "border-collapse:collapse;width:100%";
  root.append(head, status, table);
  let files = [];
  let sortKey = "id";
  let sortDir = 1;

  function draw() {
    const q = filter.value.toLowerCase();
    const bad = root.querySelector(".modelsmith-doctor-onlybad").checked;
    const rows = files
      .filter((f) => !bad || f.problems.length)
      .filter((f) => !q || JSON.stringify([f.id, f.summary, f.problems]).toLowerCase().includes(q))
      .sort((a, b) => (value(a, sortKey) > value(b, sortKey) ? sortDir : value(a, sortKey) < value(b, sortKey) ? -sortDir : 0));
    table.innerHTML = "";
    const tr = document.createElement("tr");
    for (const [key, label] of COLUMNS) {
      const th = document.createElement("th");
      th.textContent = label + (sortKey === key ? (sortDir > 0 ? " ▲" : " ▼") : "");
      th.style.cssText = "cursor:pointer;text-align:left;border-bottom:1px solid #666";
      th.onclick = () => { sortDir = sortKey === key ? -sortDir : 1; sortKey = key; draw(); };
      tr.append(th);
    }
    table.append(tr);
    for (const f of rows) {
      const row = document.createElement("tr");
      row.className = "modelsmith-doctor-row";
      row.dataset.id = f.id;
      for (const [key] of COLUMNS) {
        const td = document.createElement("td");
        td.style.cssText = "vertical-align:top;border-bottom:1px solid #333;padding:2px 4px";
        if (key === "problems") {
          for (const p of f.problems) {
            const div = document.createElement("div");
            div.className = "modelsmith-doctor-problem";
            div.dataset.code = p.code;
            div.textContent = p.why + " ";
            if (p.fix) {
              const b = document.createElement("button");
              b.textContent = p.fix;
              b.className = "modelsmith-doctor-fix";
              b.dataset.fix = p.fix;
              b.onclick = () => runJob("/modelsmith/doctor/fix", { id: f.id, action: p.fix },
                                      (r) => `${p.fix}: wrote ${r.output}` + (r.note ? ` (${r.note})` : ""));
              div.append(b);
            }
            td.append(div);
          }
          if (!f.problems.length) td.textContent = "ok";
        } else if (key === "size") {
          td.textContent = fmtSize(f.size) + " ";
          if (f.sha256) {
            const h = document.createElement("div");
            h.className = "modelsmith-doctor-hash";
            h.textContent = "AutoV2 " + f.sha256.slice(0, 10).toUpperCase();
            h.title = "sha256 " + f.sha256;
            td.append(h);
          } else if (f.status === "ok") {
            const b = document.createElement("button");
            b.textContent = "hash";
            b.className = "modelsmith-doctor-hashbtn";
            b.onclick = () => runJob("/modelsmith/doctor/hash", { id: f.id }, (r) => `${f.id}: AutoV2 ${r.autov2}`);
            td.append(b);
          }
        } else {
          td.textContent = value(f, key);
        }
        row.append(td);
      }
      table.append(row);
    }
  }

  // one job (a fix or a hash): start it, follow its progress, then rescan so the table shows the result
  async function runJob(path, body, done) {
    status.textContent = `${path.split("/").pop()} ${body.id}...`;
    const r = await api.fetchApi(path, { method: "POST", body: JSON.stringify(body) });
    const j = await r.json();
    if (!r.ok) { status.textContent = j.error; return; }
    const res = await waitJob(j.job, status);
    status.textContent = res.state === "done" ? done(res.result) : res.error;
    await load(status.textContent);
  }

  async function load(keep) {
    status.textContent = "scanning...";
    const r = await (await api.fetchApi("/modelsmith/doctor")).json();
    files = r.files || [];
    status.textContent = keep || `${files.length} files, ${files.filter((f) => f.problems.length).length} with problems`;
    root.dataset.loaded = "1";
    draw();
  }
  filter.oninput = draw;
  root.querySelector(".modelsmith-doctor-onlybad").onchange = draw;
  refresh.onclick = () => load();
  load();
}

app.registerExtension({
  name: "modelsmith.doctor",
  async setup() {
    // a sidebar tab of the frontend's extension manager (every frontend the supported ComfyUI
    // versions pin has one); nothing is added to the page outside it and no global is written
    app.extensionManager?.registerSidebarTab?.({
      id: "modelsmith-doctor", icon: "pi pi-heart", title: "Model Doctor", tooltip: "Model Doctor (Modelsmith)",
      type: "custom", render: (el) => render(el),
    });
  },
});
