// The job page: the job object (polled), its log stream (charts and log lines), checkpoints, actions and, once
// it succeeded, the "Try it" pane.
import { apiJson } from "./api.js";
import { byId } from "./dom.js";
import { createActions } from "./job-actions.js";
import { createJobCharts } from "./job-charts.js";
import { renderCheckpoints, renderJob } from "./job-panels.js";
import { createLogView } from "./log-view.js";
import { startPolling } from "./poller.js";
import { followEvents } from "./sse.js";
import { isTerminal } from "./states.js";
import { createTryIt } from "./try-it.js";

const STREAM_STATES = {
  live: "live",
  resumed: "reconnected",
  reconnecting: "connection lost, reconnecting…",
  ended: "stream ended",
  error: "stream unavailable",
};

export function mountJob({ id }) {
  const path = encodeURIComponent(id);
  const aborter = new AbortController();
  let job = null;
  let checkpoints = [];
  let streaming = false;
  let streamed = false; // the stream has been read at least once (a finished job's history comes from it)
  let lastSeq = null;

  const charts = createJobCharts();
  const log = createLogView(byId("job-log"), byId("log-follow"));
  const actions = createActions(id, { onChanged: (j) => { show(j); poller.now(); } });
  const tryIt = createTryIt();
  byId("job-stats").replaceChildren();
  byId("job-title").textContent = id;
  byId("job-status").textContent = "";
  byId("stream-state").textContent = "";
  renderCheckpoints([], () => {});

  function show(next) {
    job = next;
    renderJob(job);
    charts.update(job);
    actions.update(job, checkpoints.length > 0);
    tryIt.update(job);
    // The first look reads the whole history (it ends at once for a finished job); a job resumed later (here
    // or elsewhere) streams again from the last record seen.
    if (!streaming && (!streamed || !isTerminal(job.status))) startStream();
  }

  async function refreshCheckpoints() {
    const page = await apiJson(`/v1/tunings.checkpoints/${path}`, { signal: aborter.signal });
    checkpoints = page.data;
    renderCheckpoints(checkpoints, (step, button) => actions.downloadCheckpoint(step, button));
    if (job) actions.update(job, checkpoints.length > 0);
  }

  function onRecord({ data: r }) {
    switch (r.type) {
      case "metrics":
        charts.addMetrics(r);
        return;
      case "eval":
        log.append(charts.addEval(r), "event");
        return;
      case "log":
        log.append(r.line);
        return;
      case "started":
        if (r.start_step) charts.truncate(r.start_step);
        log.append(`started: ${r.total_steps} steps on ${r.device || "?"}` +
          (r.start_step ? `, resuming from step ${r.start_step}` : ""), "event");
        return;
      case "checkpoint":
        log.append(`checkpoint: step ${r.step}`, "event");
        refreshCheckpoints().catch(() => {});
        return;
      case "status":
        log.append(`status: ${r.status}${r.message ? ` (${r.message})` : ""}`, "status");
        if (job && r.status !== job.status) poller.now();
        return;
      default:
        log.append(`${r.type}`, "event");
    }
  }

  function startStream() {
    streaming = true;
    streamed = true;
    let sawTerminal = false;
    followEvents(`/v1/tunings.logs/${path}`, {
      signal: aborter.signal,
      after: lastSeq,
      onEvent: (ev) => {
        lastSeq = ev.id;
        if (ev.data.type === "status" && isTerminal(ev.data.status)) sawTerminal = true;
        onRecord(ev);
      },
      onState: (state) => {
        byId("stream-state").textContent = STREAM_STATES[state] || "";
        if (state === "ended") {
          charts.finished();
          poller.now();
        }
      },
      isFinished: () => sawTerminal,
    }).finally(() => {
      streaming = false;
    });
  }

  const poller = startPolling(async () => {
    const next = await apiJson(`/v1/tunings.get/${path}`, { signal: aborter.signal });
    const changed = !job || job.status !== next.status;
    show(next);
    if (changed) await refreshCheckpoints();
    return isTerminal(next.status) ? 15000 : 2000;
  }, {
    onError: (err) => {
      if (err.status === 404) {
        byId("job-action-error").textContent = `Job ${id} was not found (or belongs to another key).`;
        poller.stop();
      }
    },
  });

  return () => {
    poller.stop();
    aborter.abort();
    actions.destroy();
    tryIt.destroy();
    log.destroy();
    charts.destroy();
  };
}
