// One answer column of the "Try it" pane: its model's name, the answer as it streams in, a state line and an
// inline error. The column's `data-state` says where it is: idle, waiting (sent, nothing back yet), streaming,
// done, stopped (aborted) or error. Its text is a live region, busy while it streams so that screen readers
// read the answer once it is whole rather than token by token.
import { ApiError } from "./api.js";
import { DURING_STREAM, streamChat } from "./chat-stream.js";

const FINISH = { stop: "the model ended it", length: "max tokens reached" };

function seconds(ms) {
  return `${(ms / 1000).toFixed(1)} s`;
}

export function createColumn(section) {
  const part = (name) => section.querySelector(`[data-part="${name}"]`);
  const modelName = part("model");
  const text = part("text");
  const state = part("state");
  const error = part("error");

  function setState(name, line) {
    section.dataset.state = name;
    state.textContent = line;
    text.setAttribute("aria-busy", String(name === "waiting" || name === "streaming"));
  }

  function fail(message, detail) {
    setState("error", "failed");
    const code = document.createElement("code");
    code.textContent = `(${detail})`;
    error.replaceChildren(`${message} `, code);
  }

  // Each run (and a reset) supersedes the one before: a run still ending (an aborted fetch rejects a moment
  // later) no longer touches the column, nor does anything after `detach()` (the view was left).
  let current = 0;
  let attached = true;

  function reset() {
    current += 1;
    text.textContent = "";
    error.textContent = "";
    setState("idle", "");
  }

  return {
    setModel(model) {
      if (modelName.textContent !== model) modelName.textContent = model;
    },
    reset,
    detach() {
      reset();
      attached = false;
    },
    // Streams one answer into the column; never throws (what went wrong is shown in the column).
    async run(body, signal) {
      reset();
      const me = current;
      const live = () => attached && me === current;
      const started = performance.now();
      const took = () => seconds(performance.now() - started);
      setState("waiting", "waiting for the model…");
      try {
        const { finishReason, usage } = await streamChat(body, {
          signal,
          onText: (piece) => {
            if (!live()) return;
            if (section.dataset.state === "waiting") setState("streaming", "generating…");
            const atEnd = text.scrollTop + text.clientHeight >= text.scrollHeight - 4;
            text.append(piece);
            if (atEnd) text.scrollTop = text.scrollHeight; // follow the answer unless scrolled up
          },
        });
        if (!live()) return;
        const tokens = usage ? `${usage.completion_tokens} tokens` : "answered";
        const why = FINISH[finishReason] || finishReason || "finished";
        setState("done", `done: ${tokens} in ${took()} (${why})`);
      } catch (err) {
        if (!live()) return;
        if (err && err.name === "AbortError") {
          setState("stopped", `stopped after ${took()}`);
        } else if (err instanceof ApiError) {
          const where = err.status === DURING_STREAM ? "during the answer" : `HTTP ${err.status}`;
          fail(err.message, `${err.code}, ${where}`);
        } else {
          // fetch's own failure (the service unreachable, the connection dropped): nothing from the server
          fail(`the request failed: ${err && err.message}`, "network_error");
        }
      }
    },
  };
}
