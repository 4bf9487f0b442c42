"""The OpenAI-compatible HTTP API (FastAPI on uvicorn) in front of the :class:`~.engine.Engine`.

Endpoints: ``POST /v1/completions`` (streaming or not), ``POST /v1/chat/completions`` (400: the base
models have no chat template), ``GET /v1/models``, ``GET /health`` (200 once warmed), ``GET /metrics``
(Prometheus text).  Every bad request gets a 4xx with an OpenAI-style error object
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .engine import Engine, EngineError, QueueFull, RequestParams
from .metrics import ServeMetrics
from .text import Detokenizer, StopMatcher

__all__ = ["ServeConfig", "create_app", "ApiError"]


@dataclass
class ServeConfig:
    model_name: str
    api_key: str | None = None
    max_body_bytes: int = 4 << 20
    max_tokens_limit: int = 1 << 16
    max_prompt_tokens: int = 1 << 17
    max_n: int = 16
    max_stops: int = 16
    chat_template: str | None = None


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.type, "param": self.param,
                                       "code": self.code}}, status_code=self.status, headers=self.headers)


_DISCONNECT_POLL_S = 0.5  # a non-streaming request checks this often whether its client is still there

_UNSUPPORTED = {"echo": False, "best_of": None, "logprobs": None, "suffix": None, "logit_bias": None,
                "presence_penalty": 0, "frequency_penalty": 0}


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass
class Completion:
    prompts: list[list[int]]
    params: RequestParams
    n: int
    stops: list[str]
    stream: bool
    include_usage: bool


def parse_completion(body: Any, cfg: ServeConfig, tokenizer, vocab_size: int) -> Completion:
    """Validate a /v1/completions body (a parsed JSON value) → Completion, or raise ApiError(400/404)."""
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    model = body.get("model", cfg.model_name)
    if not isinstance(model, str):
        raise ApiError(400, "'model' must be a string", "model")
    if model != cfg.model_name:
        raise ApiError(404, f"the model {model!r} does not exist; this server serves {cfg.model_name!r}",
                       "model", "model_not_found")
    for k, default in _UNSUPPORTED.items():
        if k in body and body[k] not in (default, None) and not (k == "echo" and body[k] is False):
            raise ApiError(400, f"'{k}' is not supported by this server", k, "unsupported_parameter")

    def field(name, check, what, default):
        if name not in body or body[name] is None:
            return default
        v = body[name]
        if not check(v):
            raise ApiError(400, f"'{name}' must be {what}, got {json.dumps(v)[:80]}", name)
        return v

    max_tokens = field("max_tokens", lambda v: _is_int(v) and 1 <= v <= cfg.max_tokens_limit,
                       f"an integer in [1, {cfg.max_tokens_limit}]", 16)
    temperature = field("temperature", lambda v: _is_num(v) and v >= 0, "a finite number >= 0", 1.0)
    top_p = field("top_p", lambda v: _is_num(v) and 0 < v <= 1, "a number in (0, 1]", 1.0)
    top_k = field("top_k", lambda v: _is_int(v) and -1 <= v <= vocab_size, f"an integer in [-1, {vocab_size}]", 0)
    seed = field("seed", lambda v: _is_int(v) and 0 <= v < 2**63, "an integer in [0, 2**63)", None)
    n = field("n", lambda v: _is_int(v) and 1 <= v <= cfg.max_n, f"an integer in [1, {cfg.max_n}]", 1)
    stream = field("stream", lambda v: isinstance(v, bool), "a boolean", False)
    ignore_eos = field("ignore_eos", lambda v: isinstance(v, bool), "a boolean", False)
    stop = field("stop", lambda v: isinstance(v, str) or (isinstance(v, list) and len(v) <= cfg.max_stops
                                                           and all(isinstance(s, str) for s in v)),
                 f"a string or a list of at most {cfg.max_stops} strings", [])
    stops = [stop] if isinstance(stop, str) else list(stop)
    so = field("stream_options", lambda v: isinstance(v, dict), "an object", {})
    include_usage = so.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise ApiError(400, "'stream_options.include_usage' must be a boolean", "stream_options")
    if "prompt" not in body:
        raise ApiError(400, "'prompt' is required", "prompt")
    prompts = _parse_prompts(body["prompt"], tokenizer, vocab_size, cfg)
    try:
        params = RequestParams(max_tokens=max_tokens, temperature=float(temperature), top_p=float(top_p),
                               top_k=int(top_k), seed=seed, ignore_eos=ignore_eos)
    except ValueError as e:
        raise ApiError(400, str(e)) from None
    return Completion(prompts, params, n, stops, stream, include_usage)


def _parse_prompts(p: Any, tokenizer, V: int, cfg: ServeConfig) -> list[list[int]]:
    if isinstance(p, str) or (isinstance(p, list) and p and all(_is_int(t) for t in p)):
        items = [p]
    elif isinstance(p, list) and p and all(isinstance(x, (str, list)) for x in p):
        items = p
    else:
        raise ApiError(400, "'prompt' must be a non-empty string, a non-empty list of token ids, or a list of "
                            "those", "prompt")
    out = []
    for x in items:
        if isinstance(x, str):
            if not x:
                raise ApiError(400, "'prompt' is empty", "prompt")
            if tokenizer is None:
                raise ApiError(400, "this server has no tokenizer: send the prompt as token ids", "prompt")
            ids = tokenizer.encode(x)
            if not ids:
                raise ApiError(400, "'prompt' encodes to no tokens", "prompt")
        else:
            if not x or not all(_is_int(t) for t in x):
                raise ApiError(400, "a token-id prompt must be a non-empty list of integers", "prompt")
            bad = [t for t in x if not 0 <= t < V]
            if bad:
                raise ApiError(400, f"prompt token ids outside [0, {V}): {bad[:8]}", "prompt")
            ids = list(x)
        if len(ids) > cfg.max_prompt_tokens:
            raise ApiError(400, f"the prompt has {len(ids)} tokens; the limit is {cfg.max_prompt_tokens}", "prompt")
        out.append(ids)
    return out


class _Choice:
    """One generated sequence: engine events → text deltas, stop strings, finish reason."""

    def __init__(self, index: int, tokenizer, stops: list[str]):
        self.index = index
        self.detok = Detokenizer(tokenizer)
        self.stop = StopMatcher(stops)
        self.text = ""
        self.ids: list[int] = []  # the completion's tokens: up to the one that completes a stop string
        self.finish_reason: str | None = None
        self.req = None

    def on_tokens(self, ids: list[int]) -> tuple[str, list[int]]:
        """→ (new text, the tokens it comes from).  With stop strings the tokens are taken one at a time,
        so that the completion ends at the token that completes a stop string; the tokens the engine
        generated after it (the rest of its decode dispatch) are dropped."""
        if self.finish_reason is not None:
            return "", []
        if not self.stop.stops:
            out, _ = self.stop.feed(self.detok.push(ids))
            taken = list(ids)
        else:
            out, taken = "", []
            for t in ids:
                piece, stopped = self.stop.feed(self.detok.push([t]))
                out += piece
                taken.append(int(t))
                if stopped:
                    self.finish_reason = "stop"
                    self.req.cancel("stop")
                    break
        self.ids += taken
        self.text += out
        return out, taken

    def on_done(self, reason: str) -> str:
        out, stopped = self.stop.feed(self.detok.flush(), final=True)
        self.text += out
        if self.finish_reason is None:
            self.finish_reason = "stop" if stopped or reason == "stop" else "length"
        return out


def create_app(engine: Engine, tokenizer, cfg: ServeConfig, metrics: ServeMetrics | None = None,
               on_ready=None) -> FastAPI:
    """The FastAPI app.  The engine is started (compiled and warmed) in a background thread when the
    app starts; /health answers 503 until then."""
    state = {"error": None}

    async def lifespan(app):
        def warm():
            try:
                info = engine.start()
                if on_ready is not None:
                    on_ready(info)
            except Exception as e:  # reported by /health
                state["error"] = f"{type(e).__name__}: {e}"
                raise

        threading.Thread(target=warm, name="mamba2-jax-warmup", daemon=True).start()
        yield
        await asyncio.to_thread(engine.shutdown, True)

    app = FastAPI(title="mamba2-jax", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        return ApiError(exc.status_code, str(exc.detail), code=None,
                        type="invalid_request_error" if exc.status_code < 500 else "server_error").response()

    @app.exception_handler(Exception)
    async def _internal(request, exc: Exception):
        return ApiError(500, f"internal error: {type(exc).__name__}", type="server_error").response()

    def check_auth(request: Request):
        if cfg.api_key is None:
            return
        h = request.headers.get("authorization", "")
        if h != f"Bearer {cfg.api_key}":
            raise ApiError(401, "invalid or missing API key (Authorization: Bearer KEY)", code="invalid_api_key",
                           type="authentication_error")

    def check_ready():
        if state["error"]:
            raise ApiError(503, f"the engine failed to start: {state['error']}", type="server_error")
        if not engine.ready:
            raise ApiError(503, "the server is warming up (compiling its programs); retry shortly",
                           type="server_error", headers={"Retry-After": "5"})

    async def read_json(request: Request) -> Any:
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > cfg.max_body_bytes):
            raise ApiError(413, f"the request body is larger than {cfg.max_body_bytes} bytes", code="body_too_large")
        chunks, total = [], 0
        async for c in request.stream():
            total += len(c)
            if total > cfg.max_body_bytes:
                raise ApiError(413, f"the request body is larger than {cfg.max_body_bytes} bytes",
                               code="body_too_large")
            chunks.append(c)
        try:
            return json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None

    @app.get("/health")
    async def health():
        if state["error"]:
            return JSONResponse({"status": "error", "error": state["error"]}, status_code=503)
        if not engine.ready:
            return JSONResponse({"status": "warming up"}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def get_metrics():
        if metrics is None:
            raise ApiError(404, "metrics are off")
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models(request: Request):
        check_auth(request)
        return {"object": "list", "data": [{
            "id": cfg.model_name, "object": "model", "created": 0, "owned_by": "mamba2-jax",
            "root": str(getattr(engine.model, "source", {}).get("path", cfg.model_name)),
            "precision": {k: v for k, v in _policy_items(engine.model)
                          if k in ("mode", "param_dtype", "state_dtype", "accum_dtype", "matmul_precision")},
            "slots": engine.S, "state_bytes_per_slot": engine.slot_bytes}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        check_auth(request)
        await read_json(request)
        raise ApiError(400, f"the model {cfg.model_name!r} has no chat template (a base model); "
                            "use /v1/completions", "messages", "no_chat_template")

    @app.post("/v1/completions")
    async def completions(request: Request):
        check_auth(request)
        body = await read_json(request)
        comp = parse_completion(body, cfg, tokenizer, engine.cfg.vocab_size)
        check_ready()
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        choices: list[_Choice] = []
        try:
            for pi, prompt in enumerate(comp.prompts):
                for j in range(comp.n):
                    ch = _Choice(pi * comp.n + j, tokenizer, comp.stops)
                    ch.req = engine.submit(prompt, comp.params, choice=j,
                                           on_event=lambda k, p, i=ch.index: loop.call_soon_threadsafe(
                                               events.put_nowait, (i, k, p)))
                    choices.append(ch)
        except QueueFull as e:
            for ch in choices:
                ch.req.cancel()
            raise ApiError(429, f"server busy: {e}", code="queue_full", type="rate_limit_error",
                           headers={"Retry-After": "1"}) from None
        except EngineError as e:
            for ch in choices:
                ch.req.cancel()
            raise ApiError(503, str(e), type="server_error", headers={"Retry-After": "5"}) from None
        except ValueError as e:
            for ch in choices:
                ch.req.cancel()
            raise ApiError(400, str(e), "prompt") from None
        rid = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())

        def usage():
            comp_tokens = sum(len(ch.ids) for ch in choices)
            prompt_tokens = sum(len(p) for p in comp.prompts)
            cached = sum(max(ch.req.cached_tokens for ch in choices[i * comp.n:(i + 1) * comp.n])
                         for i in range(len(comp.prompts)))
            return {"prompt_tokens": prompt_tokens, "completion_tokens": comp_tokens,
                    "total_tokens": prompt_tokens + comp_tokens, "prompt_tokens_details": {"cached_tokens": cached}}

        def chunk(choice_objs, with_usage=None):
            d = {"id": rid, "object": "text_completion", "created": created, "model": cfg.model_name,
                 "choices": choice_objs}
            if with_usage is not None:
                d["usage"] = with_usage
            return f"data: {json.dumps(d)}\n\n"

        if not comp.stream:
            pending, error = len(choices), None
            try:
                next_check = loop.time() + _DISCONNECT_POLL_S
                while pending:
                    try:
                        i, kind, payload = await asyncio.wait_for(events.get(), _DISCONNECT_POLL_S)
                    except asyncio.TimeoutError:  # waiting for a slot, or a slow step
                        i = None
                    if loop.time() >= next_check:
                        next_check = loop.time() + _DISCONNECT_POLL_S
                        if await request.is_disconnected():  # the client gave up: free its slots (below)
                            return Response(status_code=499)
                    if i is None:
                        continue
                    ch = choices[i]
                    if kind == "tokens":
                        ch.on_tokens(payload)
                    elif kind == "done":
                        ch.on_done(payload)
                        pending -= 1
                    else:
                        error, pending = payload, pending - 1
            finally:
                for ch in choices:
                    if not ch.req.finished:
                        ch.req.cancel()
            if error is not None:
                raise ApiError(500, error, code="nonfinite_logits", type="server_error")
            return {"id": rid, "object": "text_completion", "created": created, "model": cfg.model_name,
                    "choices": [{"index": ch.index, "text": ch.text, "logprobs": None,
                                 "finish_reason": ch.finish_reason, "token_ids": ch.ids}
                                for ch in choices],
                    "usage": usage()}

        async def stream():
            pending = len(choices)
            try:
                while pending:
                    i, kind, payload = await events.get()
                    ch = choices[i]
                    if kind == "tokens":
                        text, taken = ch.on_tokens(payload)
                        if taken:
                            yield chunk([{"index": i, "text": text, "logprobs": None, "finish_reason": None,
                                          "token_ids": taken}])
                    elif kind == "done":
                        pending -= 1
                        text = ch.on_done(payload)
                        yield chunk([{"index": i, "text": text, "logprobs": None,
                                      "finish_reason": ch.finish_reason, "token_ids": []}])
                    else:
                        pending -= 1
                        err = {"message": payload, "type": "server_error", "param": None, "code": "nonfinite_logits"}
                        yield f"data: {json.dumps({'error': err})}\n\n"
                if comp.include_usage:
                    yield chunk([], usage())
                yield "data: [DONE]\n\n"
            finally:  # a client that went away: free its slots at the next scheduler iteration
                for ch in choices:
                    if not ch.req.finished:
                        ch.req.cancel()

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


def _policy_items(model):
    """(key, value) pairs of ``model.policy`` as results record it (none without a policy)."""
    pol = getattr(model, "policy", None)
    return () if pol is None else pol.as_dict().items()
