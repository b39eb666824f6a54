"""The serving engines, each behind `labs.serve.guard`, started the same way by `just serve ENGINE` and by the lab:

    python -m labs.serve ENGINE MODEL_DIR --host 127.0.0.1 --port 8000

- `transformers`: `transformers serve` with continuous batching, in this process, the guard in its middleware.
- `vllm`: vLLM's OpenAI server from its own environment (`just vllm-env`), eager, with a bounded KV cache; the
  guard in its middleware (`--middleware`), so streamed tokens cross no second process.
- `llama-server`: llama.cpp's C++ server (`just llama-server`) on an f32 GGUF export of the same weights, on a
  Unix socket that only the guard's proxy, in this process, talks to.
This process supervises vLLM and llama-server: it stops them when it is stopped (and Linux stops them if it is
killed), and exits non-zero, saying why, if the engine exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from labs.core.run import die_with_parent

ENGINES = ("transformers", "vllm", "llama-server")
ROOT = Path(__file__).resolve().parents[2]
# where `just vllm-env` and `just llama-server` put their builds; the tests point these at a shared checkout's
VLLM_VENV = Path(os.environ.get("LAB_VLLM_VENV", ROOT / ".venv-vllm"))
LLAMA_SERVER = Path(os.environ.get("LAB_LLAMA_SERVER", ROOT / "build/llama-server/llama-server"))
BUILDS = {"vllm": (VLLM_VENV / "bin/python", "just vllm-env"), "llama-server": (LLAMA_SERVER, "just llama-server")}


class EngineError(RuntimeError):
    """An engine that is not built, or that did not start."""


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


def serve_transformers(model_dir: Path, limits, args) -> int:
    """`transformers serve` on `model_dir` with `Guard` in place of its request-id middleware; a continuous
    batching loop that died is started again on the next request (`revive`), where transformers serve itself
    would answer 503 until restarted."""
    from transformers.cli import transformers as cli
    from transformers.cli.serving import server

    from labs.serve.guard import Guard

    no_timer_thread_per_request()
    build_server = server.build_server

    def guarded_build_server(*a, **kwargs):
        app = build_server(*a, **kwargs)
        state = kwargs["generation_state"]

        def revive() -> None:
            if not state.is_cb_alive():
                print("serve: the continuous-batching loop had died; starting it again", file=sys.stderr)
                state.shutdown()  # the next request builds a new loop

        app.user_middleware = [m for m in app.user_middleware
                               if getattr(m.kwargs.get("dispatch"), "__name__", "") != "request_id_middleware"]
        app.add_middleware(Guard, limits=limits, engine_model=str(model_dir), request_id_header=server.X_REQUEST_ID,
                           revive=revive)
        return app

    server.build_server = guarded_build_server  # transformers serve imports it when it starts
    cache = ["--cb-num-blocks", str(args.cache_blocks), "--cb-block-size", str(args.block_size),
             "--cb-max-batch-tokens", str(args.max_batch_tokens)]
    with tempfile.TemporaryDirectory() as hub_cache:
        os.environ.update(HF_HUB_CACHE=hub_cache, HF_HUB_OFFLINE="1")  # it scans the cache; nothing is downloaded
        sys.argv = ["transformers", "serve", str(model_dir), "--host", args.host, "--port", str(args.port),
                    "--continuous-batching", *cache, "--dtype", "float32", "--device", "cpu",
                    "--default-seed", str(args.seed), "--no-trust-remote-code", "--log-level", "warning"]
        return cli.main()


def built(engine: str) -> Path:
    path, recipe = BUILDS[engine]
    if not path.exists():
        raise EngineError(f"{engine}: {path} is missing; `{recipe}` builds it")
    return path


def engine_command(engine: str, model_dir: Path, name: str, socket_path: str, workdir: Path, args) -> tuple[list, dict]:
    """The command line and environment of vLLM (on host:port) or llama-server (on `socket_path`)."""
    threads = str(args.threads)
    if engine == "vllm":
        # without VLLM_CPU_KVCACHE_SPACE the CPU worker asks for 92% of RAM; eager: ready in half the time of its
        # compiled default at the same tokens/s (docs/decisions.md). The guard runs in vLLM's API server (EnvGuard).
        guard = {"model_dir": str(model_dir), "model": name, "context": args.context, "max_n": args.max_n}
        env = {"VLLM_CPU_KVCACHE_SPACE": str(args.kv_cache_gib), "VLLM_CPU_OMP_THREADS_BIND": "nobind",
               "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "VLLM_DO_NOT_TRACK": "1",
               "OMP_NUM_THREADS": threads, "LAB_GUARD": json.dumps(guard),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        return [str(built("vllm")), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
                "--served-model-name", name, "--dtype", "float32", "--max-model-len", str(args.context),
                "--max-num-seqs", str(args.slots), "--enforce-eager", "--host", args.host, "--port", str(args.port),
                "--middleware", "labs.serve.guard.EnvGuard", "--uvicorn-log-level", "warning",
                "--disable-log-stats"], env
    from labs.core.gguf import export_gguf

    gguf = export_gguf(model_dir, "gguf_f32", workdir)  # f32: the same numbers as the torch model, unquantized
    return [str(built("llama-server")), "-m", str(gguf), "--alias", name, "--host", socket_path,
            "--parallel", str(args.slots), "--ctx-size", str(args.slots * args.context), "--threads", threads,
            "--threads-http", str(args.slots + 8), "--jinja", "--no-webui", "--no-slots", "--log-disable"], {}


def wait_ready(engine: str, process: subprocess.Popen, address: str, log: Path, timeout_s: float) -> None:
    """Until the engine's /health answers 200 at `address` (a URL, or a Unix socket's path)."""
    import httpx2 as httpx

    deadline = time.monotonic() + timeout_s
    url = address.startswith("http")
    with httpx.Client(transport=None if url else httpx.HTTPTransport(uds=address),
                      base_url=address if url else "http://engine") as client:
        while True:
            if process.poll() is not None:
                tail = log.read_text(errors="replace").strip().splitlines()[-20:] or ["(no output)"]
                print("\n".join(tail), file=sys.stderr)
                raise EngineError(f"{engine} exited with {process.returncode} before answering: {tail[-1]}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get("/health", timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise EngineError(f"{engine} did not answer /health within {timeout_s} s (log: {log})")
            time.sleep(0.5)


def serve_supervised(engine: str, model_dir: Path, limits, args) -> int:
    """Start `engine` and keep it until a signal or its own exit: vLLM on host:port with the guard inside it,
    llama-server on a Unix socket behind the guard's proxy in this process."""
    with tempfile.TemporaryDirectory(prefix="lab-serve-") as workdir:
        socket_path = f"{workdir}/{engine}.sock"  # llama-server binds a Unix socket when the host ends in .sock
        argv, env = engine_command(engine, model_dir, limits.model, socket_path, Path(workdir), args)
        log = Path(workdir) / "engine.log"
        with log.open("w") as out:
            process = subprocess.Popen(argv, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True, preexec_fn=die_with_parent)
        # as exceptions, so that `finally` stops the engine (uvicorn re-raises them once it has stopped)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, stopped_by_signal)
        try:
            url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}"
            wait_ready(engine, process, socket_path if engine == "llama-server" else url, log, args.startup_timeout_s)
            print(f"serve: {engine} on {model_dir} at http://{args.host}:{args.port} (model {limits.model!r})",
                  file=sys.stderr, flush=True)
            if engine == "llama-server":
                proxy(process, socket_path, limits, args)
            else:
                process.wait()
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            print(f"serve: {engine} exited with {process.returncode}; stopping:\n" + "\n".join(tail), file=sys.stderr)
            return 3
        finally:
            stop(process)


def proxy(process: subprocess.Popen, socket_path: str, limits, args) -> None:
    """The guard's proxy on host:port in front of the engine's socket, until the engine exits."""
    import uvicorn

    from labs.serve.guard import Guard, Proxy

    config = uvicorn.Config(Guard(Proxy(socket_path), limits), host=args.host, port=args.port, loop="uvloop",
                            http="httptools", log_level="warning", lifespan="on")
    server = uvicorn.Server(config)

    async def watch():
        while process.poll() is None:
            await asyncio.sleep(0.5)
        server.should_exit = True

    async def main():
        watcher = asyncio.ensure_future(watch())
        await server.serve()
        watcher.cancel()

    asyncio.run(main())


def stopped_by_signal(signum, _frame) -> None:
    raise SystemExit(128 + signum)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the engine's process group (vLLM runs its engine core as a child), SIGKILL after 30 s."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def main(argv: list[str] | None = None) -> int:
    """`python -m labs.serve ENGINE MODEL_DIR [--host H] [--port P] [--threads N]`: one guarded engine until
    Ctrl-C; sizes (context, slots, caches) from params.yaml's `serve` section."""
    import argparse

    from labs.core.config import load_params
    from labs.serve import Params

    parser = argparse.ArgumentParser(prog="python -m labs.serve", description=main.__doc__)
    parser.add_argument("engine", choices=ENGINES)
    parser.add_argument("model_dir", type=Path, help="a saved model directory, e.g. models/sft")
    parser.add_argument("--name", help="the model name clients send (default: the directory's name)")
    parser.add_argument("--host", default=None, help="address to bind (default: serve.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("LAB_THREADS", os.cpu_count() or 1)))
    given = parser.parse_args(argv)
    params = load_params(Params)
    cfg = params.serve
    args = argparse.Namespace(**{**cfg.model_dump(), **vars(given), "host": given.host or cfg.host,
                                 "seed": params.seed})
    model_dir = given.model_dir.resolve()
    if not (model_dir / "config.json").is_file():
        print(f"error: {given.model_dir}: no saved model here (config.json missing)", file=sys.stderr)
        return 2
    from labs.serve.guard import limits_for

    try:
        limits = limits_for(model_dir, given.name or model_dir.name, cfg.context, cfg.max_n)
        if given.engine == "transformers":
            return serve_transformers(model_dir, limits, args)
        return serve_supervised(given.engine, model_dir, limits, args)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
