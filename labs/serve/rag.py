"""`just serve ENGINE models/rag`: the OpenAI API with retrieval on. A front on 127.0.0.1 takes each chat request,
puts the top-k documents of models/rag's index for its last user message into that message (labs/rag.py's
prompt, the one the reader was fine-tuned on), and relays it to one guarded engine serving models/rag/reader on a
port of its own. The response says which documents were read in the `x-rag-documents` header.

The documents packed into a prompt are as many of the top k as fit in `serve.context` beside the answer (the
engine's guard refuses anything longer); a question that does not fit alone is answered 400 here. Our own code:
no library puts retrieval in front of an OpenAI-compatible server.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from labs.core.data import DataError

DEFAULT_ANSWER_TOKENS = 16  # a request without max_tokens: room for the task world's longest answer


def refused(message: str, status: int):
    """An OpenAI-style error response, the body the guard sends (labs/serve/guard.py)."""
    from starlette.responses import JSONResponse

    from labs.serve.guard import error

    return JSONResponse(error(message), status_code=status)


def front(retrieval, tokenizer, engine: str, context: int, k: int):
    """The ASGI app: /v1/chat/completions with retrieval, /health and /v1/models from the engine as they are."""
    import httpx2 as httpx  # the HTTP client the openai package itself is built on
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    client = httpx.AsyncClient(base_url=engine, timeout=600)

    async def chat(request):
        try:
            body = json.loads(await request.body())
        except ValueError:
            return refused("the body is not JSON", 400)
        messages = body.get("messages") if isinstance(body, dict) else None
        last = messages[-1] if isinstance(messages, list) and messages else None
        if not isinstance(last, dict) or last.get("role") != "user" or not isinstance(last.get("content"), str):
            return refused('"messages" must end with a user message whose content is a string', 400)
        answer_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_ANSWER_TOKENS
        if not isinstance(answer_tokens, int) or answer_tokens < 1:
            return refused('"max_tokens" must be a positive integer', 400)
        try:
            text, found = await run_in_threadpool(retrieval.ask, last["content"], k, tokenizer, context, answer_tokens)
        except DataError as exc:
            return refused(str(exc), 400)
        body["messages"] = [*messages[:-1], {**last, "content": text}]
        upstream = await client.send(client.build_request("POST", "/v1/chat/completions", json=body), stream=True)
        headers = {"content-type": upstream.headers.get("content-type", "application/json"),
                   "x-rag-documents": ",".join(found)}
        return StreamingResponse(upstream.aiter_raw(), status_code=upstream.status_code, headers=headers,
                                 background=BackgroundTask(upstream.aclose))

    async def relayed(request):
        upstream = await client.get(request.url.path)
        return Response(upstream.content, upstream.status_code,
                        media_type=upstream.headers.get("content-type", "application/json"))

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        await client.aclose()

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/health", relayed),
                             Route("/v1/models", relayed)], lifespan=lifespan, max_body_size=1 << 20)


def main(argv: list[str] | None = None) -> int:
    """`python -m labs.serve.rag ENGINE RAG_DIR [--port P] [-k K]`: retrieval in front of one engine until Ctrl-C."""
    import uvicorn

    from labs.core.config import load_params
    from labs.core.models import load_tokenizer, require
    from labs.core.run import die_with_parent
    from labs.rag import READER, Retrieval
    from labs.serve import Params
    from labs.serve.engines import ENGINES, EngineError, wait_ready
    from labs.serve.lab import free_port

    parser = argparse.ArgumentParser(prog="python -m labs.serve.rag", description=main.__doc__)
    parser.add_argument("engine", choices=ENGINES)
    parser.add_argument("rag_dir", type=Path, help="what `just lab rag` built: models/rag")
    parser.add_argument("--host", default=None, help="address to bind (default: serve.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("-k", type=int, default=3, help="documents retrieved for each question (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("LAB_THREADS", os.cpu_count() or 1)))
    args = parser.parse_args(argv)
    cfg = load_params(Params).serve
    try:
        retrieval = Retrieval(args.rag_dir)
        reader = require(args.rag_dir / READER, "config.json", "rag")
        tokenizer = load_tokenizer(reader)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    port = free_port("127.0.0.1")
    with tempfile.TemporaryDirectory() as workdir:
        log = Path(workdir) / "engine.log"
        # the engine stops with this process, however it ends (engines.py's guard does the same for its engine)
        with log.open("w") as out:
            engine = subprocess.Popen([sys.executable, "-m", "labs.serve", args.engine, str(reader), "--name", "rag",
                                       "--port", str(port), "--threads", str(args.threads)], stdout=out,
                                      stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                      preexec_fn=die_with_parent)
        try:
            wait_ready(args.engine, engine, f"http://127.0.0.1:{port}", log, cfg.startup_timeout_s)
            app = front(retrieval, tokenizer, f"http://127.0.0.1:{port}", cfg.context, args.k)
            print(f"serve: {args.engine} with retrieval (top {args.k} of {len(retrieval.documents)} documents) on "
                  f"http://{args.host or cfg.host}:{args.port}/v1, model \"rag\"", file=sys.stderr)
            uvicorn.run(app, host=args.host or cfg.host, port=args.port, log_level="warning")
        except EngineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            engine.terminate()
            try:
                engine.wait(timeout=30)
            except subprocess.TimeoutExpired:
                engine.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
