"""serve — the SFT model behind an OpenAI-compatible server, under load, against sequential `generate`.

    just lab serve       # start the server, measure, stop it (metrics/serve.json)
    just serve           # only run the server, for your own client (127.0.0.1, port 8000)

The server is `transformers serve` (FastAPI + uvicorn, OpenAI chat-completions API) with continuous
batching: requests that arrive while others decode join the running batch. `python -m labs.serve` runs it
behind `CheckedRequests`: chat-completions bodies are checked before they reach the model
(`chat_request_problem`), and it sets the request id in place of transformers serve's own middleware.
GPU tiers serve with vLLM or TGI from docker/compose.yaml instead; the load test below is the same against
any OpenAI-compatible endpoint.

The server runs on uvicorn with uvloop and httptools (uvicorn's own fast event loop and HTTP parser; without
them it falls back to pure-Python h11, which is slower under load). Its paged KV
cache has the size `serve.cache_blocks` sets: left to itself, transformers serve gives that cache 60% of the
machine's RAM on CPU, zeroed before the first answer.

The load test is a short asyncio client on httpx2 (the HTTP client of the openai package) that reads the
server-sent events itself (guidellm and vLLM's bench client would pull in vLLM's CUDA-only stack):
for each `concurrency`, that many clients each send `requests_per_client` streamed chat
completions (greedy, `max_tokens`) one after another, prompts from the held-out set. Per level: requests/s,
output tokens/s, time to first token and latency percentiles, errors. The baseline is the same model answering
the same prompts one by one with `generate` in this process, while the server idles. Rounds are interleaved,
the baseline and then every level in each, so that a slow minute of this machine (tokens/s of either moves by
up to 40% from one minute to the next) hits both sides of a ratio alike; each keeps its fastest of `rounds`,
with the errors of all of them.
It also checks: malformed requests get a 4xx and the server stays up; the server is reachable on its host
only (127.0.0.1 unless `serve.host` says otherwise); the served answers equal `generate`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Annotated

import httpx2 as httpx  # the HTTP client the openai package itself is built on
import numpy as np
import torch
from pydantic import Field

from labs.core.config import SEED, Section, Seed
from labs.core.data import DataError, read_jsonl
from labs.core.evaluation import exact_match, generate
from labs.core.models import load_model, load_tokenizer, require
from labs.core.run import process_peak_mb


class ServeParams(Section):
    """An OpenAI-compatible server for one model and a load test against it."""

    model: str = "sft"
    """directory under models/ that is served"""
    host: str = "127.0.0.1"  # loopback unless told otherwise
    """address the server binds (127.0.0.1: this machine only)"""
    port: int = Field(0, ge=0, le=65535)
    """0: any free port"""
    continuous_batching: bool = True
    """let the server batch requests as they arrive"""
    concurrency: list[Annotated[int, Field(gt=0)]] = [1, 4, 16, 64]
    """concurrent clients of each load level"""
    requests_per_client: int = Field(16, gt=0)  # enough that a level is not mostly ramp-up and tail
    """requests each client sends in a level"""
    max_tokens: int = Field(48, gt=0)
    """tokens each answer may have"""
    startup_timeout_s: int = Field(180, gt=0)
    """seconds to wait for the server to answer"""
    rounds: int = Field(5, gt=0)
    """interleaved; each level keeps its fastest round: the machine's speed drifts"""
    # continuous batching's paged KV cache: unset, transformers serve takes 60% of RAM for it on CPU
    cache_blocks: int = Field(256, gt=0)
    """blocks of continuous batching's paged KV cache"""
    block_size: int = Field(64, gt=0)
    """tokens per cache block"""
    max_batch_tokens: int = Field(2048, gt=0)
    """tokens one forward may hold"""


class Params(Section):
    """What serve reads from params.yaml."""

    seed: Seed = SEED
    serve: ServeParams = ServeParams()


PREPARED, MODELS = Path("data/prepared"), Path("models")


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


ROLES = {"system", "developer", "user", "assistant", "tool"}


def chat_request_problem(raw: bytes) -> str | None:
    """What is wrong with a chat-completions body, or None. transformers serve checks only the field names; a
    wrong type reaches the model code and comes back as a 500, so the server is wrapped with this check (our
    own code: no library validates OpenAI request bodies server-side). The answer is OpenAI's 400."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        return f"body is not JSON ({exc})"
    if not isinstance(body, dict):
        return "body must be a JSON object"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "`messages` must be a non-empty list"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            return f"messages[{i}] must be an object with `role` one of {sorted(ROLES)}"
        if not isinstance(message.get("content"), (str, list)):
            return f"messages[{i}].content must be a string or a list of parts"
    for key in ("max_tokens", "max_completion_tokens", "n"):
        value = body.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            return f"`{key}` must be a positive integer, got {value!r}"
    temperature = body.get("temperature")
    if temperature is not None and (not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2):
        return f"`temperature` must be a number in [0, 2], got {temperature!r}"
    if not isinstance(body.get("stream", False), bool):
        return "`stream` must be true or false"
    return None


class CheckedRequests:
    """ASGI middleware in front of transformers serve's app: answers malformed chat-completions bodies with
    OpenAI's 400 (`chat_request_problem`) and sets the X-Request-ID that transformers serve's own middleware
    would. Pure ASGI, where both used `@app.middleware("http")`: Starlette's BaseHTTPMiddleware relays every
    streamed chunk through an extra task and memory stream, a cost paid once per streamed token that a profile
    under load (py-spy) shows as a large share of the event loop's time."""

    def __init__(self, app, header: str):
        self.app, self.header = app, header.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(self.header)
        request_id = given.decode("latin-1") if given else str(uuid.uuid4())
        scope.setdefault("state", {})["request_id"] = request_id  # what the routes read as request.state

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (self.header, request_id.encode("latin-1"))]
            await send(message)

        if scope["method"] == "POST" and scope["path"] == "/v1/chat/completions":
            body, more = b"", True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
            if problem := chat_request_problem(body):
                from fastapi.responses import JSONResponse

                response = JSONResponse({"error": {"message": problem, "type": "invalid_request_error"}},
                                        status_code=400)
                return await response(scope, receive, send_with_id)
            replayed = False

            async def replay():  # the app reads the body this middleware already took off the wire
                nonlocal replayed
                if replayed:
                    return await receive()
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}

            return await self.app(scope, replay, send_with_id)
        return await self.app(scope, receive, send_with_id)


def cache_flags(cfg) -> list[str]:
    """transformers serve's flags for the continuous-batching cache that `serve` in params.yaml sizes."""
    return ["--cb-num-blocks", str(cfg.cache_blocks), "--cb-block-size", str(cfg.block_size),
            "--cb-max-batch-tokens", str(cfg.max_batch_tokens)]


def no_timer_thread_per_request() -> None:
    """transformers serve restarts a `threading.Timer` on every request to unload an idle model, even when the
    timeout is off, as it is for a model given on the command line. `Thread.start` waits on the event loop's
    thread until the new thread runs, and under load the generation thread holds the GIL, so the event loop
    stalls on every request. Our own patch (docs/decisions.md has the comparison): the timer stays as it was where
    a timeout is set."""
    from transformers.cli.serving.model_manager import TimedModel

    restart_timer = TimedModel.reset_timer

    def reset_timer(self) -> None:
        if self.timeout_seconds > 0:
            restart_timer(self)

    TimedModel.reset_timer = reset_timer


def serve_forever(argv: list[str]) -> int:
    """`transformers serve ARGV` behind `CheckedRequests` (`python -m labs.serve ARGV`). Continuous batching gets
    the cache params.yaml's `serve` sizes unless ARGV gives its own `--cb-num-blocks`."""
    from transformers.cli import transformers as cli
    from transformers.cli.serving import server

    from labs.core.config import load_params

    if "--continuous-batching" in argv and "--cb-num-blocks" not in argv:
        argv = [*argv, *cache_flags(load_params(Params).serve)]
    no_timer_thread_per_request()

    build_server = server.build_server

    def checked_build_server(*args, **kwargs):
        app = build_server(*args, **kwargs)
        # transformers serve's request-id middleware is the one CheckedRequests takes over
        app.user_middleware = [m for m in app.user_middleware
                               if getattr(m.kwargs.get("dispatch"), "__name__", "") != "request_id_middleware"]
        app.add_middleware(CheckedRequests, header=server.X_REQUEST_ID)
        return app

    server.build_server = checked_build_server  # transformers serve imports it when it starts
    sys.argv = ["transformers", "serve", *argv]
    return cli.main()


def server_command(path: Path, cfg, port: int, seed: int) -> list[str]:
    batching = ["--continuous-batching", *cache_flags(cfg)] if cfg.continuous_batching else ["--no-continuous-batching"]
    return [sys.executable, "-m", "labs.serve", str(path), "--host", cfg.host, "--port", str(port), *batching,
            "--dtype", "float32", "--device", "cpu" if not torch.cuda.is_available() else "auto",
            "--default-seed", str(seed), "--no-trust-remote-code", "--log-level", "warning"]


@contextlib.contextmanager
def running_server(params: Params, path: Path, port: int):
    """The server as a child process; yields its base URL and process once /health answers, and stops it
    afterwards."""
    cfg = params.serve
    url = f"http://{'127.0.0.1' if cfg.host in ('0.0.0.0', '::') else cfg.host}:{port}"
    with tempfile.TemporaryDirectory() as hub_cache:
        # /v1/models lists the hub cache, which must exist; nothing is downloaded: offline
        # and the server gets the threads this process has, as the sequential baseline does
        env = {**os.environ, "HF_HUB_CACHE": hub_cache, "HF_HUB_OFFLINE": "1",
               "OMP_NUM_THREADS": str(torch.get_num_threads())}
        log = Path(hub_cache) / "server.log"
        with log.open("w") as out:
            server = subprocess.Popen(server_command(path, cfg, port, params.seed),
                                      env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + cfg.startup_timeout_s
            while True:
                if server.poll() is not None:
                    raise DataError(f"transformers serve exited with {server.returncode} before answering: "
                                    f"{(log.read_text().strip().splitlines() or ['(no output)'])[-1]}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise DataError(f"transformers serve did not answer {url}/health within "
                                    f"serve.startup_timeout_s={cfg.startup_timeout_s} s")
                time.sleep(0.5)
            yield url, server
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()


async def one_request(client, url: str, model: str, prompt: str, max_tokens: int) -> dict:
    """One streamed chat completion, read as raw server-sent events: the openai client's per-chunk pydantic
    parsing cost twice the CPU, and on two cores the client's CPU is taken from the server it measures."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0.0, "stream": True}
    started = time.perf_counter()
    first, parts = None, []
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                choices = json.loads(line[len("data: "):]).get("choices") or [{}]
                if delta := choices[0].get("delta", {}).get("content"):
                    first = first or time.perf_counter()
                    parts.append(delta)
    except Exception as exc:  # every failure counts as an error of this level, with its kind
        return {"error": type(exc).__name__}
    end = time.perf_counter()
    return {"text": "".join(parts), "ttft": (first or end) - started, "latency": end - started}


async def load_level(url: str, model: str, prompts: list[str], concurrency: int, per_client: int,
                     max_tokens: int) -> tuple[list[dict], float]:
    """`concurrency` clients, each sending `per_client` requests back to back; results in prompt order."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    results: list[dict | None] = [None] * (concurrency * per_client)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def client_loop(c: int):
            for r in range(per_client):
                i = c * per_client + r
                results[i] = await one_request(client, url, model, prompts[i % len(prompts)], max_tokens)

        started = time.perf_counter()
        await asyncio.gather(*(client_loop(c) for c in range(concurrency)))
        seconds = time.perf_counter() - started
    return results, seconds


def summarize(results: list[dict], seconds: float, tokenizer) -> dict:
    done = [r for r in results if "error" not in r]
    tokens = sum(len(tokenizer(r["text"], add_special_tokens=False)["input_ids"]) for r in done)

    def pct(key: str, q: float) -> float | None:
        return round(float(np.percentile([r[key] for r in done], q)) * 1000, 1) if done else None

    return {"requests": len(results), "errors": len(results) - len(done),
            "error_kinds": sorted({r["error"] for r in results if "error" in r}),
            "requests_per_s": round(len(done) / seconds, 2), "output_tokens_per_s": round(tokens / seconds, 1),
            "ttft_ms_p50": pct("ttft", 50), "latency_ms_p50": pct("latency", 50),
            "latency_ms_p95": pct("latency", 95), "latency_ms_p99": pct("latency", 99)}


def malformed_requests(url: str, model: str) -> dict[str, int]:
    """Status codes for requests a client can get wrong; the server must answer 4xx, not crash."""
    endpoint = f"{url}/v1/chat/completions"
    cases = {
        "not_json": {"content": b"{not json", "headers": {"content-type": "application/json"}},
        "no_messages": {"json": {"model": model}},
        "messages_not_a_list": {"json": {"model": model, "messages": "hello"}},
        "negative_max_tokens": {"json": {"model": model, "messages": [{"role": "user", "content": "hi"}],
                                         "max_tokens": -5}},
    }
    return {name: httpx.post(endpoint, timeout=60, **kwargs).status_code for name, kwargs in cases.items()}


def reachable_elsewhere(port: int) -> bool | None:
    """Whether the port answers on this machine's non-loopback address (None: the machine has none)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outward interface
            address = probe.getsockname()[0]
    except OSError:
        return None
    if address.startswith("127."):
        return None
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((address, port)) == 0


def sequential_pass(model, tokenizer, prompts: list[str], max_tokens: int) -> tuple[dict, list[str]]:
    """The same model answering one prompt at a time with `generate`: what serving is compared against."""
    started = time.perf_counter()
    answers = []
    for prompt in prompts:
        answers += generate(model, tokenizer, [prompt], max_tokens, batch_size=1)[0]
    seconds = time.perf_counter() - started
    tokens = sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)
    return {"requests": len(prompts), "requests_per_s": round(len(prompts) / seconds, 2),
            "output_tokens_per_s": round(tokens / seconds, 1)}, answers


def fastest(runs: list[dict]) -> dict:
    """A variant's fastest round, with the requests and errors of all its rounds."""
    best = max(runs, key=lambda run: run["output_tokens_per_s"])
    summary = {**best, "rounds": len(runs), "requests": sum(run["requests"] for run in runs)}
    if "errors" in best:
        summary |= {"errors": sum(run["errors"] for run in runs),
                    "error_kinds": sorted({kind for run in runs for kind in run["error_kinds"]})}
    return summary


def run(params: Params) -> dict:
    cfg = params.serve
    path = require(MODELS / cfg.model, "config.json", cfg.model).resolve()
    tokenizer = load_tokenizer(path)
    test = read_jsonl(PREPARED / "sft_test.jsonl", "sft")
    prompts = [r["prompt"] for r in test]
    port = cfg.port or free_port(cfg.host)
    # the served model's id is its path (transformers serve matches the request's `model` against it)
    model_id = str(path)
    model = load_model(path, "fp32")
    baseline_prompts = prompts[:max(cfg.concurrency)]  # one request per client of the largest level

    baseline_runs, level_runs = [], {concurrency: [] for concurrency in cfg.concurrency}
    with running_server(params, path, port) as (url, server):
        warm, _ = asyncio.run(load_level(url, model_id, prompts, 1, 2, cfg.max_tokens))  # first-request setup
        if any("error" in r for r in warm):
            raise DataError(f"transformers serve at {url} failed the first requests: {warm}")
        for round_ in range(1, cfg.rounds + 1):
            baseline, generated = sequential_pass(model, tokenizer, baseline_prompts, cfg.max_tokens)
            baseline_runs.append(baseline)
            report = [f"sequential {baseline['output_tokens_per_s']}"]
            for concurrency, runs in level_runs.items():
                results, seconds = asyncio.run(load_level(url, model_id, prompts, concurrency,
                                                          cfg.requests_per_client, cfg.max_tokens))
                runs.append(summarize(results, seconds, tokenizer))
                report.append(f"concurrency {concurrency} {runs[-1]['output_tokens_per_s']}")
            print(f"serve: round {round_}, tokens/s: {', '.join(report)}")
        served, _ = asyncio.run(load_level(url, model_id, baseline_prompts, len(baseline_prompts), 1, cfg.max_tokens))
        malformed = malformed_requests(url, model_id)
        alive = httpx.get(f"{url}/health", timeout=10).status_code == 200
        elsewhere = reachable_elsewhere(port)
        server_memory = process_peak_mb(server.pid)

    baseline = fastest(baseline_runs)
    print(f"serve: sequential generate: {baseline['requests_per_s']} req/s, {baseline['output_tokens_per_s']} tok/s")
    levels = []
    for concurrency, runs in level_runs.items():
        level = {"concurrency": concurrency, **fastest(runs)}
        level["throughput_vs_sequential"] = round(level["output_tokens_per_s"] / baseline["output_tokens_per_s"], 2)
        levels.append(level)
        print(f"serve: concurrency {concurrency}: {level['requests_per_s']} req/s, {level['output_tokens_per_s']} "
              f"tok/s ({level['throughput_vs_sequential']}x sequential), p50 {level['latency_ms_p50']} ms, "
              f"errors {level['errors']}")
    same = [r.get("text") == g for r, g in zip(served, generated, strict=True)]
    print(f"serve: malformed requests -> {malformed}; still up: {alive}; reachable off loopback: {elsewhere}; "
          f"server's peak memory {server_memory} MB")
    return {
        "model": cfg.model, "server": "transformers serve", "continuous_batching": cfg.continuous_batching,
        "host": cfg.host, "max_tokens": cfg.max_tokens, "requests_per_client": cfg.requests_per_client,
        "sequential_generate": baseline, "levels": levels, "server_peak_rss_mb": server_memory,
        "malformed_status": malformed, "alive_after_malformed": alive, "reachable_off_loopback": elsewhere,
        "served_equals_generate_pct": round(100 * sum(same) / len(same), 2),
        "served_exact_match": exact_match(test[:len(served)], [r.get("text", "") for r in served])["overall"],
    }


if __name__ == "__main__":
    sys.exit(serve_forever(sys.argv[1:]))
