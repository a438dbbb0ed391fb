"""Typed views of the inference objects: models, chat completions, completions (as in `_models`: frozen,
tolerant of fields they do not know, `raw` kept, and mirroring the service's document field for field).

The shapes are OpenAI's (``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions``), so
code written against the `openai` package reads these the same way: ``completion.choices[0].message.content``,
``chunk.choices[0].delta.content``. A JSON array is a tuple.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._models import _method_and_adapter, _opt_float, _opt_int, _opt_str

__all__ = [
    "AssistantMessage",
    "ChatChoice",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChoiceLogprobs",
    "ChunkChoice",
    "Completion",
    "CompletionChoice",
    "CompletionLogprobs",
    "Delta",
    "Model",
    "ModelDeleted",
    "TokenLogprob",
    "TopLogprob",
    "Usage",
]


def _maps(value: Any) -> list[Mapping[str, Any]]:
    """The objects of a JSON array (anything else in it, or a non-array, is left out)."""
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, (list, tuple)) else []


def _float(value: Any) -> float:
    f = _opt_float(value)
    return 0.0 if f is None else f


def _bytes(value: Any) -> tuple[int, ...] | None:
    if not isinstance(value, (list, tuple)):
        return None
    return tuple(b for b in (_opt_int(v) for v in value) if b is not None)


# ---- models ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Model:
    """A model the service can answer with: a base model of its models directory, or a fine-tune.

    Attributes:
        id: what to pass as ``model=``: a base model's name (``"tiny-llama"``), or a fine-tune's
            ``fine_tuned_model`` (``"ft:tiny-llama:key_ab12:demo:ftjob-..."``; ids may contain ``/``).
        owned_by: ``"system"`` for a base model, the owning API key's id for a fine-tune.
        parent: a fine-tune's base model (None for a base model).
        job_id: the job that trained a fine-tune.
        method: how a fine-tune was trained: ``sft``, ``dpo``, ``orpo`` or ``simpo`` (None for a base model).
        adapter: a fine-tune's adapter: ``lora`` or ``qlora`` (a qlora fine-tune is served on the 4-bit
            base); None for a base model.
        created: Unix seconds.

    Example:
        >>> [m.id for m in client.models.list() if m.parent is not None]   # the fine-tunes
    """

    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = ""
    parent: str | None = None
    job_id: str | None = None
    method: str | None = None
    adapter: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_fine_tune(self) -> bool:
        """True for a fine-tune (it has a parent base model)."""
        return self.parent is not None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Model:
        method, adapter = _method_and_adapter(data)
        return cls(
            id=str(data.get("id", "")),
            object=str(data.get("object", "model")),
            created=_opt_int(data.get("created")) or 0,
            owned_by=_opt_str(data.get("owned_by")) or "",
            parent=_opt_str(data.get("parent")),
            job_id=_opt_str(data.get("job_id")),
            method=method,
            adapter=adapter,
            raw=dict(data),
        )

    def to_dict(self) -> dict[str, Any]:
        """The model object as the service sent it."""
        return dict(self.raw)


@dataclass(frozen=True)
class ModelDeleted:
    """The answer to `models.delete`."""

    id: str
    deleted: bool
    object: str = "model"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelDeleted:
        return cls(
            id=str(data.get("id", "")),
            deleted=bool(data.get("deleted", False)),
            object=str(data.get("object", "model")),
        )


# ---- shared pieces ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """Tokens of a request: the prompt's, the generated ones, and both."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Usage:
        return cls(
            prompt_tokens=_opt_int(data.get("prompt_tokens")) or 0,
            completion_tokens=_opt_int(data.get("completion_tokens")) or 0,
            total_tokens=_opt_int(data.get("total_tokens")) or 0,
        )


def _usage(value: Any) -> Usage | None:
    return Usage.from_dict(value) if isinstance(value, Mapping) else None


@dataclass(frozen=True)
class TopLogprob:
    """One of the most likely tokens at a position, with its log probability and UTF-8 bytes."""

    token: str = ""
    logprob: float = 0.0
    bytes: tuple[int, ...] | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TopLogprob:
        return cls(
            token=str(data.get("token", "")),
            logprob=_float(data.get("logprob")),
            bytes=_bytes(data.get("bytes")),
        )


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log probability (``math.exp(logprob)`` is its probability) and, with
    ``top_logprobs=N``, the N most likely tokens at its position."""

    token: str = ""
    logprob: float = 0.0
    bytes: tuple[int, ...] | None = None
    top_logprobs: tuple[TopLogprob, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TokenLogprob:
        return cls(
            token=str(data.get("token", "")),
            logprob=_float(data.get("logprob")),
            bytes=_bytes(data.get("bytes")),
            top_logprobs=tuple(TopLogprob.from_dict(t) for t in _maps(data.get("top_logprobs"))),
        )


@dataclass(frozen=True)
class ChoiceLogprobs:
    """A chat choice's log probabilities (with ``logprobs=True``): one `TokenLogprob` per generated token."""

    content: tuple[TokenLogprob, ...] | None = None
    refusal: None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChoiceLogprobs:
        content = data.get("content")
        return cls(
            content=tuple(TokenLogprob.from_dict(t) for t in _maps(content))
            if isinstance(content, (list, tuple))
            else None
        )


def _choice_logprobs(value: Any) -> ChoiceLogprobs | None:
    return ChoiceLogprobs.from_dict(value) if isinstance(value, Mapping) else None


# ---- chat completions ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AssistantMessage:
    """The model's answer in a chat choice (``role`` is ``"assistant"``)."""

    role: str = "assistant"
    content: str = ""
    refusal: None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AssistantMessage:
        return cls(
            role=str(data.get("role") or "assistant"),
            content=_opt_str(data.get("content")) or "",
        )

    def to_dict(self) -> dict[str, Any]:
        """As a message to send back in the next request's ``messages``."""
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class ChatChoice:
    """One answer of a chat completion (``n`` > 1 gives several).

    Attributes:
        finish_reason: ``"stop"`` (the model ended, or a stop sequence) or ``"length"`` (the token limit).
    """

    index: int = 0
    message: AssistantMessage = field(default_factory=AssistantMessage)
    finish_reason: str = ""
    logprobs: ChoiceLogprobs | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChatChoice:
        message = data.get("message")
        return cls(
            index=_opt_int(data.get("index")) or 0,
            message=(
                AssistantMessage.from_dict(message) if isinstance(message, Mapping) else AssistantMessage()
            ),
            finish_reason=_opt_str(data.get("finish_reason")) or "",
            logprobs=_choice_logprobs(data.get("logprobs")),
        )


@dataclass(frozen=True)
class ChatCompletion:
    """The answer to ``client.chat.completions.create(...)``.

    Example:
        >>> msgs = [{"role": "user", "content": "Hi"}]
        >>> r = client.chat.completions.create(model="tiny-llama", messages=msgs)
        >>> r.choices[0].message.content, r.usage.total_tokens
    """

    id: str
    object: str = "chat.completion"
    created: int = 0
    model: str = ""
    choices: tuple[ChatChoice, ...] = ()
    usage: Usage = field(default_factory=Usage)
    system_fingerprint: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def text(self) -> str:
        """The first choice's content ("" when there is no choice)."""
        return self.choices[0].message.content if self.choices else ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChatCompletion:
        return cls(
            id=str(data.get("id", "")),
            object=str(data.get("object", "chat.completion")),
            created=_opt_int(data.get("created")) or 0,
            model=str(data.get("model", "")),
            choices=tuple(ChatChoice.from_dict(c) for c in _maps(data.get("choices"))),
            usage=_usage(data.get("usage")) or Usage(),
            system_fingerprint=_opt_str(data.get("system_fingerprint")),
            raw=dict(data),
        )

    def to_dict(self) -> dict[str, Any]:
        """The completion as the service sent it."""
        return dict(self.raw)


@dataclass(frozen=True)
class Delta:
    """What a streamed chunk adds to a choice: the ``role`` (first chunk) and/or more ``content``."""

    role: str | None = None
    content: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Delta:
        return cls(role=_opt_str(data.get("role")), content=_opt_str(data.get("content")))


@dataclass(frozen=True)
class ChunkChoice:
    """One choice's piece of a streamed chat completion; `finish_reason` is set on its last chunk."""

    index: int = 0
    delta: Delta = field(default_factory=Delta)
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChunkChoice:
        delta = data.get("delta")
        return cls(
            index=_opt_int(data.get("index")) or 0,
            delta=Delta.from_dict(delta) if isinstance(delta, Mapping) else Delta(),
            finish_reason=_opt_str(data.get("finish_reason")),
            logprobs=_choice_logprobs(data.get("logprobs")),
        )


@dataclass(frozen=True)
class ChatCompletionChunk:
    """One event of a streamed chat completion (``stream=True``). With
    ``stream_options={"include_usage": True}`` a last chunk with no choices carries the `usage`.

    Example:
        >>> for chunk in client.chat.completions.create(model=m, messages=msgs, stream=True):
        ...     print(chunk.text, end="", flush=True)
    """

    id: str
    object: str = "chat.completion.chunk"
    created: int = 0
    model: str = ""
    choices: tuple[ChunkChoice, ...] = ()
    usage: Usage | None = None
    system_fingerprint: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def text(self) -> str:
        """The first choice's new content ("" when none)."""
        return (self.choices[0].delta.content or "") if self.choices else ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChatCompletionChunk:
        return cls(
            id=str(data.get("id", "")),
            object=str(data.get("object", "chat.completion.chunk")),
            created=_opt_int(data.get("created")) or 0,
            model=str(data.get("model", "")),
            choices=tuple(ChunkChoice.from_dict(c) for c in _maps(data.get("choices"))),
            usage=_usage(data.get("usage")),
            system_fingerprint=_opt_str(data.get("system_fingerprint")),
            raw=dict(data),
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.raw)


# ---- completions -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompletionLogprobs:
    """A completion choice's log probabilities (``logprobs=N``), one entry per token of its text (with
    ``echo=True`` the prompt's tokens first: ``token_logprobs[0]`` is None, nothing predicts the first token).

    Attributes:
        tokens: the tokens; token_logprobs: each one's log probability; top_logprobs: the N most likely tokens
            at each position (token -> log probability); text_offset: where each token starts in the text.
    """

    tokens: tuple[str, ...] = ()
    token_logprobs: tuple[float | None, ...] = ()
    top_logprobs: tuple[Mapping[str, float] | None, ...] = ()
    text_offset: tuple[int, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompletionLogprobs:
        def seq(name: str) -> list[Any]:
            value = data.get(name)
            return list(value) if isinstance(value, (list, tuple)) else []

        return cls(
            tokens=tuple(str(t) for t in seq("tokens")),
            token_logprobs=tuple(_opt_float(v) for v in seq("token_logprobs")),
            top_logprobs=tuple(
                {str(k): _float(v) for k, v in t.items()} if isinstance(t, Mapping) else None
                for t in seq("top_logprobs")
            ),
            text_offset=tuple(_opt_int(v) or 0 for v in seq("text_offset")),
        )


@dataclass(frozen=True)
class CompletionChoice:
    """One text of a completion (``n`` > 1 gives several per prompt; several prompts: in order).
    `finish_reason` is None on a streamed chunk that is not the choice's last."""

    index: int = 0
    text: str = ""
    finish_reason: str | None = None
    logprobs: CompletionLogprobs | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompletionChoice:
        logprobs = data.get("logprobs")
        return cls(
            index=_opt_int(data.get("index")) or 0,
            text=_opt_str(data.get("text")) or "",
            finish_reason=_opt_str(data.get("finish_reason")),
            logprobs=CompletionLogprobs.from_dict(logprobs) if isinstance(logprobs, Mapping) else None,
        )


@dataclass(frozen=True)
class Completion:
    """The answer to ``client.completions.create(...)``, or (``stream=True``) one event of it.

    Example:
        >>> r = client.completions.create(model="tiny-llama", prompt="Once upon a time", max_tokens=20)
        >>> r.choices[0].text
    """

    id: str
    object: str = "text_completion"
    created: int = 0
    model: str = ""
    choices: tuple[CompletionChoice, ...] = ()
    usage: Usage | None = None
    system_fingerprint: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def text(self) -> str:
        """The first choice's text ("" when there is no choice)."""
        return self.choices[0].text if self.choices else ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Completion:
        return cls(
            id=str(data.get("id", "")),
            object=str(data.get("object", "text_completion")),
            created=_opt_int(data.get("created")) or 0,
            model=str(data.get("model", "")),
            choices=tuple(CompletionChoice.from_dict(c) for c in _maps(data.get("choices"))),
            usage=_usage(data.get("usage")),
            system_fingerprint=_opt_str(data.get("system_fingerprint")),
            raw=dict(data),
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.raw)
