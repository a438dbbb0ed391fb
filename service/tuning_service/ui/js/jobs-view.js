// The jobs list: one page of the cursor-paginated list API, refreshed live (faster while a job on the page
// is active), filtered by status. Rows are updated in place so focus and scroll stay where they are.
import { apiJson } from "./api.js";
import { byId, el } from "./dom.js";
import { NONE, fmtDuration, fmtNum, fmtPercent, fmtTime } from "./format.js";
import { startPolling } from "./poller.js";
import { etaSeconds, isTerminal, statusBadge } from "./states.js";

const PAGE_SIZE = 25;
// Kept across visits to a job page and back: the same filter and page.
const state = { status: "", cursors: [] };

const COLUMNS = ["Job", "Status", "Model", "Progress", "Loss", "ETA", "Created", "Finished"];

function newRow(job) {
  const link = el("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, job.id);
  const badge = el("span", {});
  const bar = el("progress", { max: 1, value: 0 });
  const pct = el("span", { class: "pct" });
  const cells = [
    el("th", { scope: "row" }, link),
    el("td", {}, badge),
    el("td", {}),
    el("td", { class: "progress-cell" }, bar, pct),
    el("td", {}),
    el("td", {}),
    el("td", {}),
    el("td", {}),
  ];
  cells.forEach((cell, i) => cell.setAttribute("data-label", COLUMNS[i]));
  const tr = el("tr", { "data-job": job.id }, ...cells);
  tr.parts = { badge, bar, pct, cells };
  return tr;
}

function updateRow(tr, job) {
  const { badge, bar, pct, cells } = tr.parts;
  const m = job.metrics || {};
  const progress = job.status === "succeeded" ? 1 : Number(m.progress) || 0;
  statusBadge(badge, job.status);
  cells[2].textContent = job.model;
  bar.value = progress;
  bar.setAttribute("aria-label", `Progress of ${job.id}`);
  pct.textContent = m.progress == null && job.status !== "succeeded" ? NONE : fmtPercent(progress);
  cells[4].textContent = fmtNum(m.train_loss);
  cells[5].textContent = fmtDuration(etaSeconds(job));
  cells[6].textContent = fmtTime(job.created_at);
  cells[7].textContent = fmtTime(job.finished_at);
}

export function mountJobs() {
  const body = byId("jobs-body");
  const filter = byId("status-filter");
  const older = byId("jobs-next");
  const newer = byId("jobs-newer");
  const rows = new Map();
  let lastPage = null;
  body.replaceChildren();
  filter.value = state.status;

  function render(page) {
    lastPage = page;
    const order = page.data.map((job) => {
      let tr = rows.get(job.id);
      if (!tr) {
        tr = newRow(job);
        rows.set(job.id, tr);
      }
      updateRow(tr, job);
      return tr;
    });
    const current = [...body.children];
    if (current.length !== order.length || current.some((tr, i) => tr !== order[i])) {
      body.replaceChildren(...order);
    }
    for (const id of rows.keys()) if (!page.data.some((j) => j.id === id)) rows.delete(id);
    byId("jobs-empty").hidden = page.data.length > 0;
    older.disabled = !page.has_more;
    newer.disabled = state.cursors.length === 0;
    byId("jobs-updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
  }

  const poller = startPolling(async () => {
    const after = state.cursors[state.cursors.length - 1];
    const status = state.status;
    const page = await apiJson("/v1/tunings.list", { query: { limit: PAGE_SIZE, after, status } });
    // The filter or page changed while this request was in flight: its answer is stale.
    if (status !== state.status || after !== state.cursors[state.cursors.length - 1]) return 0;
    render(page);
    return page.data.some((j) => !isTerminal(j.status)) ? 2000 : 10000;
  }, {
    onError: (err) => {
      byId("jobs-updated").textContent = `Update failed (${err.message}); retrying`;
    },
  });

  function reload() {
    rows.clear();
    body.replaceChildren();
    poller.now();
  }
  function onFilter() {
    state.status = filter.value;
    state.cursors = [];
    reload();
  }
  function onOlder() {
    if (!lastPage?.has_more) return;
    state.cursors.push(lastPage.last_id);
    reload();
  }
  function onNewer() {
    state.cursors.pop();
    reload();
  }
  filter.addEventListener("change", onFilter);
  older.addEventListener("click", onOlder);
  newer.addEventListener("click", onNewer);

  return () => {
    poller.stop();
    filter.removeEventListener("change", onFilter);
    older.removeEventListener("click", onOlder);
    newer.removeEventListener("click", onNewer);
    body.replaceChildren();
  };
}
