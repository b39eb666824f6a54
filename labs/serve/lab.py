"""The serve lab's run: every engine in turn, started as a user starts it, measured by one client."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from labs.core.data import DataError, read_jsonl
from labs.core.evaluation import exact_match
from labs.core.models import load_model, load_tokenizer, require
from labs.serve import Params
from labs.serve.engines import BUILDS, EngineError, wait_ready
from labs.serve.hostile import concurrent_statuses, drop_streams, hostile_statuses, models_listed
from labs.serve.load import fastest, level, reachable_elsewhere, sequential_pass, summarize, tree_peak_mb

PREPARED, MODELS = Path("data/prepared"), Path("models")


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def ensure_built(engine: str) -> None:
    """Build an engine's environment the first time it is asked for (`just vllm-env`, `just llama-server`)."""
    if engine not in BUILDS or BUILDS[engine][0].exists():
        return
    path, recipe = BUILDS[engine]
    if not shutil.which("just"):
        raise EngineError(f"{engine}: {path} is missing; `{recipe}` builds it")
    print(f"serve: {path} is missing: running `{recipe}`", flush=True)
    subprocess.run(recipe.split(), check=True, stdout=sys.stderr)


@contextlib.contextmanager
def running(engine: str, path: Path, params: Params, threads: int):
    """`python -m labs.serve ENGINE PATH` as a child; yields its URL and process once /health answers."""
    cfg = params.serve
    port = free_port(cfg.host)
    url = f"http://{'127.0.0.1' if cfg.host in ('0.0.0.0', '::') else cfg.host}:{port}"
    with tempfile.NamedTemporaryFile("w+", prefix=f"serve-{engine}-", suffix=".log") as log:
        started = time.monotonic()
        server = subprocess.Popen([sys.executable, "-m", "labs.serve", engine, str(path), "--name", cfg.model,
                                   "--host", cfg.host, "--port", str(port), "--threads", str(threads)],
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            # the child waits startup_timeout_s for its engine; a minute more covers loading the guard's tokenizer
            wait_ready(engine, server, url, Path(log.name), cfg.startup_timeout_s + 60)
            yield url, server, round(time.monotonic() - started, 1)
        finally:
            server.terminate()
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, 9)
                server.wait()


def measure_engine(engine: str, path: Path, params: Params, model, tokenizer, test: list[dict]) -> dict:
    """One engine: interleaved rounds of the baseline and every level, then answers, memory and hostile input."""
    cfg = params.serve
    prompts = [r["prompt"] for r in test]
    baseline_prompts = prompts[:max(cfg.concurrency)]  # one request per client of the largest level
    baseline_runs, level_runs = [], {concurrency: [] for concurrency in cfg.concurrency}
    with running(engine, path, params, torch.get_num_threads()) as (url, server, startup_s):
        warm, _ = level(url, cfg.model, prompts, 1, 2, cfg.max_tokens)  # first-request setup
        if any("error" in r for r in warm):
            raise DataError(f"serve: {engine} at {url} failed the first requests: {warm}")
        for round_ in range(1, cfg.rounds + 1):
            baseline, generated = sequential_pass(model, tokenizer, baseline_prompts, cfg.max_tokens)
            baseline_runs.append(baseline)
            report = [f"sequential {baseline['output_tokens_per_s']}"]
            for concurrency, runs in level_runs.items():
                runs.append(summarize(*level(url, cfg.model, prompts, concurrency, cfg.requests_per_client,
                                             cfg.max_tokens), tokenizer))
                report.append(f"concurrency {concurrency} {runs[-1]['output_tokens_per_s']}")
            print(f"serve: {engine}, round {round_}, tokens/s: {', '.join(report)}", flush=True)
        served, _ = level(url, cfg.model, baseline_prompts, len(baseline_prompts), 1, cfg.max_tokens)
        peak_mb = tree_peak_mb(server.pid)
        hostile = hostile_statuses(url, cfg.model, cfg.context)
        drop_streams(url, cfg.model, 2 * cfg.slots, cfg.context // 2)
        after = concurrent_statuses(url, cfg.model)
        listed = models_listed(url)
        elsewhere = reachable_elsewhere(int(url.rsplit(":", 1)[1]))
        same_process = server.poll() is None
    baseline = fastest(baseline_runs)
    levels = [{"concurrency": c, **fastest(runs)} for c, runs in level_runs.items()]
    for row in levels:
        row["speedup_vs_sequential"] = round(row["output_tokens_per_s"] / baseline["output_tokens_per_s"], 2)
    same = [r.get("text") == g for r, g in zip(served, generated, strict=True)]
    return {"engine": engine, "startup_s": startup_s, "sequential_generate": baseline, "levels": levels,
            "peak_rss_mb": peak_mb, "served_equals_generate_pct": round(100 * sum(same) / len(same), 2),
            "served_exact_match": exact_match(test[:len(served)], [r.get("text", "") for r in served])["overall"],
            "hostile_status": hostile, "after_hostile_100_concurrent": after, "same_process": same_process,
            "models_listed": listed, "reachable_off_loopback": elsewhere}


def compare_engines(params: Params) -> dict:
    cfg = params.serve
    path = require(MODELS / cfg.model, "config.json", cfg.model).resolve()
    tokenizer = load_tokenizer(path)
    test = read_jsonl(PREPARED / "sft_test.jsonl", "sft")
    model = load_model(path, "fp32")
    for engine in cfg.engines:
        ensure_built(engine)
    rows = []
    for engine in cfg.engines:
        row = measure_engine(engine, path, params, model, tokenizer, test)
        rows.append(row)
        for lv in row["levels"]:
            print(f"serve: {engine}, concurrency {lv['concurrency']}: {lv['requests_per_s']} req/s, "
                  f"{lv['output_tokens_per_s']} tok/s ({lv['speedup_vs_sequential']}x sequential), "
                  f"p50 {lv['latency_ms_p50']} ms, errors {lv['errors']}")
        print(f"serve: {engine}: answers equal to generate's {row['served_equals_generate_pct']}%, peak memory "
              f"{row['peak_rss_mb']} MB, hostile -> {sorted(set(map(str, row['hostile_status'].values())))}, "
              f"then 100 concurrent -> {row['after_hostile_100_concurrent']}")
    # each engine's baseline is measured beside it, in its rounds; the fastest of them puts every engine on one scale
    # (the baseline beside one engine can be slower than beside another: what that engine does between requests)
    fastest_sequential = max(row["sequential_generate"]["output_tokens_per_s"] for row in rows)
    for row in rows:
        for lv in row["levels"]:
            lv["speedup_vs_fastest_sequential"] = round(lv["output_tokens_per_s"] / fastest_sequential, 2)
    top, best = max(((row, lv) for row in rows for lv in row["levels"]),
                    key=lambda pair: pair[1]["output_tokens_per_s"])
    return {"model": cfg.model, "host": cfg.host, "max_tokens": cfg.max_tokens,
            "requests_per_client": cfg.requests_per_client, "rounds": cfg.rounds, "engines": rows,
            "fastest_sequential_tokens_per_s": fastest_sequential,
            "best": {"engine": top["engine"], "concurrency": best["concurrency"],
                     "output_tokens_per_s": best["output_tokens_per_s"],
                     "speedup_vs_sequential": best["speedup_vs_sequential"],
                     "speedup_vs_fastest_sequential": best["speedup_vs_fastest_sequential"]}}
