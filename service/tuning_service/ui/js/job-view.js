// The job page: the job object (polled), its log stream (charts and log lines), checkpoints, actions and, once
// it succeeded, the "Try it" pane.
import { apiJson } from "./api.js";
import { byId } from "./dom.js";
import { createChart } from "./chart.js";
import { fmtInt, fmtNum } from "./format.js";
import { createActions } from "./job-actions.js";
import { renderCheckpoints, renderJob } from "./job-panels.js";
import { createLogView } from "./log-view.js";
import { startPolling } from "./poller.js";
import { followEvents } from "./sse.js";
import { isTerminal } from "./states.js";
import { createTryIt } from "./try-it.js";

// Okabe-Ito colours; dash patterns tell the series apart without colour.
const BLUE = "#0072B2";
const VERMILLION = "#D55E00";
const GREEN = "#009E73";
const PURPLE = "#CC79A7";

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

  const charts = {
    loss: createChart(byId("chart-loss"), {
      title: "Loss",
      height: 260,
      series: [
        { key: "train", label: "train", color: BLUE },
        { key: "eval", label: "eval", color: VERMILLION, dash: "7 4", markers: true },
      ],
    }),
    acc: createChart(byId("chart-acc"), {
      title: "Token accuracy",
      series: [
        { key: "train", label: "train", color: BLUE },
        { key: "eval", label: "eval", color: VERMILLION, dash: "7 4", markers: true },
      ],
      format: (v) => fmtNum(v, 3),
    }),
    lr: createChart(byId("chart-lr"), {
      title: "Learning rate",
      series: [{ key: "lr", label: "learning rate", color: GREEN, dash: "2 3" }],
      format: (v) => fmtNum(v, 3),
    }),
    tps: createChart(byId("chart-tps"), {
      title: "Tokens per second",
      series: [{ key: "tps", label: "tokens/s", color: PURPLE, dash: "10 3 2 3" }],
      format: fmtInt,
    }),
  };
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
        charts.loss.add("train", r.step, r.loss);
        charts.acc.add("train", r.step, r.token_accuracy);
        charts.lr.add("lr", r.step, r.learning_rate);
        charts.tps.add("tps", r.step, r.tokens_per_second);
        return;
      case "eval":
        charts.loss.add("eval", r.step, r.eval_loss);
        charts.acc.add("eval", r.step, r.eval_token_accuracy);
        log.append(`eval: step ${r.step}, eval loss ${fmtNum(r.eval_loss)}, ` +
          `token accuracy ${fmtNum(r.eval_token_accuracy, 3)}`, "event");
        return;
      case "log":
        log.append(r.line);
        return;
      case "started":
        if (r.start_step) for (const c of Object.values(charts)) c.truncate(r.start_step);
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
          for (const chart of Object.values(charts)) chart.finished();
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
    for (const chart of Object.values(charts)) chart.destroy();
  };
}
