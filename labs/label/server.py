"""The labelling page: `just label` (python -m labs.label). One process serves the page and owns the judgements
file; Starlette and uvicorn (already the serving labs' stack) do the HTTP.

    python -m labs.label --port 8010                         # 127.0.0.1 only
    LABEL_TOKEN=... python -m labs.label --host 0.0.0.0      # beyond this machine: a token is required

Each labeller (a name typed on the page, kept in the browser) is shown the pairs in the pair file's order,
resuming after their last judgement; which answer appears on the left is drawn per labeller and pair from a
seeded generator and checked when the judgement comes back, so a page cannot claim a side it was not shown.
Requests are refused with a 4xx before they touch the file: bodies over 16 KiB, anything but a JSON object of
the expected fields, an unknown pair, a second judgement of the same pair, a missing or wrong token. Answers
reach the page as JSON and are written with textContent: model output never becomes markup, and the Content
Security Policy allows this server's own scripts only.
"""

from __future__ import annotations

import argparse
import fcntl
import hmac
import ipaddress
import os
import random
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from labs.core import judgements
from labs.core.data import DataError, iter_jsonl
from labs.label.summary import summary

PAGE = Path(__file__).parent / "page"
PAIRS = Path("data/labels/pairs.jsonl")
MAX_BODY = 16 * 1024  # a judgement is ~200 bytes; a comment is capped at 1000 characters
SCREEN = {"left": 0, "right": 1}
HEADERS = {  # on every response: nothing from elsewhere, no inline script, no framing
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}


class Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Judge(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    labeller: str = Field(pattern=judgements.LABELLER.pattern)
    pair: str = Field(max_length=32)
    shown_left: Literal["a", "b"]  # which answer the page showed on the left
    choice: Literal["left", "right", "tie", "both_bad"]
    comment: str = Field("", max_length=1000)


class Undo(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    labeller: str = Field(pattern=judgements.LABELLER.pattern)


def read_pairs(path: Path) -> list[dict]:
    pairs = []
    for lineno, row in iter_jsonl(path):
        answers, models = row.get("answers"), row.get("models")
        if not (isinstance(row.get("pair"), str) and isinstance(row.get("prompt"), str)
                and isinstance(answers, list) and len(answers) == 2 and all(isinstance(a, str) for a in answers)
                and isinstance(models, list) and len(models) == 2):
            raise DataError(f'{path}:{lineno}: expected {{"pair", "prompt", "answers": [a, b], "models": [a, b]}}')
        pairs.append(row)
    if not pairs:
        raise DataError(f"{path}: no pairs (build them with `just lab label`)")
    return pairs


class Labelling:
    """The pairs and the judgements in force; every change goes to the file before it is acknowledged."""

    def __init__(self, pairs_path: Path, judgements_path: Path):
        self.pairs = read_pairs(pairs_path)
        self.by_id = {p["pair"]: p for p in self.pairs}
        self.path = judgements_path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()
        self.rows = judgements.read(self.path)
        self.current = judgements.standing(self.rows)  # in the order made: a labeller's last is the one to undo

    def judged(self, labeller: str) -> list[str]:
        """The pairs `labeller` has a judgement of, most recent last."""
        return [pair for who, pair in self.current if who == labeller]

    @staticmethod
    def shown_left(labeller: str, pair: str) -> str:
        """Which answer this labeller sees on the left: a coin per (labeller, pair), the same on every reload."""
        return "ab"[random.Random(f"{labeller}/{pair}").random() < 0.5]

    def progress(self, labeller: str) -> dict:
        return {"done": len(self.judged(labeller)), "total": len(self.pairs)}

    def next(self, labeller: str) -> dict:
        for pair in self.pairs:
            if (labeller, pair["pair"]) not in self.current:
                left = self.shown_left(labeller, pair["pair"])
                a, b = pair["answers"]
                sides = (a, b) if left == "a" else (b, a)
                return {"pair": pair["pair"], "prompt": pair["prompt"], "shown_left": left, "left": sides[0],
                        "right": sides[1]} | self.progress(labeller)
        return {"pair": None} | self.progress(labeller)

    def judge(self, j: Judge) -> dict:
        pair = self.by_id.get(j.pair)
        if pair is None:
            raise Refused(404, f"no pair {j.pair!r}")
        if (j.labeller, j.pair) in self.current:
            raise Refused(409, f"{j.labeller} has judged {j.pair} already (undo it first)")
        if j.shown_left != self.shown_left(j.labeller, j.pair):
            raise Refused(400, f"{j.pair} was not shown to {j.labeller} with answer {j.shown_left} on the left")
        sides = (j.shown_left, "b" if j.shown_left == "a" else "a")
        verdict = sides[SCREEN[j.choice]] if j.choice in SCREEN else j.choice
        first = 1 if verdict == "b" else 0  # chosen first; for tie and both_bad, a then b
        answers, models = pair["answers"], pair["models"]
        row = {"pair": j.pair, "labeller": j.labeller, "verdict": verdict, "left": j.shown_left,
               "prompt": pair["prompt"], "family": pair.get("family", "all"),
               "chosen": answers[first], "rejected": answers[1 - first],
               "chosen_model": models[first], "rejected_model": models[1 - first],
               "comment": j.comment, "time": now()}
        self._append(row)
        return self.progress(j.labeller)

    def undo(self, labeller: str) -> dict:
        judged = self.judged(labeller)
        if not judged:
            raise Refused(409, f"{labeller} has nothing to undo")
        self._append({"pair": judged[-1], "labeller": labeller, "verdict": "undo", "time": now()})
        return {"undone": judged[-1]} | self.progress(labeller)

    def _append(self, row: dict) -> None:
        judgements.append(self.path, row)  # on disk first: a crash after this loses no acknowledged judgement
        self.rows.append(row)
        judgements.apply(self.current, row)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


async def body(request: Request, model: type[BaseModel]) -> BaseModel:
    """The request's JSON body as `model`, read no further than MAX_BODY bytes."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise Refused(415, "send the body as application/json")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY:
        raise Refused(413, f"body is {declared} bytes; at most {MAX_BODY}")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise Refused(413, f"body is over {MAX_BODY} bytes")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise Refused(400, f"{where}: {first['msg']}") from None


def app(labelling: Labelling, token: str | None = None, hosts: list[str] | None = None) -> Starlette:
    def api(handler):
        async def endpoint(request: Request) -> Response:
            try:
                if token is not None:
                    sent = request.headers.get("authorization", "").removeprefix("Bearer ")
                    if not hmac.compare_digest(sent.encode(), token.encode()):
                        raise Refused(401, "a valid token is required (Authorization: Bearer ...)")
                return JSONResponse(await handler(request), headers=HEADERS)
            except Refused as exc:
                return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=HEADERS)
            except DataError as exc:  # the judgements file itself is damaged: nothing was written
                return JSONResponse({"error": str(exc)}, status_code=500, headers=HEADERS)
        return endpoint

    async def next_pair(request: Request) -> dict:
        labeller = request.query_params.get("labeller", "")
        if not judgements.LABELLER.fullmatch(labeller):
            raise Refused(400, "labeller must be 1-32 letters, digits, '_', '.' or '-'")
        return labelling.next(labeller)

    async def judge(request: Request) -> dict:
        return labelling.judge(await body(request, Judge))

    async def undo(request: Request) -> dict:
        return labelling.undo((await body(request, Undo)).labeller)

    async def stats(request: Request) -> dict:
        return summary(labelling.pairs, labelling.rows)

    def page(name: str, media: str):
        async def endpoint(request: Request) -> Response:
            return FileResponse(PAGE / name, media_type=media, headers=HEADERS)
        return endpoint

    routes = [Route("/", page("index.html", "text/html")), Route("/summary", page("summary.html", "text/html")),
              *(Route(f"/{name}", page(name, media)) for name, media in
                (("app.js", "text/javascript"), ("summary.js", "text/javascript"), ("style.css", "text/css"))),
              Route("/api/next", api(next_pair)), Route("/api/summary", api(stats)),
              Route("/api/judge", api(judge), methods=["POST"]), Route("/api/undo", api(undo), methods=["POST"])]
    # a page on another site cannot reach this one through a name that resolves to 127.0.0.1 (DNS rebinding)
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=hosts)] if hosts else []
    return Starlette(routes=routes, middleware=middleware)


def loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labs.label", description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=Path, default=PAIRS, help="the pairs to judge (the label stage's)")
    parser.add_argument("--judgements", type=Path, default=judgements.JUDGEMENTS, help="appended to")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind; beyond loopback needs a token")
    parser.add_argument("--port", type=int, default=8010)
    args = parser.parse_args(argv)
    token = os.environ.get("LABEL_TOKEN") or None
    if not loopback(args.host) and not token:
        print(f"error: --host {args.host} reaches beyond this machine: set LABEL_TOKEN to a secret the labellers "
              "add to the page's address as #token=...", file=sys.stderr)
        return 2
    try:
        labelling = Labelling(args.pairs, args.judgements)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    # one server per judgements file: a second would not see the first's judgements
    guard = os.open(args.judgements.parent, os.O_RDONLY)
    try:
        fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"error: another labelling page is serving {args.judgements}", file=sys.stderr)
        return 1
    import uvicorn

    hosts = ["127.0.0.1", "localhost"] if loopback(args.host) else None
    print(f"labelling {len(labelling.pairs)} pairs on http://{args.host}:{args.port}/ "
          f"(summary: /summary); judgements go to {args.judgements}", flush=True)
    uvicorn.run(app(labelling, token, hosts), host=args.host, port=args.port, log_level="warning")
    return 0
