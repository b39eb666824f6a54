"""A scripted labeller: the task world's answer checker judges a labelling round through the page's own API, as a
person would (GET /api/next, then POST /api/judge with the side it chose), until every pair is judged.

    python -m labs.tools.checker_labeller http://127.0.0.1:8010       # while `just label` runs
    dvc exp run -S dpo.pairs=human dpo                                 # DPO on its judgements

Its verdicts are the checker's (kept in the pair file; the page never shows them): the right answer of a pair
with one right answer, tie when both are right, both bad when neither is. Labels this good are the ceiling for
people's; the tests drive the page with it too. LABEL_TOKEN is sent when set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request
from pathlib import Path

from labs.core.judgements import DECISIVE
from labs.label.server import PAIRS, read_pairs


def checker_choice(pair: dict, shown: dict) -> str:
    """The screen choice (left | right | tie | both_bad) that gives `pair` the checker's verdict, as `shown`."""
    verdict = pair["checker"]
    if verdict not in DECISIVE:
        return verdict
    return "left" if verdict == shown["shown_left"] else "right"


def call(url: str, body: dict | None = None) -> dict:
    headers = {"Content-Type": "application/json"}
    if token := os.environ.get("LABEL_TOKEN"):
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=60) as response:
        return json.load(response)


def label(url: str, pairs: list[dict], labeller: str, choose=checker_choice) -> int:
    """Judge every pair `labeller` has not judged yet with `choose(pair, shown)`; the number judged."""
    by_id, judged = {p["pair"]: p for p in pairs}, 0
    while (shown := call(f"{url}/api/next?labeller={labeller}"))["pair"] is not None:
        call(f"{url}/api/judge", {"labeller": labeller, "pair": shown["pair"], "shown_left": shown["shown_left"],
                                  "choice": choose(by_id[shown["pair"]], shown)})
        judged += 1
    return judged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labs.tools.checker_labeller", description=__doc__.split("\n")[0])
    parser.add_argument("url", help="the labelling page, e.g. http://127.0.0.1:8010")
    parser.add_argument("--pairs", type=Path, default=PAIRS, help="the pair file the page serves")
    parser.add_argument("--labeller", default="checker", help="the name its judgements carry")
    args = parser.parse_args(argv)
    judged = label(args.url.rstrip("/"), read_pairs(args.pairs), args.labeller)
    print(f"{args.labeller}: judged {judged} pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
