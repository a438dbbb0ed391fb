// Cancel, pause, resume and download, each shown only where the job's state allows it.
import { apiJson } from "./api.js";
import { byId } from "./dom.js";
import { downloadAdapter } from "./download.js";
import { allowedActions } from "./states.js";

export function createActions(jobId, { onChanged }) {
  const bar = byId("job-actions");
  const errorLine = byId("job-action-error");
  const buttons = new Map([...bar.querySelectorAll("button[data-action]")].map((b) => [b.dataset.action, b]));

  async function act(action, button) {
    errorLine.textContent = "";
    button.disabled = true;
    try {
      if (action === "download") {
        await downloadAdapter(jobId);
      } else {
        const job = await apiJson(`/v1/tunings.${action}/${encodeURIComponent(jobId)}`, { method: "POST" });
        onChanged(job);
      }
    } catch (err) {
      errorLine.textContent = `${action} failed: ${err.message}`;
    } finally {
      button.disabled = false;
    }
  }

  const handlers = new Map();
  for (const [action, button] of buttons) {
    const handler = () => act(action, button);
    handlers.set(button, handler);
    button.addEventListener("click", handler);
  }

  return {
    update(job, hasCheckpoint) {
      const allowed = allowedActions(job, hasCheckpoint);
      for (const [action, button] of buttons) {
        const show = Boolean(allowed[action]);
        // A hidden button drops focus to <body>: keep keyboard users at the job's (announced) status.
        const hadFocus = !show && document.activeElement === button;
        button.hidden = !show;
        if (hadFocus) byId("job-status").focus();
      }
    },
    async downloadCheckpoint(step, button) {
      errorLine.textContent = "";
      button.disabled = true;
      try {
        await downloadAdapter(jobId, step);
      } catch (err) {
        errorLine.textContent = `download failed: ${err.message}`;
      } finally {
        button.disabled = false;
      }
    },
    destroy() {
      for (const [button, handler] of handlers) button.removeEventListener("click", handler);
      errorLine.textContent = "";
    },
  };
}
