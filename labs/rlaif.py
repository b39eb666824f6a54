"""rlaif — a larger model as the preference labeller: the SFT model, taught to judge, picks the better of two of a
small policy's own answers; DPO on its labels against DPO on the checker's labels against no DPO at all.

    just lab rlaif
    dvc exp run -S rlaif.samples_per_prompt=2

1. The judge. The SFT model (14x the policy's parameters) is fine-tuned on judging chats (labs/core/judge.py) built
   from the task world's preference file: "Which answer to the question is right? ... A: ... B: ...", answered with
   the right answer, working and all; the side whose final answer it names is its verdict. Like a hub judge's
   instruction tuning, it learns from other pairs than the ones it will label: the file's curated slips, never
   the policy's samples.
2. The pairs. The policy, `distill`'s student, answers the RL prompts greedily and samples more answers (where
   a real source made the student, `policy_sft` first fine-tunes it on the task world's chats); a prompt
   where a sample's final answer differs from the greedy one makes one candidate pair (the greedy answer and the
   first such sample).
3. The labels. The judge is asked in both orders; a pair it prefers the same answer of in both is labelled (AI),
   one whose verdict follows the position is dropped. The task world's checker labels the pairs it can decide,
   one answer right and one wrong (gold): the control with perfect labels.
4. DPO (with `dpo`'s NLL term on the chosen answers) trains the policy on each label set; the policy without DPO
   is the baseline. Steps 2-4 repeat per seed in `seeds`: new samples, new labels, a new DPO run.

metrics/rlaif.json: the judge's agreement with the checker on the policy's pairs and on the file's held-out pairs,
its position flips and first-position share; per seed the pairs each source labelled and the held-out exact-match
of each policy; per policy the mean and sd over seeds and the gain over no DPO.
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset
from pydantic import Field
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

from labs.core.chats import chat_trainer, train_chats
from labs.core.config import SEED, Section, Seed, Tier, TrainParams, view
from labs.core.data import DataError, preference_chats, read_jsonl
from labs.core.evaluation import MeasureParams, exact_match, extract_answer, generate, is_correct, percent
from labs.core.judge import agreement, judge, judging_chats
from labs.core.models import count_parameters, load_model, load_tokenizer, require, trainer_kwargs
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
from labs.core.spread import over_seeds
from labs.core.train import as_chat, held_out_answers


class JudgeParams(TrainParams):
    """The judge's fine-tune from the SFT model."""

    pairs: int = Field(4000, gt=0)
    """preference-file pairs it learns to judge from (each shown once, the right answer on a random side)"""
    max_length: int = Field(256, gt=0)  # a question and two answers with their steps
    batch_size: int = Field(16, gt=0)
    epochs: float = Field(2, gt=0)
    lr: float = Field(5e-4, gt=0)
    warmup_steps: int = Field(20, ge=0)


class PolicySFTParams(TrainParams):
    """The student's fine-tune on the task world's chats before the loop, for a student distilled on a real source."""

    max_steps: int = Field(0, ge=0)  # distill's student of the task world already answers its tasks
    """optimizer steps on data/prepared/world_sft_train.jsonl; 0: none, the student as distill left it"""
    max_length: int = Field(128, gt=0)
    batch_size: int = Field(16, gt=0)
    lr: float = Field(2e-3, gt=0)


class RlaifParams(TrainParams):
    """The judge, the policy's pairs and the DPO schedule (the policy is `distill`'s student)."""

    judge: JudgeParams = JudgeParams()
    """the judge's fine-tune"""
    policy_sft: PolicySFTParams = PolicySFTParams()
    """the student taught the task world's answers first: one distilled on a real source never writes Answer: X"""
    prompts: int | None = Field(1000, gt=0)
    """RL prompts the policy answers (null: all of data/prepared/world_rl_train.jsonl)"""
    samples_per_prompt: int = Field(4, gt=0)
    """answers sampled per prompt; the first whose final answer differs from the greedy one is its pair's other side"""
    temperature: float = Field(1.0, gt=0)  # the policy's own distribution
    """sampling temperature of the policy's answers"""
    seeds: list[int] = Field([1337, 1, 2], min_length=1)
    """one run of samples, labels and DPO per seed: the spread of the gains"""
    beta: float = Field(0.1, gt=0)  # DPO's paper default
    """DPO's pull toward the policy it starts from"""
    sft_weight: float = Field(1.0, ge=0)
    """weight of the NLL loss on the chosen answers (RPO, as in dpo); 0: plain DPO"""
    max_length: int = Field(128, gt=0)
    batch_size: int = Field(16, gt=0)
    epochs: float = Field(2, gt=0)
    lr: float = Field(1e-4, gt=0)
    warmup_steps: int = Field(10, ge=0)


Measurement = view(MeasureParams, "max_new_tokens", "batch_size", "precision")


class Params(Section):
    """What rlaif reads from params.yaml."""

    seed: Seed = SEED
    tier: Tier = "cpu"
    rlaif: RlaifParams = RlaifParams()
    evaluate: Measurement = Measurement()


PREPARED, SFT, POLICY, OUT = Path("data/prepared"), Path("models/sft"), Path("models/distill/student"), Path(
    "models/rlaif")
# the task world's pairs and prompts whatever data.source: its checker gives the gold labels and the judge's score
PAIRS, PROMPTS = PREPARED / "world_preference_train.jsonl", PREPARED / "world_rl_train.jsonl"


def train_judge(params: Params, tokenizer, out: Path):
    """The SFT model fine-tuned on judging chats from the preference file, saved to `out`; its training stats."""
    cfg = params.rlaif.judge
    pairs = read_jsonl(PAIRS, "preference")[:cfg.pairs]
    train_rows = judging_chats(pairs, f"{params.seed}:rlaif:judge")
    seed_everything(params.seed)
    model = load_model(SFT, cfg.precision, cfg.attn_implementation, training=True)
    checkpoints = checkpoint_dir("rlaif/judge", {"seed": params.seed, "tier": params.tier, "judge": cfg.model_dump()},
                                 [SFT, PAIRS, PREPARED / "world_preference_val.jsonl"])
    args = SFTConfig(**trainer_kwargs(params, cfg, checkpoints) | {"eval_strategy": "no"}, max_length=cfg.max_length,
                     completion_only_loss=True, packing=False)
    trainer = SFTTrainer(model=model, args=args, train_dataset=as_chat(train_rows), processing_class=tokenizer)
    card = run_card("rlaif/judge", params, cfg)
    stats = train_resumable(trainer, checkpoints, card)
    save_curves("rlaif/judge", trainer.state.log_history)
    finish_checkpoints(checkpoints)
    save_model(trainer.model, tokenizer, out, card)
    return trainer.model.eval(), stats | {"pairs": len(pairs)}


def candidate_pairs(policy, tokenizer, params: Params, seed: int) -> list[dict]:
    """Per RL prompt, the policy's greedy answer and the first of its sampled answers with another final answer,
    and whether each is right (the checker's view, kept for the gold labels and for measuring the judge). The
    greedy answer is what the policy says when asked; a pair with it moves that answer, where two samples from the
    tails of its distribution would not (docs/decisions.md)."""
    cfg, ev = params.rlaif, params.evaluate
    rows = read_jsonl(PROMPTS, "rl")[:cfg.prompts]
    greedy, _ = generate(policy, tokenizer, [r["prompt"] for r in rows], ev.max_new_tokens, ev.batch_size)
    repeated = [r["prompt"] for r in rows for _ in range(cfg.samples_per_prompt)]
    samples, _ = generate(policy, tokenizer, repeated, ev.max_new_tokens, ev.batch_size, temperature=cfg.temperature,
                          seed=seed)
    pairs = []
    for i, (row, first) in enumerate(zip(rows, greedy, strict=True)):
        own = samples[i * cfg.samples_per_prompt:(i + 1) * cfg.samples_per_prompt]
        second = next((s for s in own if extract_answer(s) != extract_answer(first)), None)
        if second is not None:
            pairs.append({"prompt": row["prompt"], "first": first, "second": second,
                          "first_right": is_correct(first, row["answer"]),
                          "second_right": is_correct(second, row["answer"])})
    return pairs


def labelled(pairs: list[dict], decisions: list[str | None]) -> dict[str, list[dict]]:
    """DPO rows per source: the judge's decided pairs (ai) and the checker's decidable ones (gold)."""
    def row(pair, first_wins: bool) -> dict:
        chosen, rejected = (pair["first"], pair["second"]) if first_wins else (pair["second"], pair["first"])
        return {"prompt": pair["prompt"], "chosen": chosen, "rejected": rejected}
    return {"ai": [row(p, d == "first") for p, d in zip(pairs, decisions, strict=True) if d is not None],
            "gold": [row(p, p["first_right"]) for p in pairs if p["first_right"] != p["second_right"]]}


def teach_policy(params: Params, tokenizer, out: Path) -> dict:
    """`distill`'s student fine-tuned on the task world's chats, saved to `out`: the policy of a real source's
    project, whose student never answers in the task world's form; its training stats."""
    cfg = params.rlaif.policy_sft
    seed_everything(params.seed)
    model = load_model(POLICY, cfg.precision, cfg.attn_implementation, training=True)
    train, val = (read_jsonl(PREPARED / f"world_sft_{split}.jsonl", "sft") for split in ("train", "val"))
    trainer = chat_trainer(params, cfg, "rlaif/policy", model, tokenizer, train, val, POLICY)
    card = run_card("rlaif/policy", params, cfg)
    stats = train_chats(trainer, card)
    save_model(trainer.model, tokenizer, out, card)
    return stats


def dpo(params: Params, source: str, seed: int, rows: list[dict], tokenizer, policy: Path):
    """The policy (the model in `policy`) after DPO on `rows`, and its training log."""
    cfg = params.rlaif
    run_params = params.model_copy(update={"seed": seed})
    seed_everything(seed)
    model = load_model(policy, cfg.precision, cfg.attn_implementation, training=True)
    reference = load_model(policy, cfg.precision, cfg.attn_implementation)
    checkpoints = checkpoint_dir(f"rlaif/{source}-{seed}", {"seed": seed, "tier": params.tier, "source": source,
                                                            "rlaif": cfg.model_dump()},
                                 [SFT, policy, PAIRS, PROMPTS])
    losses = {"sigmoid": 1.0} | ({"sft": cfg.sft_weight} if cfg.sft_weight else {})
    args = DPOConfig(**trainer_kwargs(run_params, cfg, checkpoints) | {"eval_strategy": "no"},
                     loss_type=list(losses), loss_weights=list(losses.values()), beta=cfg.beta,
                     max_length=cfg.max_length)
    trainer = DPOTrainer(model=model, ref_model=reference, args=args, processing_class=tokenizer,
                         train_dataset=Dataset.from_list(preference_chats(rows)))
    card = run_card("rlaif", run_params, cfg) | {"source": source}
    train_resumable(trainer, checkpoints, card)
    finish_checkpoints(checkpoints)
    return trainer.model.eval(), trainer.state.log_history, card


def held_out_em(model, tokenizer, params: Params) -> float:
    return exact_match(*held_out_answers(model, tokenizer, params, "world_sft_test"))["overall"]


def run(params: Params) -> dict:
    cfg = params.rlaif
    require(SFT, "config.json", "sft")
    require(POLICY, "config.json", "distill")
    tokenizer = load_tokenizer(SFT)

    metrics, runs = {}, []
    with atomic_path(OUT) as tmp:
        policy_path = POLICY
        if cfg.policy_sft.max_steps:
            policy_path = tmp / "policy"
            metrics["policy_sft"] = teach_policy(params, tokenizer, policy_path)
        policy = load_model(policy_path, params.evaluate.precision)
        baseline = held_out_em(policy, tokenizer, params)
        judge_model, metrics["judge"] = train_judge(params, tokenizer, tmp / "judge")
        val = read_jsonl(PREPARED / "world_preference_val.jsonl", "preference")
        # the judge on pairs like those it learned from: the file's held-out curated slips
        ev = params.evaluate
        decisions, _ = judge(judge_model, tokenizer, [(r["prompt"], r["chosen"], r["rejected"]) for r in val],
                             ev.max_new_tokens, ev.batch_size)
        metrics["judge"]["file_pairs_agreement"] = percent([d == "first" for d in decisions])
        metrics["seeds"] = []
        for seed in cfg.seeds:
            pairs = candidate_pairs(policy, tokenizer, params, seed)
            decisions, behaviour = judge(judge_model, tokenizer, [(p["prompt"], p["first"], p["second"])
                                                                  for p in pairs], ev.max_new_tokens, ev.batch_size)
            sources = labelled(pairs, decisions)
            if not all(sources.values()):
                raise DataError(f"rlaif: seed {seed}: of {len(pairs)} pairs of the policy's answers, the judge decided "
                                f"{len(sources['ai'])} and the checker {len(sources['gold'])}: nothing to train on "
                                f"(raise rlaif.prompts or rlaif.samples_per_prompt)")
            record = {"seed": seed, "candidate_pairs": len(pairs), "judge": behaviour | agreement(
                decisions, [p["first_right"] for p in pairs], [p["second_right"] for p in pairs]),
                "labelled": {s: len(rows) for s, rows in sources.items()},
                # how clean the AI labels are: the share of its chosen answers the checker calls right
                "ai_chosen_right": percent([p["first_right"] if d == "first" else p["second_right"]
                                            for p, d in zip(pairs, decisions, strict=True) if d is not None])}
            ems = [{"policy": "none", "exact_match": baseline}]
            for source, rows in sources.items():
                model, log, card = dpo(params, source, seed, rows, tokenizer, policy_path)
                if any("loss" in entry for entry in log):  # a run shorter than logging_steps logged no curve
                    save_curves(f"rlaif/{source}-{seed}", log)
                if seed == cfg.seeds[0]:
                    save_model(model, tokenizer, tmp / source, card)
                ems.append({"policy": source, "exact_match": held_out_em(model, tokenizer, params)})
            record["exact_match"] = {row["policy"]: row["exact_match"] for row in ems}
            metrics["seeds"].append(record)
            runs.append(ems)
            print(f"rlaif: seed {seed}: {record['candidate_pairs']} pairs, labelled {record['labelled']}; judge "
                  f"{record['judge']}; exact-match {record['exact_match']}")

    spread = over_seeds(runs, "policy", ("exact_match",))
    for row in spread:
        row["gain"] = round(row["exact_match"]["mean"] - baseline, 2)
    policy_model = OUT / "policy" if cfg.policy_sft.max_steps else POLICY
    metrics |= {"policy_model": str(policy_model), "judge_model": str(SFT), "rows": spread,
                "parameter_ratio": round(count_parameters(judge_model) / count_parameters(policy), 2)}
    return metrics


def table(metrics: dict) -> tuple[list[str], list[list]]:
    """metrics/rlaif.json as a table: per label source, held-out exact-match over seeds and its gain."""
    n = len(metrics["seeds"])
    names = {"none": "no DPO (the student)", "ai": "DPO, AI judge's labels", "gold": "DPO, checker's labels"}
    first = metrics["seeds"][0]["labelled"]
    return (["policy", "pairs (first seed)", f"EM % ({n} seeds)", "gain (points)"],
            [[names[r["policy"]], first.get(r["policy"], "–"),
              f"{r['exact_match']['mean']} ± {r['exact_match']['sd']}", r["gain"]] for r in metrics["rows"]])
