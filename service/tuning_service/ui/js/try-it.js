// The "Try it" pane of a succeeded job: one prompt (and an optional system message) sent at once to the job's
// base model and to its fine-tune, the two answers streamed side by side (try-column.js). Send (or
// Ctrl/Cmd+Enter) is disabled while they generate; Stop aborts both. Shown only for a succeeded job with a
// fine-tuned model.
import { byId } from "./dom.js";
import { getKey } from "./session.js";
import { createColumn } from "./try-column.js";

const DEFAULTS = { temperature: 0, max_tokens: 128 };

export function createTryIt() {
  const pane = byId("try-it");
  const form = byId("try-form");
  const prompt = byId("try-prompt");
  const system = byId("try-system");
  const temperature = byId("try-temperature");
  const maxTokens = byId("try-max-tokens");
  const send = byId("try-send");
  const stop = byId("try-stop");
  const promptError = byId("try-prompt-error");
  const settingsError = byId("try-settings-error");
  const base = createColumn(byId("try-base"));
  const tuned = createColumn(byId("try-tuned"));
  const models = { base: null, tuned: null };
  let aborter = null;
  let mounted = true;

  function fieldError(input, line, message) {
    input.setAttribute("aria-invalid", "true");
    line.textContent = message;
    input.focus();
  }

  function clearErrors() {
    for (const input of [prompt, temperature, maxTokens]) input.removeAttribute("aria-invalid");
    promptError.textContent = "";
    settingsError.textContent = "";
  }

  // A number box's value; its default when empty; null when it holds something that is not a number (the
  // browser does not say what: refused here). Anything else, out of range too, goes to the service as typed,
  // so its error says what it accepts.
  function numberOf(input, fallback) {
    if (input.validity.badInput) return null;
    return input.value.trim() === "" ? fallback : Number(input.value);
  }

  function setBusy(busy) {
    const focusStop = busy && document.activeElement === send;
    const focusSend = !busy && document.activeElement === stop;
    send.disabled = busy;
    stop.disabled = !busy;
    if (focusStop) stop.focus();
    if (focusSend) send.focus();
  }

  async function generate() {
    if (aborter || !models.tuned) return; // already generating (Ctrl+Enter while busy)
    clearErrors();
    if (!prompt.value.trim()) {
      fieldError(prompt, promptError, "Type a prompt first.");
      return;
    }
    const t = numberOf(temperature, DEFAULTS.temperature);
    if (t === null) return fieldError(temperature, settingsError, "Temperature is not a number.");
    const n = numberOf(maxTokens, DEFAULTS.max_tokens);
    if (n === null) return fieldError(maxTokens, settingsError, "Max tokens is not a number.");
    const messages = [];
    if (system.value.trim()) messages.push({ role: "system", content: system.value });
    messages.push({ role: "user", content: prompt.value });
    const body = { messages, temperature: t, max_tokens: n };
    const mine = new AbortController();
    aborter = mine;
    setBusy(true);
    try {
      await Promise.all([
        base.run({ ...body, model: models.base }, mine.signal),
        tuned.run({ ...body, model: models.tuned }, mine.signal),
      ]);
    } finally {
      if (aborter === mine) aborter = null;
      if (mounted) setBusy(false); // after the view was left, another job's pane may be generating
    }
  }

  function abort() {
    if (aborter) aborter.abort();
  }

  const onSubmit = (event) => {
    event.preventDefault();
    generate();
  };
  const onKey = (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      generate();
    }
  };
  const onStop = () => abort();
  form.addEventListener("submit", onSubmit);
  form.addEventListener("keydown", onKey);
  stop.addEventListener("click", onStop);
  base.reset();
  tuned.reset();
  clearErrors();
  setBusy(false);
  pane.hidden = true;

  return {
    update(job) {
      const open = job.status === "succeeded" && Boolean(job.fine_tuned_model);
      if (!open) {
        abort();
        pane.hidden = true;
        models.base = models.tuned = null;
        return;
      }
      // The fine-tune's base as it is served under it (a QLoRA fine-tune's 4-bit base), adapter off.
      models.base = `${job.fine_tuned_model}:base`;
      models.tuned = job.fine_tuned_model;
      base.setModel(job.model);
      tuned.setModel(models.tuned);
      pane.hidden = false;
    },
    destroy() {
      mounted = false;
      abort();
      form.removeEventListener("submit", onSubmit);
      form.removeEventListener("keydown", onKey);
      stop.removeEventListener("click", onStop);
      base.detach();
      tuned.detach();
      base.setModel("");
      tuned.setModel("");
      clearErrors();
      setBusy(false);
      pane.hidden = true;
      // Signed out (or refused): forget what was typed too. Moving to another job keeps it, to compare.
      if (!getKey()) form.reset();
    },
  };
}
