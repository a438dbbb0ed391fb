// The job page's training curves, fed by the records its log stream reads: loss, token accuracy, learning
// rate and tokens/s for every job, and for a preference job (dpo, orpo, simpo) the implicit rewards of the
// chosen and rejected answers, their margin and the reward accuracy (train, and eval when the job has a
// validation file). The preference charts stay hidden on an SFT job, whose page looks as it always did.
import { byId } from "./dom.js";
import { createChart } from "./chart.js";
import { fmtInt, fmtNum } from "./format.js";

// Okabe-Ito colours; dash patterns tell the series apart without colour, markers mark the sparse eval points.
const BLUE = "#0072B2";
const VERMILLION = "#D55E00";
const GREEN = "#009E73";
const PURPLE = "#CC79A7";

// The method every job had before preference tuning: no rewards to draw.
const SUPERVISED = "sft";
const PREFERENCE_FIGURES = ["chart-rewards", "chart-margin", "chart-reward-acc"];

const trainAndEval = () => [
  { key: "train", label: "train", color: BLUE },
  { key: "eval", label: "eval", color: VERMILLION, dash: "7 4", markers: true },
];
const three = (v) => fmtNum(v, 3);

function hasRewards(r, prefix = "") {
  return ["chosen", "rejected", "margin", "accuracy"].some((name) => r[`${prefix}rewards_${name}`] != null);
}

export function createJobCharts() {
  const charts = {
    loss: createChart(byId("chart-loss"), { title: "Loss", height: 260, series: trainAndEval() }),
    rewards: createChart(byId("chart-rewards"), {
      title: "Rewards",
      series: [
        { key: "chosen", label: "chosen", color: GREEN },
        { key: "rejected", label: "rejected", color: VERMILLION, dash: "10 3 2 3" },
        { key: "eval_chosen", label: "eval chosen", color: GREEN, dash: "7 4", markers: true },
        { key: "eval_rejected", label: "eval rejected", color: VERMILLION, dash: "2 3", markers: true },
      ],
      format: three,
    }),
    margin: createChart(byId("chart-margin"), {
      title: "Reward margin (chosen − rejected)",
      series: trainAndEval(),
      format: three,
    }),
    rewardAcc: createChart(byId("chart-reward-acc"), {
      title: "Reward accuracy",
      series: trainAndEval(),
      format: three,
    }),
    acc: createChart(byId("chart-acc"), { title: "Token accuracy", series: trainAndEval(), format: three }),
    lr: createChart(byId("chart-lr"), {
      title: "Learning rate",
      series: [{ key: "lr", label: "learning rate", color: GREEN, dash: "2 3" }],
      format: three,
    }),
    tps: createChart(byId("chart-tps"), {
      title: "Tokens per second",
      series: [{ key: "tps", label: "tokens/s", color: PURPLE, dash: "10 3 2 3" }],
      format: fmtInt,
    }),
  };
  let preference = false;

  // Shown as soon as the job says it is a preference job (its space is kept before data arrives), or when a
  // record carries rewards (a method this page does not know yet).
  function showPreference(on) {
    if (!on || preference) return;
    preference = true;
    for (const id of PREFERENCE_FIGURES) byId(id).hidden = false;
  }
  for (const id of PREFERENCE_FIGURES) byId(id).hidden = true;

  return {
    update(job) {
      showPreference(job.method != null && job.method !== SUPERVISED);
    },
    addMetrics(r) {
      charts.loss.add("train", r.step, r.loss);
      charts.acc.add("train", r.step, r.token_accuracy);
      charts.lr.add("lr", r.step, r.learning_rate);
      charts.tps.add("tps", r.step, r.tokens_per_second);
      if (!hasRewards(r)) return;
      showPreference(true);
      charts.rewards.add("chosen", r.step, r.rewards_chosen);
      charts.rewards.add("rejected", r.step, r.rewards_rejected);
      charts.margin.add("train", r.step, r.rewards_margin);
      charts.rewardAcc.add("train", r.step, r.rewards_accuracy);
    },
    // Draws an eval record; returns its line for the log ("eval: step 60, eval loss 1.2, ...").
    addEval(r) {
      charts.loss.add("eval", r.step, r.eval_loss);
      charts.acc.add("eval", r.step, r.eval_token_accuracy);
      let line = `eval: step ${r.step}, eval loss ${fmtNum(r.eval_loss)}, ` +
        `token accuracy ${fmtNum(r.eval_token_accuracy, 3)}`;
      if (!hasRewards(r, "eval_")) return line;
      showPreference(true);
      charts.rewards.add("eval_chosen", r.step, r.eval_rewards_chosen);
      charts.rewards.add("eval_rejected", r.step, r.eval_rewards_rejected);
      charts.margin.add("eval", r.step, r.eval_rewards_margin);
      charts.rewardAcc.add("eval", r.step, r.eval_rewards_accuracy);
      line += `, reward accuracy ${fmtNum(r.eval_rewards_accuracy, 3)}, ` +
        `reward margin ${fmtNum(r.eval_rewards_margin, 3)}`;
      return line;
    },
    truncate(afterStep) {
      for (const c of Object.values(charts)) c.truncate(afterStep);
    },
    finished() {
      for (const c of Object.values(charts)) c.finished();
    },
    destroy() {
      for (const c of Object.values(charts)) c.destroy();
    },
  };
}
