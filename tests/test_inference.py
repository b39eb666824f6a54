"""Inference labs on the tiny project that `built` made: decode, attention, speculative, serve. Speeds are
recorded, never asserted (they belong to benchmarks); what is asserted is what must hold on any machine:
greedy outputs that do not change with the cache or the draft, the trade-offs' directions, a server that
answers every request and rejects malformed ones."""

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import httpx2 as httpx
import pytest
import torch

from labs.decode import ContrastiveLogits, answer_diversity, distinct
from labs.serve.engines import no_timer_thread_per_request
from labs.serve.guard import Guard, Limits, Refused, check_chat
from tests.conftest import free_port, lab_env


def load(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.slow
def test_decoding_strategies_trade_exact_match_for_diversity(built):
    decode = load(built / "metrics/decode.json")
    rows = {row["name"]: row for row in decode["strategies"]}
    assert list(rows)[:4] == ["greedy", "temperature_0.7", "temperature_1.0", "temperature_1.5"]
    greedy, hot = rows["greedy"], rows["temperature_1.5"]
    for name in ("greedy", "beam_4", "contrastive_0.1", "repetition_penalty_1.3"):
        assert rows[name]["answer_diversity"] == 0, f"{name} is deterministic"
    assert hot["answer_diversity"] > rows["temperature_0.7"]["answer_diversity"] > 0
    assert hot["exact_match"]["overall"] < greedy["exact_match"]["overall"]
    # the re-rankers keep the answer the reward model likes best: their mean reward beats plain sampling's
    assert rows["best_of_4"]["reward"] > rows["temperature_1.0"]["reward"]
    for row in rows.values():
        assert row["tokens_per_s"] > 0 and row["distinct_2"] > 0 and row["reward"] is not None
    assert (built / "plots/decode/table.csv").read_text().count("\n") == 1 + len(rows)


def test_contrastive_logits_keep_only_plausible_tokens_and_subtract_the_amateur():
    class Amateur(torch.nn.Module):  # prefers token 0 whatever it reads
        def forward(self, input_ids, attention_mask, position_ids):
            logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], 4)
            logits[..., 0] = 5.0
            return type("Out", (), {"logits": logits})

    expert = torch.log(torch.tensor([[0.5, 0.45, 0.04, 0.01]]))
    scores = ContrastiveLogits(Amateur(), alpha=0.1, pad_token_id=3)(torch.tensor([[1, 2]]), expert)
    assert scores[0, 2] == scores[0, 3] == torch.finfo(scores.dtype).min, "below alpha * max: cut"
    assert scores[0].argmax() == 1, "the token the amateur also likes loses to the expert's own second choice"


def test_diversity_measures():
    assert answer_diversity([["a", "b"], ["a", "b"]]) == 0
    assert answer_diversity([["a", "b"], ["c", "b"], ["d", "e"]]) == 75  # 3 new answers of 4 re-runs
    assert distinct(["x y x y"], 1) == 50 and distinct(["x y", "y x"], 2) == 100


@pytest.mark.slow
def test_kv_cache_and_kernels_change_speed_not_tokens(built):
    attention = load(built / "metrics/attention.json")
    rows = attention["rows"]
    assert {(r["implementation"], r["cache"]) for r in rows} == {
        (impl, cache) for impl in ("eager", "sdpa") for cache in ("none", "dynamic", "static")}
    assert all(r["same_tokens_as_reference"] for r in rows), "greedy tokens must not depend on the cache or kernel"
    for r in rows:
        if r["cache"] == "none":
            assert r["kv_cache_mb"] == 0 and r["speedup_vs_no_cache"] == 1
        else:  # 2 (keys, values) x 4 layers x 128 dims x 4 bytes x the tokens before the last
            assert r["kv_cache_mb"] == pytest.approx(2 * 4 * 128 * 4 * (64 + 32 - 1) / 2**20, rel=0.05), r
        assert r["tokens_per_s"] > 0


@pytest.mark.slow
def test_speculative_decoding_keeps_greedy_output_and_counts_acceptance(built):
    spec = load(built / "metrics/speculative.json")
    rows = {row["name"]: row for row in spec["variants"]}
    assert set(rows) == {"greedy", "assisted_4", "prompt_lookup", "sampling", "sampling_assisted_4"}
    assert rows["assisted_4"]["identical_pct"] == 100 and rows["prompt_lookup"]["identical_pct"] == 100
    assert 0 < rows["assisted_4"]["acceptance_pct"] <= 100
    assert 1 < rows["assisted_4"]["tokens_per_target_forward"] <= 5, "up to 4 accepted + 1 from the target"
    assert rows["greedy"]["acceptance_pct"] is None and rows["greedy"]["speedup"] == 1
    assert spec["draft_parameters"] * 3 <= spec["target_parameters"]
    # the forward hooks agree with the other counters: plain greedy runs one target forward per new token, and
    # assisted decoding one per verification step
    decoded = spec["prompts"] * spec["rounds"]
    assert rows["greedy"]["target_forwards_per_prompt"] == round(rows["greedy"]["tokens"] / decoded, 2)
    steps = rows["assisted_4"]["tokens"] / rows["assisted_4"]["tokens_per_target_forward"]
    assert abs(rows["assisted_4"]["target_forwards_per_prompt"] - steps / decoded) < 0.02
    assert rows["assisted_4"]["draft_forwards_per_prompt"] > rows["assisted_4"]["target_forwards_per_prompt"]
    assert rows["greedy"]["draft_ms_per_forward"] is None
    cost = spec["best_assisted"]["draft_forward_cost_vs_target"]
    assert 0 < cost < 1, "a 2-layer draft forward costs less than a 4-layer target forward"


@pytest.mark.slow
def test_every_engine_answers_every_request_as_generate_does_and_survives_hostile_input(built):
    """The tiny build serves with every CPU engine (tests/conftest.py points at the shared vLLM environment and
    llama-server build): each answered all requests, as generate does, refused every hostile one with a 4xx
    and then answered 100 concurrent requests from the same process."""
    serve = load(built / "metrics/serve.json")
    assert [row["engine"] for row in serve["engines"]] == ["transformers", "vllm", "llama-server"]
    for row in serve["engines"]:
        assert [level["concurrency"] for level in row["levels"]] == [1, 8]
        for level in row["levels"]:
            assert level["errors"] == 0 and level["requests"] == 2 * level["concurrency"], (row["engine"], level)
            assert level["ttft_ms_p50"] <= level["latency_ms_p50"] <= level["latency_ms_p99"], level
        refused = row["hostile_status"]
        assert set(refused) >= {"prompt_2mb", "nested_200k_deep", "unknown_model", "prompt_past_context"}
        assert all(isinstance(code, int) and 400 <= code < 500 for code in refused.values()), (row["engine"], refused)
        assert row["after_hostile_100_concurrent"] == {"200": 100} and row["same_process"], row["engine"]
        assert row["models_listed"] == ["sft"] and row["reachable_off_loopback"] in (False, None)
        # llama.cpp's f32 kernels sum in another order than torch's: a tie between two tokens may break the
        # other way, so its answers are held to most, not all
        assert row["served_equals_generate_pct"] >= (90 if row["engine"] == "llama-server" else 95), row
        # each engine's KV cache is the one params.yaml sizes, not its own default (a share of the machine's RAM)
        assert 0 < row["peak_rss_mb"] < 6000, (row["engine"], row["peak_rss_mb"])
    # "best" is the level with the most tokens/s, its speedup on the fastest baseline of any engine
    top = max(((row["engine"], lv) for row in serve["engines"] for lv in row["levels"]),
              key=lambda pair: pair[1]["output_tokens_per_s"])
    fastest = max(row["sequential_generate"]["output_tokens_per_s"] for row in serve["engines"])
    assert (serve["best"]["engine"], serve["best"]["concurrency"]) == (top[0], top[1]["concurrency"]), serve["best"]
    assert serve["best"]["speedup_vs_fastest_sequential"] == round(top[1]["output_tokens_per_s"] / fastest, 2)


def test_a_request_starts_no_timer_thread_when_the_model_never_unloads():
    from transformers.cli.serving.model_manager import TimedModel

    restart_timer = TimedModel.reset_timer
    try:
        no_timer_thread_per_request()
        never = TimedModel(types.SimpleNamespace(name_or_path="m"), timeout_seconds=-1)  # a model given at start
        timer = never._timer
        never.reset_timer()
        assert never._timer is timer
        idle_unloads = TimedModel(types.SimpleNamespace(name_or_path="m"), timeout_seconds=3600)
        timer = idle_unloads._timer
        idle_unloads.reset_timer()
        assert idle_unloads._timer is not timer and idle_unloads._timer.is_alive(), "a set timeout still counts"
        idle_unloads._timer.cancel()
    finally:
        TimedModel.reset_timer = restart_timer


LIMITS = Limits(model="m", context=64, max_body_bytes=4096, count_tokens=lambda messages: 4 * len(messages))
GOOD = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": True}


@pytest.mark.parametrize(("bad", "status", "expected"), [
    (b"{oops", 400, "not JSON"), (b"[]", 400, "JSON object"), (b"x" * 5000, 413, "at most 4096"),
    ({"model": "m"}, 400, "`messages`"), ({**GOOD, "messages": "hi"}, 400, "`messages`"),
    ({**GOOD, "model": "other"}, 404, "'other' is not served"),
    ({**GOOD, "messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0]"),
    ({**GOOD, "messages": [{"role": "user", "content": [{"type": "text"}]}]}, 400, "messages[0].content"),
    ({**GOOD, "max_tokens": -5}, 400, "max_tokens"), ({**GOOD, "max_tokens": 65}, 400, "max_tokens"),
    ({**GOOD, "max_tokens": 61}, 400, "the prompt has 4 tokens"), ({**GOOD, "temperature": "hot"}, 400, "temperature"),
    ({**GOOD, "temperature": 2.5}, 400, "temperature"), ({**GOOD, "top_p": 0}, 400, "top_p"),
    ({**GOOD, "n": 5}, 400, "`n`"), ({**GOOD, "stream": "yes"}, 400, "stream"), ({**GOOD, "stop": [1]}, 400, "stop"),
    (b'{"model": "m", "x": ' + b"[" * 20 + b"]" * 20 + b"}", 400, "deeper than 16"),
    (b'{"model": "m", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 413, "at most"),
])
def test_chat_bodies_an_engine_cannot_serve_are_refused_with_their_reason(bad, status, expected):
    raw = bad if isinstance(bad, bytes) else json.dumps(bad).encode()
    with pytest.raises(Refused) as refused:
        check_chat(raw, LIMITS)
    assert refused.value.status == status and expected in str(refused.value), str(refused.value)


def test_a_body_nested_past_pythons_recursion_limit_is_refused_not_crashed():
    deep = b'{"model": "m", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(Refused, match="deeper than 16"):
        check_chat(deep, Limits(model="m", context=64, max_body_bytes=1 << 20))
    assert check_chat(json.dumps({**GOOD, "max_tokens": 60}).encode(), LIMITS)["max_tokens"] == 60


def call_guard(guard, method: str, path: str, body: bytes = b"", headers=()) -> tuple[int, dict, bytes]:
    """One request through an ASGI app, as uvicorn calls it, the body in two reads."""
    scope = {"type": "http", "method": method, "path": path, "headers": list(headers)}
    chunks = [{"type": "http.request", "body": body[:5], "more_body": True},
              {"type": "http.request", "body": body[5:], "more_body": False}]
    sent = []

    async def receive():
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(guard(scope, receive, send))
    return sent[0]["status"], dict(sent[0]["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


def test_the_guard_passes_checked_bodies_on_under_the_engines_name_and_answers_the_rest_itself():
    """The middleware on a plain ASGI app that echoes what it received."""
    seen, revived = [], []

    async def app(scope, receive, send):
        message = await receive()
        seen.append((scope.get("state", {}).get("request_id"), json.loads(message["body"] or b"{}")))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    guard = Guard(app, LIMITS, engine_model="/models/m", request_id_header="X-Request-ID",
                  revive=lambda: revived.append(1))
    good = json.dumps(GOOD).encode()
    status, headers, body = call_guard(guard, "POST", "/v1/chat/completions", good, [(b"x-request-id", b"abc")])
    assert (status, body, seen[-1][0]) == (200, b"ok", "abc") and headers[b"x-request-id"] == b"abc"
    assert seen[-1][1] == {**GOOD, "model": "/models/m"}, "the engine gets the body under its own model name"
    assert revived == [1], "a dead batching loop is looked for before each chat request"
    status, headers, body = call_guard(guard, "POST", "/v1/chat/completions", b'{"model": "m"}')
    assert status == 400 and b"messages" in body and len(headers[b"x-request-id"]) == 36, "a fresh uuid"
    assert len(seen) == 1, "a refused body never reaches the engine"
    assert call_guard(guard, "POST", "/reset")[0] == 404, "only the routes a client needs"
    assert call_guard(guard, "DELETE", "/v1/models")[0] == 405
    status, _, body = call_guard(guard, "GET", "/v1/models")
    assert status == 200 and [m["id"] for m in json.loads(body)["data"]] == ["m"] and len(seen) == 1
    assert call_guard(guard, "GET", "/health")[0] == 200 and len(seen) == 2, "health is the engine's own"


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def start_guarded(engine: str, model: Path, port: int) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-m", "labs.serve", engine, str(model), "--port", str(port),
                               "--threads", "1"], env=lab_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    for _ in range(120):
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return server
        assert server.poll() is None, server.stdout.read()
        time.sleep(0.5)
    server.kill()
    raise AssertionError(f"{engine} did not answer in 60 s")


@pytest.mark.slow
def test_an_engine_that_dies_takes_its_guard_down_with_a_reason_and_a_killed_guard_leaves_no_engine(built):
    """llama-server under `python -m labs.serve`: killed, the guard exits non-zero saying so (never a server
    that answers 502 forever); the guard killed with SIGKILL, Linux stops the engine (no orphan left running)."""
    model, port = built / "models" / "sft", free_port()
    server = start_guarded("llama-server", model, port)
    engine = children(server.pid)
    assert len(engine) == 1
    os.kill(engine[0], signal.SIGKILL)
    out, _ = server.communicate(timeout=60)
    assert server.returncode == 3 and "llama-server exited with -9" in out, out

    server = start_guarded("llama-server", model, port)
    engine = children(server.pid)[0]
    server.kill()
    server.wait()
    for _ in range(50):
        if not Path(f"/proc/{engine}").exists() or "Z" in Path(f"/proc/{engine}/stat").read_text().split()[2]:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the engine outlived its guard")
