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
  ["training_file", "Training file", (j) => j.training_file],
  ["validation_file", "Validation file", (j) => j.validation_file || NONE],
  ["created", "Created", (j) => fmtTime(j.created_at)],
  ["started", "Started", (j) => fmtTime(j.started_at)],
  ["finished", "Finished", (j) => fmtTime(j.finished_at)],
  ["queue", "Queue position", (j) => (j.queue_position == null ? NONE : String(j.queue_position))],
  ["tokens", "Trained tokens", (j) => fmtInt(j.trained_tokens)],
  ["fine_tuned_model", "Fine-tuned model", (j) => j.fine_tuned_model || NONE],
];

export function renderJob(job) {
  byId("job-title").textContent = job.id;
  statusBadge(byId("job-status"), job.status);
  const stats = byId("job-stats");
  if (!stats.childElementCount) {
    for (const [key, label] of STATS) {
      const cls = key === "fine_tuned_model" ? "stat wide" : "stat";
      stats.append(el("div", { class: cls }, el("dt", {}, label), el("dd", { "data-stat": key }, NONE)));
    }
  }
  const m = job.metrics || {};
  for (const [key, , value] of STATS) {
    const dd = stats.querySelector(`[data-stat="${key}"]`);
    const text = String(value(job, m) ?? NONE);
    if (dd.textContent !== text) dd.textContent = text;
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
