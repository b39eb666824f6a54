"""The front door of every engine `serve` starts: requests an engine cannot serve are answered with a 4xx here,
before they reach it.

Each engine fails differently on hostile input, measured on this project's model: llama-server crashed on a
body nested 200,000 arrays deep and answered 200 to an unknown model, a 20 MB body and temperature 1e9;
transformers serve stopped its continuous-batching loop on a prompt longer than its cache and then answered 503
to everyone; vLLM accepted `n` up to 16,384. So one set of checks runs in front of all of them: `Guard`, a pure
ASGI middleware (our own code: no library validates OpenAI request bodies server-side). transformers serve and
vLLM run it in their own process (`labs.serve.engines`; vLLM as `EnvGuard`); llama-server listens on a Unix socket
that only `Proxy`, in the guard's process, talks to, so nothing reaches it over TCP unchecked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass

ROLES = {"system", "developer", "user", "assistant", "tool"}
ROUTES = {"/health": "GET", "/v1/models": "GET", "/v1/chat/completions": "POST"}
# (low, high, integer) for each number a chat request may carry; None: no bound that side
NUMBERS = {
    "temperature": (0, 2, False), "top_p": (0, 1, False), "frequency_penalty": (-2, 2, False),
    "presence_penalty": (-2, 2, False), "top_k": (-1, None, True), "top_logprobs": (0, 20, True),
    "seed": (None, None, True),
}


class Refused(Exception):
    """A request the guard answers itself: its HTTP status and OpenAI-style message."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.kind = status, kind


@dataclass
class Limits:
    """What one served model accepts."""

    model: str                      # the name clients send as `model`
    context: int                    # prompt + answer tokens the engine holds per sequence
    max_body_bytes: int = 1 << 20   # a chat body of 1 MiB is ~250k tokens: far past any context here
    max_depth: int = 16             # a chat body nests 5 deep; llama-server's parser crashed at 200,000
    max_n: int = 4                  # answers per request: each is a sequence in the batch
    count_tokens: Callable[[list[dict]], int] | None = None  # prompt tokens of a message list, chat template applied


def depth(value, limit: int, level: int = 1) -> int:
    """How deep `value` nests, counting no further than `limit + 1`."""
    if level > limit or not isinstance(value, (dict, list)):
        return level
    children = value.values() if isinstance(value, dict) else value
    return max((depth(child, limit, level + 1) for child in children), default=level)


def check_number(body: dict, key: str, low, high, integer: bool) -> None:
    value = body.get(key)
    if value is None:
        return
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or (low is not None and value < low) or \
            (high is not None and value > high) or (key == "top_p" and value == 0):
        bounds = f"{'(' if key == 'top_p' else '['}{low}, {high}]" if high is not None else f">= {low}"
        raise Refused(400, f"`{key}` must be {'an integer' if integer else 'a number'}"
                           f"{'' if low is None else ' in ' + bounds}, got {value!r}")


def check_chat(raw: bytes, limits: Limits) -> dict:
    """The parsed chat-completions body, or `Refused` saying what is wrong with it."""
    if len(raw) > limits.max_body_bytes:
        raise Refused(413, f"body is {len(raw)} bytes; this server takes at most {limits.max_body_bytes}")
    try:
        body = json.loads(raw)
    except RecursionError:
        raise Refused(400, f"body nests deeper than {limits.max_depth} levels") from None
    except ValueError as exc:
        raise Refused(400, f"body is not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise Refused(400, "body must be a JSON object")
    if depth(body, limits.max_depth) > limits.max_depth:
        raise Refused(400, f"body nests deeper than {limits.max_depth} levels")
    if body.get("model") != limits.model:
        raise Refused(404, f"model {body.get('model')!r} is not served here; this server has {limits.model!r}",
                      "model_not_found")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Refused(400, "`messages` must be a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise Refused(400, f"messages[{i}] must be an object with `role` one of {sorted(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise Refused(400, f"messages[{i}].content must be a string (the served models read text only)")
    for key in ("stream", "logprobs"):
        if not isinstance(body.get(key, False), bool):
            raise Refused(400, f"`{key}` must be true or false")
    stop = body.get("stop")
    if stop is not None and not (isinstance(stop, str) or (
            isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop))):
        raise Refused(400, "`stop` must be a string or a list of at most 4 strings")
    for key, bounds in NUMBERS.items():
        check_number(body, key, *bounds)
    check_number(body, "n", 1, limits.max_n, True)
    for key in ("max_tokens", "max_completion_tokens"):
        check_number(body, key, 1, limits.context, True)
    if limits.count_tokens:
        prompt = limits.count_tokens(messages)
        answer = body.get("max_completion_tokens") or body.get("max_tokens") or 1
        if prompt + answer > limits.context:
            raise Refused(400, f"the prompt has {prompt} tokens and the answer may have {answer}: more than the "
                               f"model's context of {limits.context} tokens")
    return body


def counter(tokenizer) -> Callable[[list[dict]], int]:
    """Prompt tokens of a message list as the served model sees them: its chat template, generation prompt on."""
    def count(messages: list[dict]) -> int:
        try:
            return len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                     return_dict=False))
        except Exception as exc:  # a template that cannot render these messages: the client's to fix
            raise Refused(400, f"the model's chat template cannot render these messages ({exc})") from None
    return count


def limits_for(model_dir, name: str, context: int, max_n: int) -> Limits:
    """The limits of serving `model_dir` as `name`, prompt lengths counted with its own tokenizer."""
    from transformers import AutoTokenizer

    return Limits(model=name, context=context, max_n=max_n,
                  count_tokens=counter(AutoTokenizer.from_pretrained(model_dir)))


def models_page(limits: Limits) -> dict:
    """/v1/models, the same from every engine (transformers serve's own lists the hub cache, not what it serves)."""
    return {"object": "list", "data": [{"id": limits.model, "object": "model", "created": 0,
                                        "owned_by": "llm-lab", "max_model_len": limits.context}]}


async def respond(send, status: int, payload: dict, headers: list | None = None) -> None:
    data = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": data})


async def read_body(receive, limit: int) -> bytes:
    """The request body, or `Refused` (413) as soon as it passes `limit`: an oversized body is never held whole."""
    body, more = b"", True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Refused(400, "client went away")
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) > limit:
            raise Refused(413, f"body is over {limit} bytes, the most this server takes")
    return body


class Guard:
    """ASGI middleware: only the three routes of `ROUTES`; chat bodies checked by `check_chat` and passed on
    re-serialized, with `model` rewritten to what the engine calls it (`engine_model`); /v1/models answered here.
    `revive` is called before each chat request: transformers serve uses it to restart a dead batching loop."""

    def __init__(self, app, limits: Limits, engine_model: str | None = None, request_id_header: str | None = None,
                 revive: Callable[[], None] | None = None):
        self.app, self.limits, self.revive = app, limits, revive
        self.engine_model = engine_model or limits.model
        self.header = request_id_header.lower().encode() if request_id_header else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        extra, request_id = [], None
        if self.header:  # the request id transformers serve's own middleware would set
            given = dict(scope["headers"]).get(self.header)
            request_id = given.decode("latin-1") if given else str(uuid.uuid4())
            scope.setdefault("state", {})["request_id"] = request_id
            extra = [(self.header, request_id.encode("latin-1"))]
        path, method = scope["path"], scope["method"]
        if path not in ROUTES:
            return await respond(send, 404, error(f"no route {path}; this server has {sorted(ROUTES)}"), extra)
        if method != ROUTES[path]:
            return await respond(send, 405, error(f"{path} takes {ROUTES[path]}, not {method}"), extra)
        if path == "/v1/models":
            return await respond(send, 200, models_page(self.limits), extra)
        if path == "/health":
            return await self.app(scope, receive, with_headers(send, extra))
        try:
            body = check_chat(await read_body(receive, self.limits.max_body_bytes), self.limits)
        except Refused as refused:
            return await respond(send, refused.status, error(str(refused), refused.kind), extra)
        if self.revive:
            self.revive()
        data = json.dumps({**body, "model": self.engine_model}).encode()
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
        scope = {**scope, "headers": [*headers, (b"content-length", str(len(data)).encode())]}
        return await self.app(scope, replay(data, receive), with_headers(send, extra))


class EnvGuard(Guard):
    """`Guard` for a server that builds middleware from an import path alone (vLLM's `--middleware`), in the
    server's own process: its limits come from the LAB_GUARD environment variable (JSON: model_dir, model,
    context, max_n)."""

    def __init__(self, app):
        given = json.loads(os.environ["LAB_GUARD"])
        super().__init__(app, limits_for(given["model_dir"], given["model"], given["context"], given["max_n"]))


def error(message: str, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind}}


def with_headers(send, extra: list):
    if not extra:
        return send

    async def sending(message):
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), *extra]
        await send(message)

    return sending


def replay(data: bytes, receive):
    """A `receive` that hands the app the body the guard already read, then the client's later messages."""
    sent = False

    async def receiving():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": data, "more_body": False}

    return receiving


HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"server", b"date"}


class Proxy:
    """ASGI app relaying each request to an engine on a Unix socket, streamed both ways. When the client goes
    away mid-answer the engine's connection is closed too, so the engine stops that sequence and frees its slot."""

    def __init__(self, socket_path: str, timeout_s: float = 600):
        import httpx2 as httpx  # the HTTP client the openai package itself is built on

        # llama-server closed a connection without answering for 0-9 of 512 requests at 64 clients, kept-alive or
        # new: a request that got no response at all was not half-answered, so it is sent again on a new connection
        transport = httpx.AsyncHTTPTransport(uds=socket_path)
        self.client = httpx.AsyncClient(transport=transport, base_url="http://engine", timeout=timeout_s,
                                        limits=httpx.Limits(max_connections=None, max_keepalive_connections=256))
        self.fresh = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=socket_path), base_url="http://engine",
                                       timeout=timeout_s, limits=httpx.Limits(max_keepalive_connections=0))
        self.no_response = (httpx.RemoteProtocolError, httpx.ConnectError)

    async def close(self) -> None:
        await self.client.aclose()
        await self.fresh.aclose()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await lifespan(receive, send, self.close)
        body = b""
        if scope["method"] == "POST":
            body = (await receive()).get("body", b"")  # the guard's replay: the whole checked body at once
        request = self.client.build_request(scope["method"], scope["path"], content=body,
                                            headers=[(k, v) for k, v in scope["headers"] if k != b"host"])
        for attempt, client in enumerate((self.client, self.fresh, self.fresh)):
            try:
                upstream = await client.send(request, stream=True)
                break
            except self.no_response as exc:
                if attempt == 2:
                    return await respond(send, 502, error(f"the engine did not answer ({exc})", "server_error"))
        try:
            await send({"type": "http.response.start", "status": upstream.status_code,
                        "headers": [(k, v) for k, v in upstream.headers.raw if k.lower() not in HOP_BY_HOP]})
            relay = asyncio.ensure_future(self.relay(upstream, send))
            gone = asyncio.ensure_future(disconnected(receive))
            await asyncio.wait({relay, gone}, return_when=asyncio.FIRST_COMPLETED)
            for task in (relay, gone):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await task
        finally:
            await upstream.aclose()

    @staticmethod
    async def relay(upstream, send) -> None:
        async for chunk in upstream.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


async def disconnected(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def lifespan(receive, send, on_shutdown) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await on_shutdown()
            return await send({"type": "lifespan.shutdown.complete"})
