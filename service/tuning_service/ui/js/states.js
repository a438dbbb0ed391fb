// What the job's state allows (docs/api.md, "The job object" and "Pause and resume").
export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

export function isTerminal(status) {
  return TERMINAL.has(status);
}

export function allowedActions(job, hasCheckpoint) {
  const s = job.status;
  return {
    cancel: !TERMINAL.has(s) && s !== "cancelling",
    pause: s === "queued" || s === "running",
    resume: s === "paused" || ((s === "failed" || s === "cancelled") && hasCheckpoint),
    download: s === "succeeded",
  };
}

// ETA from the trainer when it gives one; else from elapsed time and progress.
export function etaSeconds(job, nowSeconds = Date.now() / 1000) {
  if (job.status !== "running") return null;
  const m = job.metrics || {};
  if (Number.isFinite(m.eta_seconds)) return m.eta_seconds;
  if (job.started_at && m.progress > 0) return ((nowSeconds - job.started_at) * (1 - m.progress)) / m.progress;
  return null;
}

export function statusBadge(node, status) {
  node.textContent = status;
  node.className = `status status-${status}`;
}
