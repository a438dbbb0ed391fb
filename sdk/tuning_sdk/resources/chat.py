"""`client.chat.completions`: OpenAI's chat completions, answered by a base model or a fine-tune."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, overload

from .. import _http
from .._inference import ChatCompletion, ChatCompletionChunk
from .._streaming import Stream
from ._shared import _not_none, _open_stream

PATH = "/v1/chat/completions"

__all__ = ["Chat", "ChatCompletions"]


class ChatCompletions:
    """Chat completions. Reached as ``client.chat.completions``."""

    def __init__(self, transport: _http.Transport) -> None:
        self._t = transport

    @overload
    def create(
        self,
        *,
        model: str,
        messages: Iterable[Mapping[str, Any]],
        stream: Literal[False] = False,
        max_tokens: int | None = None,
        max_completion_tokens: int | None = None,
        logprobs: bool | None = None,
        top_logprobs: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        n: int | None = None,
        presence_penalty: float | None = None,
        frequency_penalty: float | None = None,
        stream_options: Mapping[str, Any] | None = None,
        user: str | None = None,
        timeout: float | None = None,
    ) -> ChatCompletion: ...

    @overload
    def create(
        self,
        *,
        model: str,
        messages: Iterable[Mapping[str, Any]],
        stream: Literal[True],
        max_tokens: int | None = None,
        max_completion_tokens: int | None = None,
        logprobs: bool | None = None,
        top_logprobs: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        n: int | None = None,
        presence_penalty: float | None = None,
        frequency_penalty: float | None = None,
        stream_options: Mapping[str, Any] | None = None,
        user: str | None = None,
        timeout: float | None = None,
    ) -> Stream[ChatCompletionChunk]: ...

    @overload
    def create(
        self,
        *,
        model: str,
        messages: Iterable[Mapping[str, Any]],
        stream: bool,
        max_tokens: int | None = None,
        max_completion_tokens: int | None = None,
        logprobs: bool | None = None,
        top_logprobs: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        n: int | None = None,
        presence_penalty: float | None = None,
        frequency_penalty: float | None = None,
        stream_options: Mapping[str, Any] | None = None,
        user: str | None = None,
        timeout: float | None = None,
    ) -> ChatCompletion | Stream[ChatCompletionChunk]: ...

    def create(
        self,
        *,
        model: str,
        messages: Iterable[Mapping[str, Any]],
        stream: bool = False,
        max_tokens: int | None = None,
        max_completion_tokens: int | None = None,
        logprobs: bool | None = None,
        top_logprobs: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        n: int | None = None,
        presence_penalty: float | None = None,
        frequency_penalty: float | None = None,
        stream_options: Mapping[str, Any] | None = None,
        user: str | None = None,
        timeout: float | None = None,
    ) -> ChatCompletion | Stream[ChatCompletionChunk]:
        """Generate the assistant's next message for a conversation (``POST /v1/chat/completions``).

        The messages are rendered with the model's chat template (a fine-tune's: the one saved with its
        adapter). Parameters left None are not sent: the service's defaults apply (temperature 1, top_p 1,
        n 1, no token limit but the model's context).

        Args:
            model: a base model (``"tiny-llama"``) or a fine-tune's id (``job.fine_tuned_model``); see
                ``client.models.list()``.
            messages: ``[{"role": "system"|"developer"|"user"|"assistant", "content": "..."}, ...]``.
            stream: yield the answer as it is generated: returns a `Stream` of `ChatCompletionChunk`.
            max_tokens / max_completion_tokens: most tokens to generate (give one of them).
            temperature: 0..2 (0: the most likely token every time). top_p: nucleus sampling, (0, 1].
            stop: up to 4 sequences; the text ends before the first one generated.
            seed: the same seed and parameters give the same sample (same engine and device).
            n: answers to generate (1..8), in ``choices``.
            presence_penalty / frequency_penalty: -2..2.
            logprobs: return each generated token's log probability; top_logprobs: 0..20 alternatives each.
            stream_options: with ``stream=True``: ``{"include_usage": True}`` adds a last chunk with `usage`.
            user: accepted and not used.
            timeout: seconds to wait for the answer to begin and for each read of it (default: the
                client's); a cold start loads the model first.

        Returns:
            A `ChatCompletion`; with ``stream=True`` a `Stream` of `ChatCompletionChunk` (iterate it; close
            it, or use it as a context manager, to stop early: the service stops generating).

        Raises:
            BadRequestError: an invalid parameter (``invalid_request`` / ``invalid_value``, ``param`` names
                it) or a conversation longer than the model's context (``context_length_exceeded``,
                ``param="messages"``).
            NotFoundError: no such model for this key (``model_not_found``).
            InternalServerError: 503 ``engine_unavailable`` / ``no_gpu_available`` / ``engine_crashed``
                (retried first, honouring ``Retry-After``; inside a stream that has begun: raised by the
                iteration, never retried).

        Example:
            >>> msgs = [{"role": "user", "content": "Hello"}]
            >>> r = client.chat.completions.create(model=job.fine_tuned_model, messages=msgs, max_tokens=50)
            >>> r.choices[0].message.content
        """
        body = {
            "model": model,
            "messages": [dict(m) for m in messages],
            **_not_none(
                {
                    "stream": True if stream else None,
                    "temperature": temperature,
                    "top_p": top_p,
                    "max_tokens": max_tokens,
                    "max_completion_tokens": max_completion_tokens,
                    "stop": stop if stop is None or isinstance(stop, str) else list(stop),
                    "seed": seed,
                    "n": n,
                    "presence_penalty": presence_penalty,
                    "frequency_penalty": frequency_penalty,
                    "logprobs": logprobs,
                    "top_logprobs": top_logprobs,
                    "stream_options": dict(stream_options) if stream_options is not None else None,
                    "user": user,
                }
            ),
        }
        if stream:
            return _open_stream(self._t, PATH, body, ChatCompletionChunk.from_dict, timeout=timeout)
        return ChatCompletion.from_dict(self._t.request("POST", PATH, json_body=body, timeout=timeout))


class Chat:
    """Reached as ``client.chat``; its one resource is ``client.chat.completions``."""

    def __init__(self, transport: _http.Transport) -> None:
        self.completions = ChatCompletions(transport)
