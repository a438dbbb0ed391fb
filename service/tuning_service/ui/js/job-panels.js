// The job page's panels drawn from the job object: stats, hyperparameters, checkpoints, the error panel.
import { byId, el } from "./dom.js";
import { NONE, fmtDuration, fmtInt, fmtNum, fmtTime } from "./format.js";
import { etaSeconds, statusBadge } from "./states.js";

const STATS = [
  ["step", "Step", (j, m) => (m.current_step == null ? NONE : `${m.current_step} / ${m.total_steps ?? "?"}`)],
  ["epoch", "Epoch", (j, m) => (m.current_epoch == null ? NONE : `${m.current_epoch} / ${m.total_epochs ?? "?"}`)],
  ["train_loss", "Train loss", (j, m) => fmtNum(m.train_loss)],
  ["eval_loss", "Eval loss", (j, m) => fmtNum(m.eval_loss)],
  ["train_token_accuracy", "Token accuracy", (j, m) => fmtNum(m.train_token_accuracy, 3)],
  ["learning_rate", "Learning rate", (j, m) => fmtNum(m.learning_rate, 3)],
  ["tokens_per_second", "Tokens/s", (j, m) => fmtInt(m.tokens_per_second)],
  ["eta", "ETA", (j) => fmtDuration(etaSeconds(j))],
  ["duration", "Duration", (j) =>
    fmtDuration(j.duration ?? (j.started_at && !j.finished_at ? Date.now() / 1000 - j.started_at : null))],
  ["model", "Model", (j) => j.model],
  ["method", "Method", (j) => j.method],
  ["adapter", "Adapter", (j) => j.adapter],
  ["from_checkpoint", "From checkpoint", (j) => j.from_checkpoint || NONE],
  ["training_file", "Training file", (j) => j.training_file],
  ["validation_file", "Validation file", (j) => j.validation_file || NONE],
  ["created", "Created", (j) => fmtTime(j.created_at)],
  ["started", "Started", (j) => fmtTime(j.started_at)],
  ["finished", "Finished", (j) => fmtTime(j.finished_at)],
  ["queue", "Queue position", (j) => (j.queue_position == null ? NONE : String(j.queue_position))],
  ["tokens", "Trained tokens", (j) => fmtInt(j.trained_tokens)],
  ["fine_tuned_model", "Fine-tuned model", (j) => j.fine_tuned_model || NONE],
];

const WIDE = new Set(["fine_tuned_model", "from_checkpoint"]);

// The job a from_checkpoint value names ("ftjob-X", "ftjob-X:STEP" or OpenAI's "ftckpt-X-STEP"), or null.
function sourceJob(ref) {
  if (typeof ref !== "string") return null;
  const checkpoint = /^ftckpt-(.+)-[0-9]+$/.exec(ref);
  const job = checkpoint ? `ftjob-${checkpoint[1]}` : ref.split(":")[0];
  return /^ftjob-[A-Za-z0-9_-]+$/.test(job) ? job : null;
}

// A stat's text, or for from_checkpoint a link to the job it names (the text as given, e.g. "ftjob-X:40").
function fillStat(dd, key, text, job) {
  const source = key === "from_checkpoint" ? sourceJob(job.from_checkpoint) : null;
  const href = source ? `#/jobs/${encodeURIComponent(source)}` : null;
  const link = dd.querySelector("a");
  if (dd.textContent === text && (link ? link.getAttribute("href") : null) === href) return;
  if (!href) {
    dd.textContent = text;
    return;
  }
  dd.replaceChildren(el("a", { href }, text));
}

export function renderJob(job) {
  byId("job-title").textContent = job.id;
  statusBadge(byId("job-status"), job.status);
  const stats = byId("job-stats");
  if (!stats.childElementCount) {
    for (const [key, label] of STATS) {
      const cls = WIDE.has(key) ? "stat wide" : "stat";
      stats.append(el("div", { class: cls }, el("dt", {}, label), el("dd", { "data-stat": key }, NONE)));
    }
  }
  const m = job.metrics || {};
  for (const [key, , value] of STATS) {
    fillStat(stats.querySelector(`[data-stat="${key}"]`), key, String(value(job, m) ?? NONE), job);
  }
  const progress = byId("job-progress");
  progress.value = job.status === "succeeded" ? 1 : Number(m.progress) || 0;
  renderHyperparameters(job.hyperparameters || {});
  renderError(job.error);
}

function renderHyperparameters(hp) {
  const dl = byId("job-hp");
  const rows = Object.keys(hp)
    .sort()
    .map((name) => el("div", {}, el("dt", {}, name), el("dd", {}, JSON.stringify(hp[name]))));
  dl.replaceChildren(...rows);
}

function renderError(error) {
  const panel = byId("job-error");
  panel.hidden = !error;
  if (!error) return;
  byId("job-error-code").textContent = error.code || "error";
  const extra = [
    error.param ? `field: ${error.param}` : null,
    error.exit_code != null ? `exit code ${error.exit_code}` : null,
    error.signal ? `signal ${error.signal}` : null,
  ].filter(Boolean);
  byId("job-error-message").textContent = error.message + (extra.length ? ` (${extra.join(", ")})` : "");
  const tail = error.log_tail;
  byId("job-error-tail").textContent = Array.isArray(tail) ? tail.join("\n") : tail || "(no output)";
}

export function renderCheckpoints(checkpoints, onDownload) {
  const body = byId("job-ckpts");
  byId("job-ckpts-empty").hidden = checkpoints.length > 0;
  body.replaceChildren(
    ...checkpoints.map((c) => {
      const button = el("button", { type: "button", class: "small" }, "Download");
      button.setAttribute("aria-label", `Download checkpoint ${c.step}`);
      button.addEventListener("click", () => onDownload(c.step, button));
      return el(
        "tr",
        {},
        el("td", {}, String(c.step)),
        el("td", {}, fmtNum(c.metrics?.train_loss)),
        el("td", {}, fmtTime(c.created_at)),
        el("td", {}, button),
      );
    }),
  );
}
