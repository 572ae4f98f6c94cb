"""OpenAI-compatible HTTP API over the :class:`~zoo.serving.engine.Engine`.

Starlette + uvicorn: a small, well-kept ASGI stack with streaming responses (SSE) and
access to the ``http.disconnect`` message, which is how a client that goes away
frees its batch row and pages. Handlers only validate, tokenize and format; the
model runs on the engine thread.

Routes: ``GET /health``, ``GET /v1/models``, ``POST /v1/completions``,
``POST /v1/chat/completions`` (``stream: true`` for server-sent events).
Errors are OpenAI-shaped: ``{"error": {"message", "type", "param", "code"}}``.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from zoo.serving.engine import Delta, Engine, Finished, QueueFull, SamplingParams


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


class Limits:
    def __init__(self, max_prompt_tokens: int, max_tokens: int, max_n: int = 8):
        self.max_prompt_tokens, self.max_tokens, self.max_n = max_prompt_tokens, max_tokens, max_n


class SSEResponse(StreamingResponse):
    """Streams while listening for ``http.disconnect``; on disconnect the body generator is
    cancelled at once (its ``finally`` cancels the engine sequences), whatever ASGI version
    the server speaks."""

    async def __call__(self, scope, receive, send) -> None:
        async with anyio.create_task_group() as tg:
            async def stream_then_stop() -> None:
                try:
                    await self.stream_response(send)
                except OSError:
                    pass
                tg.cancel_scope.cancel()

            tg.start_soon(stream_then_stop)
            await self.listen_for_disconnect(receive)
            tg.cancel_scope.cancel()


# ---------------------------------------------------------------- request parsing
def _get(body: dict, name: str, kinds: tuple[type, ...], default: Any = None, *, allow_none: bool = True) -> Any:
    value = body.get(name, default)
    if value is None and allow_none:
        return default
    # bool is an int in Python; JSON true is not a number
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = " or ".join("number" if k is float else {int: "integer", str: "string", bool: "boolean",
                                                          list: "array", dict: "object"}.get(k, k.__name__)
                            for k in kinds)
        raise APIError(400, f"'{name}' must be {names}, got {json.dumps(value)[:60]}", param=name,
                       code="invalid_type")
    return value


def _number_in(body: dict, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    v = float(_get(body, name, (int, float), default))
    if v < lo or v > hi or (lo_open and v == lo):
        span = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
        raise APIError(400, f"'{name}' must be in {span}, got {v}", param=name, code="invalid_value")
    return v


def sampling_from_body(body: dict, limits: Limits, default_max_tokens: int) -> tuple[SamplingParams, int, bool]:
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    max_tokens = _get({name: max_tokens}, name, (int,), default_max_tokens)
    if max_tokens < 1:
        raise APIError(400, f"'{name}' must be at least 1, got {max_tokens}", param=name, code="invalid_value")
    if max_tokens > limits.max_tokens:
        raise APIError(400, f"'{name}' is {max_tokens}; this server allows at most {limits.max_tokens}",
                       param=name, code="invalid_value")
    temperature = _number_in(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number_in(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
    seed = _get(body, "seed", (int,))
    n = _get(body, "n", (int,), 1)
    if not 1 <= n <= limits.max_n:
        raise APIError(400, f"'n' must be between 1 and {limits.max_n}, got {n}", param="n", code="invalid_value")
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    elif not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise APIError(400, "'stop' must be a string or an array of strings", param="stop", code="invalid_type")
    if len(stop) > 4:
        raise APIError(400, f"'stop' takes at most 4 sequences, got {len(stop)}", param="stop", code="invalid_value")
    ignore_eos = _get(body, "ignore_eos", (bool,), False)  # vLLM's extension, handy for load tests
    stream = _get(body, "stream", (bool,), False)
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                            stop=tuple(s for s in stop if s), ignore_eos=ignore_eos)
    return params, n, stream


def _message_text(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise APIError(400, f"messages[{i}].content: only text parts are supported",
                               param=f"messages[{i}].content", code="invalid_type")
            parts.append(part["text"])
        return "".join(parts)
    if content is None:
        return ""
    raise APIError(400, f"messages[{i}].content must be a string or an array of text parts",
                   param=f"messages[{i}].content", code="invalid_type")


def parse_messages(body: dict) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty array of {role, content} objects", param="messages",
                       code="invalid_type" if messages is not None else "missing_required_parameter")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise APIError(400, f"messages[{i}] must be an object with a string 'role'", param=f"messages[{i}]",
                           code="invalid_type")
        if m["role"] not in ("system", "developer", "user", "assistant", "tool"):
            raise APIError(400, f"messages[{i}].role '{m['role']}' is not one of system, developer, user, "
                                f"assistant, tool", param=f"messages[{i}].role", code="invalid_value")
        role = "system" if m["role"] == "developer" else m["role"]
        out.append({"role": role, "content": _message_text(m.get("content"), i)})
    return out


# ---------------------------------------------------------------- the app
class Server:
    def __init__(self, engine: Engine, model_name: str, *, max_prompt_tokens: int | None = None,
                 max_tokens: int | None = None, default_max_tokens: int = 16):
        self.engine, self.model_name = engine, model_name
        self.tokenizer = engine.tokenizer
        max_prompt_tokens = min(max_prompt_tokens or engine.max_model_len - 1, engine.max_model_len - 1)
        max_tokens = min(max_tokens or engine.max_model_len - 1, engine.max_model_len - 1)
        self.limits = Limits(max_prompt_tokens, max_tokens)
        self.default_max_tokens = min(default_max_tokens, max_tokens)
        self.created = int(time.time())

    # ---- helpers
    async def _json_body(self, request: Request) -> dict:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise APIError(400, f"the request body is not valid JSON: {err}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object", code="invalid_json")
        model = body.get("model")
        if not isinstance(model, str):
            raise APIError(400, "'model' is required and must be a string", param="model",
                           code="missing_required_parameter" if model is None else "invalid_type")
        if model != self.model_name:
            raise APIError(404, f"The model '{model}' does not exist; this server serves '{self.model_name}'",
                           param="model", code="model_not_found")
        return body

    def _check_prompt(self, prompt: list[int], params: SamplingParams, param: str) -> None:
        if not prompt:
            raise APIError(400, "the prompt is empty", param=param, code="invalid_value")
        if len(prompt) > self.limits.max_prompt_tokens:
            raise APIError(400, f"the prompt has {len(prompt)} tokens; this server accepts at most "
                                f"{self.limits.max_prompt_tokens}", param=param, code="context_length_exceeded")
        try:
            self.engine.check_request(len(prompt), params.max_tokens)
        except ValueError as err:
            raise APIError(400, str(err), param="max_tokens", code="context_length_exceeded") from None

    def _submit(self, prompt: list[int], params: SamplingParams, n: int):
        """Submit n sequences (seeds seed, seed+1, ...); returns them and one asyncio queue of
        (index, event) pairs fed from the engine thread."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        requests = []
        for i in range(n):
            p = params if params.seed is None or i == 0 else _with_seed(params, params.seed + i)

            def sink(event, i=i):
                loop.call_soon_threadsafe(queue.put_nowait, (i, event))

            requests.append((prompt, p, sink))
        try:
            seqs = self.engine.submit_many(requests)  # all n choices queue, or none
        except QueueFull as err:
            raise APIError(503, str(err), code="server_overloaded", type_="server_error") from None
        return seqs, queue

    async def _collect(self, request: Request, seqs, queue) -> list[Finished]:
        results: list[Finished | None] = [None] * len(seqs)
        try:
            while any(r is None for r in results):
                try:
                    i, event = await asyncio.wait_for(queue.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        raise asyncio.CancelledError
                    continue
                if isinstance(event, Finished):
                    results[i] = event
        finally:
            for s in seqs:
                if not s.done:
                    self.engine.cancel(s)
        return results  # type: ignore[return-value]

    @staticmethod
    def _usage(prompt_len: int, results: list[Finished]) -> dict:
        completion = sum(r.completion_tokens for r in results)
        return {"prompt_tokens": prompt_len, "completion_tokens": completion, "total_tokens": prompt_len + completion}

    @staticmethod
    def _check_errors(results: list[Finished]) -> None:
        for r in results:
            if r.reason == "error":
                raise APIError(500, f"generation failed: {r.error}", type_="server_error", code="engine_error")

    # ---- routes
    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": self.model_name, **self.engine.snapshot()})

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "zoo"}]})

    async def chat(self, request: Request) -> Response:
        body = await self._json_body(request)
        messages = parse_messages(body)
        params, n, stream = sampling_from_body(body, self.limits, self.default_max_tokens)
        try:
            prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
        except Exception as err:
            raise APIError(400, f"the chat template failed on these messages: {err}", param="messages",
                           code="invalid_value") from None
        prompt = [int(t) for t in prompt]
        self._check_prompt(prompt, params, "messages")
        seqs, queue = self._submit(prompt, params, n)
        rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if stream:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return SSEResponse(self._chat_stream(rid, prompt, seqs, queue, include_usage),
                               media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        results = await self._collect(request, seqs, queue)
        self._check_errors(results)
        choices = [{"index": i, "message": {"role": "assistant", "content": r.text}, "logprobs": None,
                    "finish_reason": r.reason} for i, r in enumerate(results)]
        return JSONResponse({"id": rid, "object": "chat.completion", "created": int(time.time()),
                             "model": self.model_name, "choices": choices,
                             "usage": self._usage(len(prompt), results)})

    async def completions(self, request: Request) -> Response:
        body = await self._json_body(request)
        prompt_in = body.get("prompt")
        if isinstance(prompt_in, list) and len(prompt_in) == 1 and isinstance(prompt_in[0], (str, list)):
            prompt_in = prompt_in[0]  # a batch of one
        if isinstance(prompt_in, str):
            prompt = [int(t) for t in self.tokenizer.encode(prompt_in)]
        elif isinstance(prompt_in, list) and prompt_in and all(
                isinstance(t, int) and not isinstance(t, bool) for t in prompt_in):
            vocab = self.engine.model.config.vocab_size
            if not all(0 <= t < vocab for t in prompt_in):
                raise APIError(400, f"prompt token ids must be in [0, {vocab})", param="prompt", code="invalid_value")
            prompt = list(prompt_in)
        else:
            raise APIError(400, "'prompt' must be a string or an array of token ids (one prompt per request)",
                           param="prompt", code="invalid_type" if prompt_in is not None else
                           "missing_required_parameter")
        params, n, stream = sampling_from_body(body, self.limits, self.default_max_tokens)
        echo = _get(body, "echo", (bool,), False)
        self._check_prompt(prompt, params, "prompt")
        seqs, queue = self._submit(prompt, params, n)
        rid = f"cmpl-{uuid.uuid4().hex[:24]}"
        prefix = prompt_in if echo and isinstance(prompt_in, str) else ""
        if stream:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return SSEResponse(self._completion_stream(rid, prompt, seqs, queue, include_usage, prefix),
                               media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        results = await self._collect(request, seqs, queue)
        self._check_errors(results)
        choices = [{"index": i, "text": prefix + r.text, "logprobs": None, "finish_reason": r.reason}
                   for i, r in enumerate(results)]
        return JSONResponse({"id": rid, "object": "text_completion", "created": int(time.time()),
                             "model": self.model_name, "choices": choices,
                             "usage": self._usage(len(prompt), results)})

    # ---- streaming bodies
    async def _events(self, seqs, queue):
        """(index, event) until every sequence finished; cancels the rest if the client leaves."""
        open_ = len(seqs)
        try:
            while open_:
                i, event = await queue.get()
                if isinstance(event, Finished):
                    open_ -= 1
                yield i, event
        finally:
            for s in seqs:
                if not s.done:
                    self.engine.cancel(s)

    def _sse(self, payload: dict) -> str:
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    async def _chat_stream(self, rid, prompt, seqs, queue, include_usage):
        created = int(time.time())

        def chunk(choices, usage=None):
            out = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": self.model_name,
                   "choices": choices}
            if include_usage:
                out["usage"] = usage
            return self._sse(out)

        for i in range(len(seqs)):
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                          "finish_reason": None}])
        results = []
        async for i, event in self._events(seqs, queue):
            if isinstance(event, Delta) and event.text:
                yield chunk([{"index": i, "delta": {"content": event.text}, "logprobs": None, "finish_reason": None}])
            elif isinstance(event, Finished):
                results.append(event)
                if event.reason == "error":
                    yield self._sse({"error": {"message": f"generation failed: {event.error}",
                                               "type": "server_error", "param": None, "code": "engine_error"}})
                    continue
                yield chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": event.reason}])
        if include_usage:
            yield chunk([], self._usage(len(prompt), results))
        yield "data: [DONE]\n\n"

    async def _completion_stream(self, rid, prompt, seqs, queue, include_usage, prefix):
        created = int(time.time())

        def chunk(choices, usage=None):
            out = {"id": rid, "object": "text_completion", "created": created, "model": self.model_name,
                   "choices": choices}
            if include_usage:
                out["usage"] = usage
            return self._sse(out)

        if prefix:
            for i in range(len(seqs)):
                yield chunk([{"index": i, "text": prefix, "logprobs": None, "finish_reason": None}])
        results = []
        async for i, event in self._events(seqs, queue):
            if isinstance(event, Delta) and event.text:
                yield chunk([{"index": i, "text": event.text, "logprobs": None, "finish_reason": None}])
            elif isinstance(event, Finished):
                results.append(event)
                if event.reason == "error":  # as in the chat stream: an OpenAI error event, not a choice
                    yield self._sse({"error": {"message": f"generation failed: {event.error}",
                                               "type": "server_error", "param": None, "code": "engine_error"}})
                    continue
                yield chunk([{"index": i, "text": "", "logprobs": None, "finish_reason": event.reason}])
        if include_usage:
            yield chunk([], self._usage(len(prompt), results))
        yield "data: [DONE]\n\n"


def _with_seed(params: SamplingParams, seed: int) -> SamplingParams:
    import dataclasses

    return dataclasses.replace(params, seed=seed)


def build_app(engine: Engine, model_name: str, **limits: Any) -> Starlette:
    """The ASGI app. ``limits``: ``max_prompt_tokens``, ``max_tokens`` (per request),
    ``default_max_tokens``. The engine must be started (``engine.start()``)."""
    server = Server(engine, model_name, **limits)

    def route(handler):
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except APIError as err:
                return err.response()

        return endpoint

    async def not_found(request: Request, exc: Exception) -> Response:
        return APIError(404, f"no route {request.method} {request.url.path}", code="not_found").response()

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return APIError(405, f"method {request.method} is not allowed on {request.url.path}",
                        code="method_not_allowed").response()

    async def internal(request: Request, exc: Exception) -> Response:
        return APIError(500, f"internal error: {type(exc).__name__}: {exc}", type_="server_error",
                        code="internal_error").response()

    routes = [
        Route("/health", route(server.health), methods=["GET"]),
        Route("/v1/models", route(server.models), methods=["GET"]),
        Route("/v1/completions", route(server.completions), methods=["POST"]),
        Route("/v1/chat/completions", route(server.chat), methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed, 500: internal})
    app.state.server = server
    app.state.engine = engine
    return app
