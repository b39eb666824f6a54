"""One load client for every engine, and the sequential baseline it is compared with.

The client is a short asyncio loop on httpx2 (the HTTP client of the openai package) that reads the server-sent
events itself: guidellm and vLLM's bench client would pull in vLLM's CUDA-only stack, and the openai client's
per-chunk pydantic parsing cost twice the CPU, taken on two cores from the server it measures.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import httpx2 as httpx
import numpy as np


async def one_request(client, url: str, model: str, prompt: str, max_tokens: int) -> dict:
    """One streamed greedy chat completion: its text, time to first token and latency, or its error's kind."""
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


def level(url: str, model: str, prompts: list[str], concurrency: int, per_client: int, max_tokens: int):
    return asyncio.run(load_level(url, model, prompts, concurrency, per_client, max_tokens))


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


def fastest(runs: list[dict]) -> dict:
    """A variant's fastest round, with the requests and errors of all its rounds."""
    best = max(runs, key=lambda run: run["output_tokens_per_s"])
    summary = {**best, "rounds": len(runs), "requests": sum(run["requests"] for run in runs)}
    if "errors" in best:
        summary |= {"errors": sum(run["errors"] for run in runs),
                    "error_kinds": sorted({kind for run in runs for kind in run["error_kinds"]})}
    return summary


def sequential_pass(model, tokenizer, prompts: list[str], max_tokens: int) -> tuple[dict, list[str]]:
    """The same model answering one prompt at a time with `generate`: what serving is compared against."""
    from labs.core.evaluation import generate

    started = time.perf_counter()
    answers = []
    for prompt in prompts:
        answers += generate(model, tokenizer, [prompt], max_tokens, batch_size=1)[0]
    seconds = time.perf_counter() - started
    tokens = sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)
    return {"requests": len(prompts), "requests_per_s": round(len(prompts) / seconds, 2),
            "output_tokens_per_s": round(tokens / seconds, 1)}, answers


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


def tree_peak_mb(pid: int) -> float | None:
    """Peak resident memory (VmHWM) summed over a process and its descendants: vLLM runs its engine core as a
    child of its API server, under the guard's process. None when the process is gone."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        if "VmHWM:" in status:
            total += int(status.split("VmHWM:")[1].split()[0]) / 1024
        todo += children.get(current, [])
    return round(total, 1) if total else None
