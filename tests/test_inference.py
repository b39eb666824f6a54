"""Inference labs on the tiny project that `built` made: decode, attention, speculative, serve. Speeds are
recorded, never asserted (they belong to benchmarks); what is asserted is what must hold on any machine:
greedy outputs that do not change with the cache or the draft, the trade-offs' directions, a server that
answers every request and rejects malformed ones."""

import asyncio
import json
import types
from pathlib import Path

import pytest
import torch

from labs.decode import ContrastiveLogits, answer_diversity, distinct
from labs.serve import CheckedRequests, chat_request_problem, no_timer_thread_per_request


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
def test_server_answers_every_request_and_rejects_malformed_ones(built):
    serve = load(built / "metrics/serve.json")
    assert [level["concurrency"] for level in serve["levels"]] == [1, 8]
    for level in serve["levels"]:
        assert level["errors"] == 0 and level["requests"] == 2 * level["concurrency"], level
        assert level["latency_ms_p50"] <= level["latency_ms_p99"] and level["ttft_ms_p50"] <= level["latency_ms_p50"]
    assert all(400 <= code < 500 for code in serve["malformed_status"].values()), serve["malformed_status"]
    assert serve["alive_after_malformed"] and serve["host"] == "127.0.0.1"
    assert serve["reachable_off_loopback"] in (False, None)
    assert serve["served_equals_generate_pct"] >= 90, "the server answers as generate does"
    # the KV cache params.yaml sizes (64 MB), not transformers serve's own: 60% of the machine's RAM on CPU
    assert 0 < serve["server_peak_rss_mb"] < 2048, serve["server_peak_rss_mb"]


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


def test_chat_request_check():
    good = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": True}
    assert chat_request_problem(json.dumps(good).encode()) is None
    for bad, expected in [(b"{oops", "not JSON"), (b"[]", "JSON object"),
                          ({"model": "m"}, "`messages`"), ({**good, "messages": "hi"}, "`messages`"),
                          ({**good, "messages": [{"role": "robot", "content": "x"}]}, "messages[0]"),
                          ({**good, "max_tokens": -5}, "max_tokens"), ({**good, "temperature": "hot"}, "temperature")]:
        raw = bad if isinstance(bad, bytes) else json.dumps(bad).encode()
        assert expected in chat_request_problem(raw), bad


def test_checked_requests_rejects_bad_bodies_passes_good_ones_and_sets_the_request_id():
    """The middleware on a plain ASGI app that echoes what it received, called as uvicorn calls it."""
    seen = []

    async def app(scope, receive, send):
        message = await receive()
        seen.append((scope["state"]["request_id"], message["body"]))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def call(path: str, body: bytes, headers=()) -> tuple[int, dict, bytes]:
        scope = {"type": "http", "method": "POST", "path": path, "headers": list(headers)}
        chunks = [{"type": "http.request", "body": body[:5], "more_body": True},  # a body in two reads
                  {"type": "http.request", "body": body[5:], "more_body": False}]
        sent = []

        async def receive():
            return chunks.pop(0)

        async def send(message):
            sent.append(message)

        asyncio.run(CheckedRequests(app, header="x-request-id")(scope, receive, send))
        return sent[0]["status"], dict(sent[0]["headers"]), b"".join(m.get("body", b"") for m in sent[1:])

    good = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    status, headers, body = call("/v1/chat/completions", good, [(b"x-request-id", b"abc")])
    assert (status, body, seen[-1]) == (200, b"ok", ("abc", good)), "the app reads the whole body once more"
    assert headers[b"x-request-id"] == b"abc"
    status, headers, body = call("/v1/chat/completions", b'{"model": "m"}')
    assert status == 400 and b"messages" in body and len(headers[b"x-request-id"]) == 36, "a fresh uuid"
    assert len(seen) == 1, "a rejected body never reaches the model"
    status, _, _ = call("/v1/completions", b'{"model": "m"}')
    assert status == 200 and len(seen) == 2, "only chat completions are checked"
