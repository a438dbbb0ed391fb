"""OpenAI's inference shapes: models, chat completions, completions (docs/openai-compat.md, "Inference").

The request bodies are the one definition of every sampling parameter, its limit and its default: the routes
validate with them, `/openapi.json` publishes them, and `sampling()` hands the worker exactly these values.
A parameter OpenAI has and this service does not implement (`logit_bias`, `tools`, `response_format`...) is
an unknown field: a 400 naming it, never silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from tuning_trainer.schema import INTEGRAL, StrictModel, cross_field

from .base import RequestBody, ResponseModel

MAX_N = 8
MAX_STOP = 4
MAX_STOP_CHARS = 64
MAX_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5
MAX_MESSAGES = 512
MAX_PROMPTS = 16
MAX_MODEL_ID_CHARS = 512

ModelId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_MODEL_ID_CHARS,
        description="A base model of `GET /v1/models`, a fine-tune's `fine_tuned_model`, or `<that>:base` "
        "(the fine-tune's base as it is served under it, adapter off)",
        examples=["tiny-llama", "ft:tiny-llama:key_ab12:demo:ftjob-..."],
    ),
]
_StopText = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
Stop = Annotated[
    _StopText | Annotated[list[_StopText], Field(max_length=MAX_STOP)],
    Field(description=f"Up to {MAX_STOP} sequences; the text ends before the first one generated"),
]


class TextPart(StrictModel):
    type: Literal["text"]
    text: str


class ChatMessage(StrictModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    """Text, or a list of text parts (joined)"""
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(StrictModel):
    include_usage: bool = False
    """Send one last chunk, with empty `choices`, carrying the request's `usage`"""


def _absent(name: str) -> dict[str, Any]:
    """JSON Schema: `name` is absent or null (a request body's null is "the default")."""
    return {"anyOf": [{"not": {"required": [name]}}, {"properties": {name: {"type": "null"}}}]}


def _rules(*rules: dict[str, Any]) -> ConfigDict:
    """The model validators' rules between fields, as JSON Schema (`allOf`), so that the document says
    exactly what is accepted."""
    return ConfigDict(**StrictModel.model_config, json_schema_extra={"allOf": list(rules)})


_STREAMED = {"required": ["stream"], "properties": {"stream": {"const": True}}}


class _Sampling(RequestBody):
    """What chat completions and completions share."""

    model: ModelId
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    """0 picks the most likely token every time (deterministic)"""
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    """Sample from the smallest set of tokens whose probability adds up to this"""
    stop: Stop | None = None
    seed: Annotated[int, Field(ge=0, le=2**63 - 1), INTEGRAL] | None = None
    """The same seed and parameters give the same sample (on the same engine and device)"""
    n: Annotated[int, Field(ge=1, le=MAX_N), INTEGRAL] = 1
    """Choices to generate for each prompt"""
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    stream: bool = False
    """Send Server-Sent Events (`data: {chunk}` ... `data: [DONE]`)"""
    stream_options: StreamOptions | None = None
    user: Annotated[str, Field(max_length=256)] | None = None
    """Accepted and not used"""

    @model_validator(mode="after")
    def _stream_options(self) -> Any:
        if self.stream_options is not None and not self.stream:
            raise cross_field("stream_options", "stream_options is only allowed with stream: true")
        return self

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def sampling(self) -> dict[str, Any]:
        """The parameters the inference worker takes (its protocol, docs/service-internals.md)."""
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": self.stops(),
            "seed": self.seed,
            "n": self.n,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
        }


class ChatCompletionRequest(_Sampling):
    model_config = _rules(
        {"anyOf": [_absent("stream_options"), _STREAMED]},
        {"anyOf": [_absent("max_tokens"), _absent("max_completion_tokens")]},
        {
            "anyOf": [
                _absent("top_logprobs"),
                {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}},
            ]
        },
    )
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    """Rendered with the model's chat template (a fine-tune's: the one saved with its adapter)"""
    max_tokens: Annotated[int, Field(ge=1), INTEGRAL] | None = None
    """Most tokens to generate; default: up to the model's context. Same as `max_completion_tokens`"""
    max_completion_tokens: Annotated[int, Field(ge=1), INTEGRAL] | None = None
    """OpenAI's newer name for `max_tokens`"""
    logprobs: bool = False
    """Return each generated token's log probability"""
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS), INTEGRAL] | None = None
    """With `logprobs`: the most likely alternatives at each position"""

    @model_validator(mode="after")
    def _chat_rules(self) -> Any:
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise cross_field("max_completion_tokens", "give max_tokens or max_completion_tokens")
        if self.top_logprobs is not None and not self.logprobs:
            raise cross_field("top_logprobs", "top_logprobs needs logprobs: true")
        return self

    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Sampling):
    model_config = _rules(
        {"anyOf": [_absent("stream_options"), _STREAMED]},
        # max_tokens 0 scores the prompt: only with echo, and not streamed.
        {
            "anyOf": [
                {"not": {"required": ["max_tokens"]}},
                {"properties": {"max_tokens": {"anyOf": [{"type": "null"}, {"minimum": 1}]}}},
                {
                    "required": ["echo"],
                    "properties": {"echo": {"const": True}, "stream": {"not": {"const": True}}},
                },
            ]
        },
    )
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)]
    """A prompt, or several (each gets `n` choices, in order)"""
    max_tokens: Annotated[int, Field(ge=0), INTEGRAL] = 16
    """Most tokens to generate (OpenAI's default, 16); 0 with `echo` scores the prompt alone"""
    logprobs: Annotated[int, Field(ge=0, le=MAX_COMPLETION_LOGPROBS), INTEGRAL] | None = None
    """Return each token's log probability and this many most likely alternatives"""
    echo: bool = False
    """Return the prompt before the completion (with `logprobs`: the prompt's own log probabilities)"""

    @model_validator(mode="after")
    def _completion_rules(self) -> Any:
        if self.max_tokens == 0 and not self.echo:
            raise cross_field("max_tokens", "max_tokens may be 0 only with echo: true")
        if self.max_tokens == 0 and self.stream:
            raise cross_field("max_tokens", "max_tokens: 0 cannot be streamed")
        return self

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


# ---- responses -------------------------------------------------------------------------------------------


class Usage(ResponseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(ResponseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(ResponseModel):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(ResponseModel):
    content: list[TokenLogprob] | None
    refusal: None = None


FinishReason = Literal["stop", "length"]


class AssistantMessage(ResponseModel):
    role: Literal["assistant"]
    content: str
    refusal: None = None


class ChatChoice(ResponseModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: ChoiceLogprobs | None


class ChatCompletion(ResponseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None


class Delta(ResponseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(ResponseModel):
    index: int
    delta: Delta
    finish_reason: FinishReason | None
    logprobs: ChoiceLogprobs | None


class ChatCompletionChunk(ResponseModel):
    """One Server-Sent Event of a streamed chat completion"""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None
    system_fingerprint: str | None


class CompletionLogprobs(ResponseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    """null for the prompt's first token (nothing predicts it)"""
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(ResponseModel):
    index: int
    text: str
    finish_reason: FinishReason | None
    logprobs: CompletionLogprobs | None


class Completion(ResponseModel):
    """A completion, or (streamed) one Server-Sent Event of it"""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None
    system_fingerprint: str | None


class Model(ResponseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    """`system` for a base model, the owning key's id for a fine-tune"""
    parent: str | None
    """A fine-tune's base model; null for a base model"""
    job_id: str | None
    """The job that trained a fine-tune"""
    method: str | None
    """How a fine-tune was trained: sft, dpo, orpo or simpo"""
    adapter: str | None = None
    """A fine-tune's adapter: lora or qlora (a qlora fine-tune is served on the 4-bit base by default)"""


class ModelList(ResponseModel):
    object: Literal["list"]
    data: list[Model]


class DeletedModel(ResponseModel):
    id: str
    object: Literal["model"]
    deleted: Literal[True]
