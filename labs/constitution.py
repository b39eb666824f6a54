"""constitution — Constitutional AI (Bai et al. 2022): a helpful-only assistant critiques its own replies to red-team
requests against a written principle and rewrites the ones it faults; SL-CAI fine-tunes it on its final replies, RL-CAI
runs DPO on pairs its critiques label. Harmlessness and helpfulness before and after, with no human or gold label
in the loop.

    just lab constitution
    dvc exp run -S 'constitution.principles=["Off limits: the vault code and the launch code."]'

1. The constitution: `principles`, each naming the resources that are off limits; every critique is asked against
   one drawn at random.
2. The helpful-only assistant: `distill`'s pretrained student (it trains 5x faster than the SFT model's base)
   fine-tuned on helpfulness data alone, task chats and safety requests all answered, harmful ones too (the paper's
   helpful-only model complies with them), and on critique and revision chats. Those stand in for the paper's
   few-shot examples, which a 157k LM cannot follow from a prompt; they are written from the constitution's own
   words (a critique names the request's resource and calls it forbidden when the principle names it; the revision
   then refuses) on the requests of another file than the loop's, safety_preference_train, whose compliant replies
   they critique.
3. The loop, on the red-team requests (safety_train's prompts, harmful and benign mixed, their labels unread): the
   assistant replies greedily, critiques its reply against a random principle, and rewrites the reply its critique
   faults; a reply it passes stands.
4. SL-CAI: the assistant fine-tuned on request -> final reply, beside its own answers to as many task prompts
   (helpfulness kept with the assistant's own samples, as the paper mixes in its helpful model's). RL-CAI: DPO
   (with `dpo`'s NLL term on the chosen side) from the assistant on pairs its critiques label: the rewrite over
   a faulted reply, a passed reply over a refusal.
5. Steps 3-4 again per seed in `seeds` (a principle drawn per critique, the learners' data order and init); the
   assistant is trained once, with `seed`, so the spread is the loop's and the learners', not the assistant's.

The task world's checker only measures: metrics/constitution.json holds per seed how the loop went (replies,
critiques and rewrites that refuse or fault, by what the request really was) and, per model, held-out task
exact-match, refusal of harmful requests, over-refusal of benign look-alikes and exact-match on them, and refusal of
jailbreaks (labs/core/safety.py); per model the mean and sd over seeds and the change from the assistant.
"""

from __future__ import annotations

import random
import re
import tempfile
from pathlib import Path

from datasets import Dataset
from pydantic import Field
from trl import DPOConfig, DPOTrainer

from labs.core.chats import chat_trainer, train_chats
from labs.core.config import SEED, ConfigError, Section, Seed, Tier, TrainParams, view
from labs.core.data import DataError, chat_prompt, preference_chats, read_jsonl, write_jsonl
from labs.core.evaluation import MeasureParams, exact_match, generate, percent
from labs.core.models import load_model, load_tokenizer, require, trainer_kwargs
from labs.core.run import (
    atomic_path,
    checkpoint_dir,
    finish_checkpoints,
    run_card,
    save_curves,
    save_model,
    seed_everything,
    train_resumable,
)
from labs.core.safety import REFUSAL, probe_rows, refuses, safety_probe
from labs.core.spread import over_seeds
from labs.core.train import held_out_answers

OFF_LIMITS = ("the vault code, the launch code, the alarm code, the admin password, the master key and the root "
              "passphrase")


class ConstitutionParams(TrainParams):
    """The constitution, the assistant's fine-tune, the loop and the two ways of learning from it."""

    principles: list[str] = Field([f"Off limits: {OFF_LIMITS}.", f"Never work on {OFF_LIMITS}.",
                                   f"Refuse any request on {OFF_LIMITS}."], min_length=1)
    """the constitution: a principle is drawn at random per critique; a resource it names is off limits"""
    task_chats: int = Field(2000, gt=0)
    """sft_train chats in the assistant's helpfulness data"""
    teaching_requests: int | None = Field(None, gt=0)
    """safety_preference_train requests the critique and revision chats are written on (null: all)"""
    red_team: int | None = Field(None, gt=0)
    """safety_train prompts the loop runs on (null: all)"""
    seeds: list[int] = Field([1337, 1, 2], min_length=1)
    """the loop and both learners again per seed (the assistant once): the spread of the changes"""
    max_steps: int = 3000  # the assistant: 10 passes over its ~4,800 chats (2,000 halved its EM: docs/decisions.md)
    sl_steps: int = Field(300, gt=0)
    """SL-CAI's steps from the assistant, on the rewrites and as many of its own task answers"""
    rl_epochs: float = Field(3, gt=0)
    """RL-CAI's passes over its pairs"""
    rl_lr: float = Field(5e-4, gt=0)  # at rlaif's 1e-4 its refusal rose 0 -> 8% (docs/decisions.md)
    """RL-CAI's learning rate"""
    beta: float = Field(0.1, gt=0)  # DPO's paper default
    """DPO's pull toward the assistant"""
    sft_weight: float = Field(1.0, ge=0)
    """weight of the NLL loss on the chosen side (RPO, as in dpo); 0: plain DPO"""
    critique_tokens: int = Field(48, gt=0)  # a critique is at most 32 tokens (the tokenizer spells these words out)
    """most tokens of a critique"""
    max_length: int = Field(256, gt=0)  # the longest chat, a critique with its principle, is 218 tokens
    batch_size: int = Field(16, gt=0)
    lr: float = Field(2e-3, gt=0)  # sft's
    warmup_steps: int = Field(10, ge=0)
    save_steps: int = Field(250, gt=0)  # fine-tunes of a few minutes at most: fewer checkpoints than sft's
    logging_steps: int = Field(50, gt=0)


Measurement = view(MeasureParams, "max_new_tokens", "batch_size")


class Params(Section):
    """What constitution reads from params.yaml."""

    seed: Seed = SEED
    tier: Tier = "cpu"
    constitution: ConstitutionParams = ConstitutionParams()
    evaluate: Measurement = Measurement()


PREPARED, BASE, OUT = Path("data/prepared"), Path("models/distill/pretrained"), Path("models/constitution")
CRITIQUE = "Principle: {principle}\nRequest: {request}\nReply: {reply}\nCritique the reply by the principle."
REVISE = "Request: {request}\nReply: {reply}\nCritique: {critique}\nRewrite the reply by the critique."
# the critique names the resource before its verdict: the verdict then reads a few tokens back, not the whole request
FORBIDS, ALLOWS = "It works on {res}: forbidden.", "It works on {res}: allowed."
PASSED = re.compile(re.escape(ALLOWS).replace(re.escape("{res}"), "(.+)"))
REFUSED = re.compile(re.escape(REFUSAL).replace(re.escape("{res}"), "(.+)"))


def flags(critique: str) -> bool:
    """Whether a critique finds the reply at fault (its verdict)."""
    return critique.endswith(FORBIDS.split("}")[-1])


def off_limits(resource: str, principle: str) -> bool:
    """Whether `principle` names `resource`: the constitution's words decide, not the task world's list."""
    return resource.lower() in principle.lower()


def teaching_rows(params: Params) -> list[dict]:
    """The requests of safety_preference_train with their compliant reply and their resource (read off the pair's
    refusal); which side the file prefers is not read."""
    path = PREPARED / "safety_preference_train.jsonl"
    rows = []
    for pair in read_jsonl(path, "preference")[:params.constitution.teaching_requests]:
        refusal, reply = ((pair["chosen"], pair["rejected"]) if REFUSED.fullmatch(pair["chosen"])
                          else (pair["rejected"], pair["chosen"]))
        if not (found := REFUSED.fullmatch(refusal)):
            raise DataError(f"{path}: a pair without the task world's refusal on either side: {pair['prompt']!r}")
        rows.append({"request": pair["prompt"], "reply": reply, "resource": found[1]})
    return rows


def critique_chats(rows: list[dict], principles: list[str], seed: int) -> list[dict]:
    """Chats that teach critiquing a reply by a principle and rewriting it by the critique, written from the
    principle's own words: the paper's few-shot examples, taught."""
    rng, chats = random.Random(f"{seed}:constitution:critiques"), []
    for row in rows:
        principle = rng.choice(principles)
        forbidden = off_limits(row["resource"], principle)
        critique = (FORBIDS if forbidden else ALLOWS).format(res=row["resource"])
        chats += [{"prompt": CRITIQUE.format(principle=principle, **row), "completion": critique},
                  {"prompt": REVISE.format(critique=critique, **row),
                   "completion": REFUSAL.format(res=row["resource"]) if forbidden else row["reply"]}]
    return chats


def helpful_chats(params: Params) -> list[dict]:
    """Helpfulness data: task chats, and every safety request of the teaching file answered (compliance)."""
    rng = random.Random(f"{params.seed}:constitution:tasks")
    tasks = read_jsonl(PREPARED / "sft_train.jsonl", "sft")
    picked = rng.sample(tasks, min(params.constitution.task_chats, len(tasks)))
    answered = [{"prompt": r["request"], "completion": r["reply"]} for r in teaching_rows(params)]
    return [{"prompt": r["prompt"], "completion": r["completion"]} for r in picked] + answered


def fine_tune(params: Params, seed: int, name: str, model, rows: list[dict], tokenizer, val: list[dict],
              origin: dict | None = None, **update):
    """`model` fine-tuned on `rows` (SFT, loss on the answers): the model and its run card."""
    cfg = params.constitution.model_copy(update=update)
    run_params = params.model_copy(update={"seed": seed})
    seed_everything(seed)
    trainer = chat_trainer(run_params, cfg, f"constitution/{name}-{seed}", model, tokenizer, rows, val, BASE,
                           origin=origin)
    card = run_card("constitution", run_params, cfg) | {"model": name}
    train_chats(trainer, card)
    if name == "assistant" or seed == params.constitution.seeds[0]:
        save_curves(f"constitution/{name}", trainer.state.log_history)
    return trainer.model.eval(), card


def dpo(params: Params, seed: int, assistant: Path, pairs: list[dict], tokenizer):
    """RL-CAI: the assistant saved at `assistant` after DPO on `pairs` (`preference_pairs`); the model and its run
    card."""
    cfg = params.constitution
    rl = cfg.model_copy(update={"lr": cfg.rl_lr, "epochs": cfg.rl_epochs, "max_steps": -1})
    run_params = params.model_copy(update={"seed": seed})
    seed_everything(seed)
    model = load_model(assistant, cfg.precision, cfg.attn_implementation, training=True)
    reference = load_model(assistant, cfg.precision, cfg.attn_implementation)
    checkpoints = checkpoint_dir(f"constitution/rl_cai-{seed}", {"seed": seed, "tier": params.tier,
                                                                 "constitution": cfg.model_dump(), "pairs": pairs},
                                 [BASE, PREPARED / "safety_train.jsonl", PREPARED / "safety_preference_train.jsonl"])
    losses = {"sigmoid": 1.0} | ({"sft": cfg.sft_weight} if cfg.sft_weight else {})
    args = DPOConfig(**trainer_kwargs(run_params, rl, checkpoints) | {"eval_strategy": "no"},
                     loss_type=list(losses), loss_weights=list(losses.values()), beta=cfg.beta,
                     max_length=cfg.max_length)
    trainer = DPOTrainer(model=model, ref_model=reference, args=args, processing_class=tokenizer,
                         train_dataset=Dataset.from_list(preference_chats(pairs)))
    card = run_card("constitution", run_params, rl) | {"model": "rl_cai"}
    train_resumable(trainer, checkpoints, card)
    finish_checkpoints(checkpoints)
    if seed == cfg.seeds[0] and any("loss" in entry for entry in trainer.state.log_history):
        save_curves("constitution/rl_cai", trainer.state.log_history)
    return trainer.model.eval(), card


def critique_and_revise(model, tokenizer, params: Params, requests: list[str], seed: int) -> list[dict]:
    """The loop: per request the model's reply, its critique against a random principle, and its rewrite by the
    critique. A reply its critique passes stands: asked to rewrite one, the assistant copied it with slips (a third
    of the benign rewrites differed from their reply, docs/decisions.md)."""
    cfg, ev = params.constitution, params.evaluate
    rng = random.Random(f"{seed}:constitution:loop")
    replies, _ = generate(model, tokenizer, requests, ev.max_new_tokens, ev.batch_size)
    steps = [{"request": q, "reply": r.strip(), "principle": rng.choice(cfg.principles)}
             for q, r in zip(requests, replies, strict=True)]
    critiques, _ = generate(model, tokenizer, [CRITIQUE.format(**s) for s in steps], cfg.critique_tokens,
                            ev.batch_size)
    for step, critique in zip(steps, critiques, strict=True):
        step |= {"critique": critique.strip(), "rewrite": step["reply"]}
    faulted = [s for s in steps if flags(s["critique"])]
    rewrites, _ = generate(model, tokenizer, [REVISE.format(**s) for s in faulted], ev.max_new_tokens,
                           ev.batch_size)
    for step, rewrite in zip(faulted, rewrites, strict=True):
        step["rewrite"] = rewrite.strip()
    return steps


def preference_pairs(steps: list[dict]) -> list[dict]:
    """RL-CAI's pairs, each labelled by the assistant's own critique: where it faulted the reply, the rewrite over
    the reply; where it passed it, the reply over a refusal of the resource it named (the paper's feedback model
    compares two answers to every request; pairs of the first kind alone teach refusing everything)."""
    pairs = []
    for s in steps:
        if flags(s["critique"]):
            if s["rewrite"] != s["reply"]:
                pairs.append({"prompt": s["request"], "chosen": s["rewrite"], "rejected": s["reply"],
                              "kind": "faulted"})
        elif found := PASSED.fullmatch(s["critique"]):
            pairs.append({"prompt": s["request"], "chosen": s["reply"], "rejected": REFUSAL.format(res=found[1]),
                          "kind": "passed"})
    return pairs


def loop_scores(steps: list[dict], kinds: list[str]) -> dict:
    """How the loop went, by what each request really was (the checker's view, measured only): the share of
    replies, critiques and rewrites that refuse or flag harmful and benign requests, and how many rewrites differ."""
    def share(kind: str, test) -> float:
        return percent([test(s) for s, k in zip(steps, kinds, strict=True) if k == kind])
    return {kind: {"replies_refuse": share(kind, lambda s: refuses(s["reply"])),
                   "critiques_flag": share(kind, lambda s: flags(s["critique"])),
                   "rewrites_refuse": share(kind, lambda s: refuses(s["rewrite"]))} for kind in ("harmful", "benign")
            } | {"rewrites_changed": sum(s["rewrite"] != s["reply"] for s in steps), "requests": len(steps)}


def scores(model, tokenizer, params: Params, probe: list[dict]) -> dict:
    """Held-out task exact-match and the safety probe."""
    ev = params.evaluate
    return {"exact_match": exact_match(*held_out_answers(model, tokenizer, params))["overall"]} | safety_probe(
        model, tokenizer, probe, ev.max_new_tokens, ev.batch_size)


def train_assistant(params: Params, tokenizer, val: list[dict], out: Path) -> dict:
    """The helpful-only assistant, saved to `out`: its run card."""
    cfg = params.constitution
    rows = helpful_chats(params) + critique_chats(teaching_rows(params), cfg.principles, params.seed)
    # a critique's verdict is its last word: a chat cut at max_length would teach critiques without one
    longest = max(len(tokenizer(chat_prompt(tokenizer, r["prompt"]) + r["completion"], add_special_tokens=False)
                      ["input_ids"]) + 1 for r in rows)
    if longest > cfg.max_length:
        raise ConfigError(f"params.yaml: constitution.max_length = {cfg.max_length} cuts the longest chat "
                          f"({longest} tokens with its EOS): raise it, or shorten the principles")
    base = load_model(BASE, cfg.precision, cfg.attn_implementation, training=True)
    model, card = fine_tune(params, params.seed, "assistant", base, rows, tokenizer, val)
    save_model(model, tokenizer, out, card)
    return card


def seed_run(params: Params, seed: int, tokenizer, val: list[dict], assistant_dir: Path, card: dict,
             out: Path) -> dict:
    """One seed of the loop, SL-CAI and RL-CAI from the assistant, each saved to `out` and loaded from there to be
    scored. A trained model is never deep-copied: TRL's SFTTrainer rebinds its forward (the chunked cross-entropy
    patch), and a copy's forward would still run the original's weights."""
    cfg, ev = params.constitution, params.evaluate
    assistant = load_model(assistant_dir, cfg.precision)
    red_team = read_jsonl(PREPARED / "safety_train.jsonl", "sft")[:cfg.red_team]
    steps = critique_and_revise(assistant, tokenizer, params, [r["prompt"] for r in red_team], seed)
    write_jsonl(out / "loop.jsonl", [s | {"family": r["family"]} for s, r in zip(steps, red_team, strict=True)])

    # the assistant's own answers to task prompts: helpfulness data from the model itself, not from sft_train's
    prompts = [r["prompt"] for r in read_jsonl(PREPARED / "sft_train.jsonl", "sft")]
    prompts = random.Random(f"{seed}:constitution:replay").sample(prompts, min(len(steps), len(prompts)))
    answers, _ = generate(assistant, tokenizer, prompts, ev.max_new_tokens, ev.batch_size)
    sl_rows = [{"prompt": s["request"], "completion": s["rewrite"]} for s in steps] + [
        {"prompt": p, "completion": a.strip()} for p, a in zip(prompts, answers, strict=True)]
    start = load_model(assistant_dir, cfg.precision, cfg.attn_implementation, training=True)
    model, sl_card = fine_tune(params, seed, "sl_cai", start, sl_rows, tokenizer, val, origin={"after": card},
                               max_steps=cfg.sl_steps)
    save_model(model, tokenizer, out / "sl_cai", sl_card)

    pairs = preference_pairs(steps)
    kinds = {kind: sum(p["kind"] == kind for p in pairs) for kind in ("faulted", "passed")}
    if not kinds["faulted"]:
        raise DataError(f"constitution: seed {seed}: the assistant's critiques faulted none of its {len(steps)} "
                        f"replies: RL-CAI has no pairs to learn from (raise constitution.max_steps)")
    model, rl_card = dpo(params, seed, assistant_dir, pairs, tokenizer)
    save_model(model, tokenizer, out / "rl_cai", rl_card)
    return {"seed": seed, "loop": loop_scores(steps, [r["family"] for r in red_team]) | {"rl_pairs": kinds}}


KEYS = ("exact_match", "refusal", "over_refusal", "benign_exact_match", "jailbreak_refusal")


def run(params: Params) -> dict:
    cfg = params.constitution
    require(BASE, "config.json", "distill")
    tokenizer = load_tokenizer(BASE)
    val = [{"prompt": r["prompt"], "completion": r["completion"]}
           for r in read_jsonl(PREPARED / "sft_val.jsonl", "sft")]
    probe = probe_rows(PREPARED)
    results = []
    with atomic_path(OUT) as tmp:
        card = train_assistant(params, tokenizer, val, tmp / "assistant")
        before = scores(load_model(tmp / "assistant", cfg.precision), tokenizer, params, probe)
        for seed in cfg.seeds:  # the first seed's models are the stage's outs; the others' go once scored
            with tempfile.TemporaryDirectory() as scratch:
                out = tmp if seed == cfg.seeds[0] else Path(scratch)
                result = seed_run(params, seed, tokenizer, val, tmp / "assistant", card, out)
                result["models"] = [{"model": "assistant"} | before] + [
                    {"model": name} | scores(load_model(out / name, cfg.precision), tokenizer, params, probe)
                    for name in ("sl_cai", "rl_cai")]
            print(f"constitution: seed {seed}: loop {result['loop']}; {result['models']}")
            results.append(result)
    spread = over_seeds([r["models"] for r in results], "model", KEYS)
    for row in spread:
        row["change"] = {key: round(row[key]["mean"] - spread[0][key]["mean"], 2) for key in KEYS}
    return {"base_model": str(BASE), "principles": cfg.principles, "seeds": cfg.seeds, "runs": results, "rows": spread}


def table(metrics: dict) -> tuple[list[str], list[list]]:
    """metrics/constitution.json as a table: per model, task exact-match and the safety probe, mean ± sd over
    seeds."""
    n = len(metrics["seeds"])
    names = {"assistant": "helpful-only assistant", "sl_cai": "SL-CAI (SFT on its final replies)",
             "rl_cai": "RL-CAI (DPO on the pairs its critiques label)"}
    heads = ["task EM %", "refusal %", "over-refusal %", "benign EM %", "jailbreak refusal %"]
    return (["model", *[f"{h} ({n} seeds)" for h in heads]],
            [[names[r["model"]], *[f"{r[k]['mean']:.1f} ± {r[k]['sd']:.1f}" for k in KEYS]] for r in metrics["rows"]])
