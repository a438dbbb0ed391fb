// One streamed chat completion: POST /v1/chat/completions with `stream: true`, read as Server-Sent Events
// from the fetch() body (EventSource cannot POST). Each `data: {chat.completion.chunk}` hands its text to
// `onText`; `data: [DONE]` ends the answer. An error before the stream is the API's JSON error (apiFetch
// throws it); one during the stream comes as `data: {"error": {...}}` with no [DONE] after it. Both, and a
// stream that ends without [DONE], throw an ApiError. An abort (the signal) rejects with an AbortError.
import { ApiError, apiFetch } from "./api.js";
import { readEventStream } from "./sse.js";

export const DURING_STREAM = 0; // the `status` of an error that came inside a 200 stream

export async function streamChat(body, { onText = () => {}, signal } = {}) {
  const response = await apiFetch("/v1/chat/completions", {
    method: "POST",
    json: { ...body, stream: true, stream_options: { include_usage: true } },
    headers: { Accept: "text/event-stream" },
    signal,
  });
  let ended = false;
  let failed = null;
  let finishReason = null;
  let usage = null;

  function onEvent({ data }) {
    if (ended || failed) return; // nothing counts after [DONE] or an error
    const text = data.join("\n");
    if (text === "[DONE]") {
      ended = true;
      return;
    }
    let chunk;
    try {
      chunk = JSON.parse(text);
    } catch {
      failed = new ApiError(DURING_STREAM, { code: "bad_stream", message: `not a JSON chunk: ${text.slice(0, 80)}` });
      return;
    }
    if (chunk.error) {
      failed = new ApiError(DURING_STREAM, chunk.error);
      return;
    }
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices || []) {
      if (choice.index !== 0) continue; // one choice asked for (n = 1)
      const piece = choice.delta && choice.delta.content;
      if (piece) onText(piece);
      if (choice.finish_reason) finishReason = choice.finish_reason;
    }
  }

  await readEventStream(response.body, { onEvent });
  if (failed) throw failed;
  if (!ended) {
    throw new ApiError(DURING_STREAM, {
      code: "stream_incomplete",
      message: "the answer's stream ended before it was complete (no [DONE])",
    });
  }
  return { finishReason, usage };
}
