// Server-Sent Events over fetch(): EventSource cannot send an Authorization header (nor POST).
// `readEventStream` parses a response body. `followEvents` follows a job's log with it: it remembers the last
// event id and, after a dropped connection, reconnects with Last-Event-ID so that no record is lost or
// repeated. It stops when the server ends the stream and `isFinished()` agrees (the job reached a terminal
// state), when aborted, or on a 4xx.
import { ApiError, apiFetch } from "./api.js";

// Reads a text/event-stream body to its end: one `onEvent({ id, type, data })` per event (`data` is the list
// of its data lines, `id` null when it set none). A line may arrive split across reads (and a character
// across chunks: the decoder joins those), so text is buffered up to each newline.
export async function readEventStream(body, { onEvent, onRetry = () => {} }) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = { id: null, type: "", data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return; // an event not ended by a blank line is dropped, as the spec says
    buffer += value;
    let nl;
    while ((nl = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, nl).replace(/\r$/, "");
      buffer = buffer.slice(nl + 1);
      if (line === "") {
        if (event.data.length || event.id !== null) onEvent(event);
        event = { id: null, type: "", data: [] };
        continue;
      }
      if (line.startsWith(":")) continue; // a heartbeat comment
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "data") event.data.push(val);
      else if (field === "event") event.type = val;
      else if (field === "id") event.id = val;
      else if (field === "retry" && /^\d+$/.test(val)) onRetry(Number(val));
    }
  }
}

// `after`: the last event id already seen (a restarted follow continues there instead of replaying).
export function followEvents(path, { onEvent, onState = () => {}, isFinished = () => true, signal, after = null }) {
  let lastId = after;
  let retryMs = 2000;
  let failures = 0;

  function dispatch(event) {
    if (event.id !== null) lastId = event.id;
    if (!event.data.length) return;
    let data;
    try {
      data = JSON.parse(event.data.join("\n"));
    } catch {
      return; // not one of ours; the service only sends JSON data
    }
    failures = 0;
    onEvent({ id: lastId, type: event.type || "message", data });
  }

  async function readOnce() {
    const headers = { Accept: "text/event-stream" };
    if (lastId !== null) headers["Last-Event-ID"] = lastId;
    const response = await apiFetch(path, { query: { follow: "true" }, headers, signal });
    onState(lastId === null ? "live" : "resumed");
    await readEventStream(response.body, {
      onEvent: dispatch,
      onRetry: (ms) => { retryMs = ms; },
    });
  }

  const done = (async () => {
    while (!signal.aborted) {
      try {
        await readOnce();
        if (isFinished()) {
          onState("ended");
          return;
        }
      } catch (err) {
        if (signal.aborted) return;
        if (err instanceof ApiError && err.status < 500 && err.status !== 429) {
          onState("error", err);
          return;
        }
      }
      failures += 1;
      const wait = Math.min(30000, retryMs * 2 ** Math.min(failures - 1, 4));
      onState("reconnecting", wait);
      await new Promise((resolve) => {
        const t = setTimeout(resolve, wait * (0.75 + Math.random() / 2));
        signal.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
      });
    }
  })();
  return done;
}
