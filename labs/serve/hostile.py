"""Requests no server may fall over on, sent to every engine the lab starts: each must be answered with a 4xx,
and the same server process must then answer 100 concurrent valid requests."""

from __future__ import annotations

import asyncio
import json

import httpx2 as httpx


def hostile_bodies(model: str, context: int) -> dict[str, dict]:
    """name -> httpx keyword arguments of one request to /v1/chat/completions."""
    hello = [{"role": "user", "content": "add 3 4"}]
    deep = b"[" * 200_000 + b"]" * 200_000  # crashed llama-server's JSON parser when it reached it
    raw = {"headers": {"content-type": "application/json"}}

    def says(content: str) -> dict:
        return {"json": {"model": model, "messages": [{"role": "user", "content": content}]}}

    return {
        "not_json": {"content": b"{not json", **raw},
        "not_an_object": {"json": [1, 2]},
        "no_messages": {"json": {"model": model}},
        "messages_not_a_list": {"json": {"model": model, "messages": "hello"}},
        "unknown_role": {"json": {"model": model, "messages": [{"role": "king", "content": "hi"}]}},
        "content_not_text": {"json": {"model": model, "messages": [{"role": "user", "content": 5}]}},
        "negative_max_tokens": {"json": {"model": model, "messages": hello, "max_tokens": -5}},
        "max_tokens_past_context": {"json": {"model": model, "messages": hello, "max_tokens": 10 * context}},
        "negative_temperature": {"json": {"model": model, "messages": hello, "temperature": -1}},
        "huge_temperature": {"json": {"model": model, "messages": hello, "temperature": 1e9}},
        "top_p_over_1": {"json": {"model": model, "messages": hello, "top_p": 2}},
        "n_zero": {"json": {"model": model, "messages": hello, "n": 0}},
        "n_a_million": {"json": {"model": model, "messages": hello, "n": 10**6}},
        "stream_not_bool": {"json": {"model": model, "messages": hello, "stream": "yes"}},
        "unknown_model": {"json": {"model": "no-such-model", "messages": hello}},
        "prompt_past_context": says("add 1 2 " * context),
        "prompt_2mb": says("x" * 2_000_000),
        "body_20mb": {"content": json.dumps({**says("hi")["json"], "pad": "y" * 20_000_000}).encode(), **raw},
        "nested_200k_deep": {"content": json.dumps(says("hi")["json"])[:-1].encode() + b', "x": ' + deep + b"}",
                             **raw},
    }


def hostile_statuses(url: str, model: str, context: int) -> dict[str, int | str]:
    """Each hostile request's status code (or the error's kind when the connection failed)."""
    statuses = {}
    for name, request in hostile_bodies(model, context).items():
        try:
            statuses[name] = httpx.post(f"{url}/v1/chat/completions", timeout=120, **request).status_code
        except httpx.HTTPError as exc:
            statuses[name] = type(exc).__name__
    for path, method in (("/v1/completions", "POST"), ("/reset", "POST"), ("/v1/models", "DELETE")):
        statuses[f"{method} {path}"] = httpx.request(method, f"{url}{path}", timeout=30).status_code
    return statuses


def drop_streams(url: str, model: str, count: int, max_tokens: int) -> None:
    """`count` streamed requests each closed after its first event: the server must free their slots."""
    body = {"model": model, "messages": [{"role": "user", "content": "add 3 4"}], "max_tokens": max_tokens,
            "stream": True}
    with httpx.Client(timeout=60) as client:
        for _ in range(count):
            with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
                next(response.iter_lines(), None)


def concurrent_statuses(url: str, model: str, count: int = 100) -> dict[str, int]:
    """`count` valid requests at once: status code -> how many got it."""
    async def send_all():
        limits = httpx.Limits(max_connections=count)
        async with httpx.AsyncClient(timeout=600, limits=limits) as client:
            return await asyncio.gather(*(client.post(f"{url}/v1/chat/completions", json={
                "model": model, "messages": [{"role": "user", "content": f"add {i} 4"}], "max_tokens": 16,
                "temperature": 0}) for i in range(count)), return_exceptions=True)

    codes = [str(getattr(r, "status_code", type(r).__name__)) for r in asyncio.run(send_all())]
    return {code: codes.count(code) for code in sorted(set(codes))}


def models_listed(url: str) -> list[str]:
    """What the official openai client lists (`client.models.list()`)."""
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    return [model.id for model in client.models.list()]
