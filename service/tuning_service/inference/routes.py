"""OpenAI-compatible inference routes: /v1/models, /v1/chat/completions, /v1/completions
(docs/openai-compat.md, "Inference").

The handlers validate with schema/inference.py, resolve `model` for the caller's key (catalogue.py), and
relay the worker's events (worker.py) as OpenAI's objects (shaping.py): gathered into one answer, or as
Server-Sent Events. A request whose client hangs up stops its generation: a streamed one when Starlette
cancels the stream, a whole one when the disconnect is noticed while it waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..api import params
from ..api.auth import authenticate
from ..api.operation import Content, Json
from ..errors import APIError
from ..openai.routes import openai_operation
from ..schema.inference import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    DeletedModel,
    Model,
    ModelList,
)
from . import Inference
from . import shaping as sh
from .catalogue import Target

log = logging.getLogger("tuning_service.inference")
T = TypeVar("T")

MODEL_PATH = {
    "description": "A model id (a fine-tune's contains ':' and may contain '/')",
    "schema": {"type": "string", "pattern": r"^[A-Za-z0-9._:/-]{1,512}$"},
}
ENGINE_ERRORS = {
    503: ("engine_crashed", "engine_unavailable", "engine_overloaded", "no_gpu_available"),
    500: ("model_load_failed", "generation_failed"),
}
GENERATE_ERRORS = {
    400: ("invalid_json", "invalid_request", "invalid_value", "context_length_exceeded"),
    404: ("model_not_found",),
    **ENGINE_ERRORS,
}


def inference(request: Request) -> Inference:
    return request.app.state.inference  # type: ignore[no-any-return]


def _model_id(request: Request) -> str:
    return str(request.path_params["model"])


# ---- models ----------------------------------------------------------------------------------------------


@openai_operation("listModels", "OpenAI: the models this key can call", ok=Json(ModelList, "The models"))
async def list_models(request: Request) -> Response:
    owner = await authenticate(request)
    params.no_query(request)
    return JSONResponse({"object": "list", "data": await inference(request).catalogue.list(owner)})


@openai_operation(
    "getModel",
    "OpenAI: a model",
    path={"model": MODEL_PATH},
    ok=Json(Model, "The model"),
    errors={404: ("model_not_found",)},
)
async def get_model(request: Request) -> Response:
    owner = await authenticate(request)
    params.no_query(request)
    return JSONResponse(await inference(request).catalogue.get(_model_id(request), owner))


@openai_operation(
    "deleteModel",
    "OpenAI: delete a fine-tune (its adapter)",
    path={"model": MODEL_PATH},
    ok=Json(DeletedModel, "Deleted"),
    errors={404: ("model_not_found",), 403: ("model_not_deletable",)},
)
async def delete_model(request: Request) -> Response:
    owner = await authenticate(request)
    params.no_query(request)
    inf = inference(request)
    deleted = await inf.catalogue.delete(_model_id(request), owner)
    model = _model_id(request)
    await inf.worker.call({"op": "evict", "adapter": model.rsplit(":", 1)[-1]})  # only if it runs
    log.info("fine-tune %s deleted", model)
    return JSONResponse(deleted)


# ---- generation ------------------------------------------------------------------------------------------


def _sse_content(model: type[Any]) -> Content:
    return Content(
        {
            "text/event-stream": {
                "type": "string",
                "description": f"`data: <{model.__name__}>` events, then `data: [DONE]`",
            }
        }
    )


@openai_operation(
    "createChatCompletion",
    "OpenAI: chat with a base model or a fine-tune",
    body=Json(ChatCompletionRequest),
    ok=Json(
        ChatCompletion,
        "The answer (with `stream: true`, Server-Sent Events of ChatCompletionChunk)",
        also=(ChatCompletionChunk,),
    ),
    errors=GENERATE_ERRORS,
)
async def chat_completions(request: Request) -> Response:
    owner = await authenticate(request)
    params.no_query(request)
    body = await params.read_body(request, ChatCompletionRequest)
    target = await inference(request).catalogue.resolve(body.model, owner)
    top = (body.top_logprobs or 0) if body.logprobs else None
    job = {
        **target.worker_spec(),
        "kind": "chat",
        "messages": [
            {"role": m.role if m.role != "developer" else "system", "content": m.text()}
            for m in body.messages
        ],
        "max_tokens": body.token_limit(),
        "echo": False,
        "logprobs": top,
        "sampling": body.sampling(),
    }
    return await _answer(request, target, job, body, want_logprobs=body.logprobs)


@openai_operation(
    "createCompletion",
    "OpenAI: complete a prompt (with echo and logprobs: score it)",
    body=Json(CompletionRequest),
    ok=Json(Completion, "The completion (with `stream: true`, Server-Sent Events of it)"),
    errors=GENERATE_ERRORS,
)
async def completions(request: Request) -> Response:
    owner = await authenticate(request)
    params.no_query(request)
    body = await params.read_body(request, CompletionRequest)
    target = await inference(request).catalogue.resolve(body.model, owner)
    job = {
        **target.worker_spec(),
        "kind": "completion",
        "prompts": body.prompts(),
        "max_tokens": body.max_tokens,
        "echo": body.echo,
        "logprobs": body.logprobs,
        "sampling": body.sampling(),
    }
    return await _answer(request, target, job, body, want_logprobs=body.logprobs is not None)


async def _answer(
    request: Request,
    target: Target,
    job: dict[str, Any],
    body: ChatCompletionRequest | CompletionRequest,
    *,
    want_logprobs: bool,
) -> Response:
    prompts, n, echo = job.get("prompts") or [], body.n, bool(job["echo"])
    events = inference(request).worker.generate(job)
    # The first event decides the status: an error before anything was generated (a prompt over the context,
    # a model that does not load) is an HTTP error, streamed or not.
    first = await _until_disconnected(request, _first(events))
    if first["type"] == "error":
        await events.aclose()
        raise _worker_error(first)
    kind = job["kind"]
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        writer = sh.ChunkWriter(kind, target.id, want_logprobs, include_usage, prompts, n, echo)
        return StreamingResponse(
            _stream(writer, events),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    got = sh.Collected()
    try:
        await _until_disconnected(request, _collect(events, got))
    finally:
        await events.aclose()
    if kind == "chat":
        return JSONResponse(sh.chat_completion(sh.new_id("chatcmpl"), target.id, got, want_logprobs))
    return JSONResponse(sh.completion(sh.new_id("cmpl"), target.id, got, want_logprobs, prompts, n, echo))


async def _first(events: AsyncGenerator[dict[str, Any], None]) -> dict[str, Any]:
    async for event in events:
        return event
    raise APIError(503, "engine_crashed", "the inference worker ended the request without an answer")


async def _collect(events: AsyncGenerator[dict[str, Any], None], got: sh.Collected) -> None:
    async for event in events:
        if event["type"] == "error":
            raise _worker_error(event)
        got.add(event)


async def _stream(
    writer: sh.ChunkWriter, events: AsyncGenerator[dict[str, Any], None]
) -> AsyncIterator[bytes]:
    # Starlette cancels this generator when the client goes away; closing `events` closes the worker
    # connection, which stops the generation.
    try:
        async for event in events:
            if event["type"] == "error":
                yield sh.sse(_worker_error(event).body())
                return
            chunk = writer.event(event)
            if chunk:
                yield chunk
        yield sh.DONE
    except APIError as exc:  # the worker died mid-stream: the status line is long gone, so say it in-band
        yield sh.sse(exc.body())
    finally:
        await events.aclose()


def _worker_error(event: dict[str, Any]) -> APIError:
    return APIError(
        int(event.get("status") or 500),
        str(event.get("code")),
        str(event.get("message")),
        param=event.get("param"),
    )


async def _until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Run `work`, abandoning it if the client disconnects first (its generation is then cancelled by the
    caller closing the worker connection)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        log.info("%s: the client disconnected; generation stopped", request.url.path)
        raise APIError(499, "client_closed_request", "the client closed the connection")
    return task.result()


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


routes = [
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
    Route("/v1/models/{model:path}", delete_model, methods=["DELETE"]),
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
]
