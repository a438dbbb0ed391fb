"""`client.completions`: OpenAI's (legacy) text completions: continue a prompt, or score it (``echo`` with
``logprobs``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, overload

from .. import _http
from .._inference import Completion
from .._streaming import Stream
from ._shared import _not_none, _open_stream

PATH = "/v1/completions"

__all__ = ["Completions"]


class Completions:
    """Text completions. Reached as ``client.completions``."""

    def __init__(self, transport: _http.Transport) -> None:
        self._t = transport

    @overload
    def create(
        self,
        *,
        model: str,
        prompt: str | Sequence[str],
        stream: Literal[False] = False,
        max_tokens: int | None = None,
        echo: bool | None = None,
        logprobs: int | None = None,
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
    ) -> Completion: ...

    @overload
    def create(
        self,
        *,
        model: str,
        prompt: str | Sequence[str],
        stream: Literal[True],
        max_tokens: int | None = None,
        echo: bool | None = None,
        logprobs: int | None = None,
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
    ) -> Stream[Completion]: ...

    @overload
    def create(
        self,
        *,
        model: str,
        prompt: str | Sequence[str],
        stream: bool,
        max_tokens: int | None = None,
        echo: bool | None = None,
        logprobs: int | None = None,
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
    ) -> Completion | Stream[Completion]: ...

    def create(
        self,
        *,
        model: str,
        prompt: str | Sequence[str],
        stream: bool = False,
        max_tokens: int | None = None,
        echo: bool | None = None,
        logprobs: int | None = None,
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
    ) -> Completion | Stream[Completion]:
        """Continue a prompt with the model, no chat template (``POST /v1/completions``).

        Parameters left None are not sent: the service's defaults apply (``max_tokens`` 16, as OpenAI's).

        Args:
            model: a base model or a fine-tune's id.
            prompt: a prompt, or several (each gets `n` choices, in order).
            stream: yield the text as it is generated: returns a `Stream` of `Completion` chunks.
            max_tokens: most tokens to generate; 0 (with ``echo=True``) scores the prompt alone.
            echo: return the prompt before the completion (with `logprobs`: the prompt's own log
                probabilities, which is how to score a text).
            logprobs: 0..5: return each token's log probability and this many most likely alternatives.
            temperature, top_p, stop, seed, n, presence_penalty, frequency_penalty, stream_options, user,
                timeout: as for ``client.chat.completions.create``.

        Returns:
            A `Completion`; with ``stream=True`` a `Stream` of `Completion` chunks.

        Raises:
            BadRequestError: an invalid parameter, or a prompt longer than the model's context
                (``context_length_exceeded``, ``param="prompt"``).
            NotFoundError: no such model (``model_not_found``).
            InternalServerError: 503 ``engine_unavailable`` / ``no_gpu_available`` / ``engine_crashed``.

        Example:
            >>> r = client.completions.create(model="tiny-llama", prompt="The capital of France is",
            ...                               max_tokens=0, echo=True, logprobs=0)
            >>> sum(lp for lp in r.choices[0].logprobs.token_logprobs if lp is not None)   # log P(text)
        """
        body = {
            "model": model,
            "prompt": prompt if isinstance(prompt, str) else list(prompt),
            **_not_none(
                {
                    "stream": True if stream else None,
                    "max_tokens": max_tokens,
                    "echo": echo,
                    "logprobs": logprobs,
                    "temperature": temperature,
                    "top_p": top_p,
                    "stop": stop if stop is None or isinstance(stop, str) else list(stop),
                    "seed": seed,
                    "n": n,
                    "presence_penalty": presence_penalty,
                    "frequency_penalty": frequency_penalty,
                    "stream_options": dict(stream_options) if stream_options is not None else None,
                    "user": user,
                }
            ),
        }
        if stream:
            return _open_stream(self._t, PATH, body, Completion.from_dict, timeout=timeout)
        return Completion.from_dict(self._t.request("POST", PATH, json_body=body, timeout=timeout))
