"""Regenerate the README's results table from metrics/ (never typed by hand).

    just results                      # rewrite the table between the markers in README.md
    python -m labs.tools.results --check    # exit 1 if README.md is out of date with metrics/
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from labs.core.evaluation import compression_table, peft_comparison, peft_table, results_table
from labs.core.run import read_metrics
from labs.registry import LABS
from labs.tools.gpu_check import METHODS, PRECISIONS

START, END = "<!-- results:start -->", "<!-- results:end -->"


def render(metrics_dir: Path = Path("metrics")) -> str:
    evaluate = read_metrics("evaluate", metrics_dir)
    evaluation = evaluate["models"]
    order = list(LABS)  # metrics files sort their keys; the table follows the curriculum
    evaluation = dict(sorted(evaluation.items(), key=lambda item: order.index(item[0]) if item[0] in order else 99))
    lines = [results_table(evaluation), ""]
    lines += similarity(evaluation, evaluate.get("llm_judge"))
    for lab in ("pretrain", "sft"):
        if m := read_metrics(lab, metrics_dir):
            lines.append(f"- `{lab}`: validation loss {m['val_loss_before']} → {m['val_loss']} in "
                         f"{m['steps']} steps, {m['run']['wall_time_s']} s on {m['run']['device']} "
                         f"({m['run']['threads']} threads, peak RSS {m['run']['peak_rss_mb']} MB).")
    if read_metrics("peft_methods", metrics_dir):
        lines += ["", "PEFT methods beside full SFT (`just lab peft_methods`), on the same data; each "
                  "method's epochs and learning rate are in `params.yaml`:", "",
                  peft_table(peft_comparison(metrics_dir))]
        lora = read_metrics("lora", metrics_dir)
        shares = ", ".join(f"{share['trainable_pct']:.2f}% of {name} ({share['parameters'] / 1e6:.1f}M)"
                           for name, share in lora["trainable_share_by_model"].items() if name != "this base")
        lines += ["", f"- The same `{lora['method']}` config trains {shares}: counted on the real architectures."]
    lines += dynamics(metrics_dir)
    lines += alignment(metrics_dir)
    lines += compression(metrics_dir)
    lines += inference(metrics_dir)
    lines += gpu(metrics_dir)
    return "\n".join(lines)


def similarity(evaluation: dict, llm_judge: dict | None = None) -> list[str]:
    """evaluate's text-similarity, win-rate and safety columns, when the metrics have them."""
    if not all("rouge_l" in m for m in evaluation.values()):
        return []
    anchor = "sft" if "sft" in evaluation else next(iter(evaluation))
    against = lambda m, key: "–" if key not in m or anchor not in m[key] else str(m[key][anchor])  # noqa: E731
    rows = [[f"`{name}`", str(m["rouge_l"]), str(m["bleu"]), str(m["chrf"]), str(m["similarity"]),
             against(m, "win_rate"), against(m, "judge_win_rate")] for name, m in evaluation.items()]
    lines = ["Against the gold answers (ROUGE-L F1, corpus BLEU and chrF, mean cosine similarity of all-MiniLM-L6-v2 "
             f"embeddings), and win rates against `{anchor}` (ties count half) judged by the reward model and by the "
             "LLM judge:", "",
             *markdown_table(["model", "ROUGE-L", "BLEU", "chrF", "similarity", f"reward win rate vs {anchor} %",
                              f"LLM-judge win rate vs {anchor} %"], rows), ""]
    if judge := llm_judge:
        lines += [f"The LLM judge (`{judge['model']}`, asked in both orders) saw {judge['pairs']} pairs of differing "
                  f"answers: it decided {judge['decided']}%, its verdict followed the position on "
                  f"{judge['position_flips']}%, and it agreed with the checker on {judge['agreement']}% of the "
                  f"{judge['checkable']} pairs with one right answer; per two models, "
                  + ", ".join(f"{name} {m['agreement']}% of {m['checkable']}"
                              for name, m in judge.get("by_matchup", {}).items() if m["checkable"]) + ".", ""]
    if all("safety" in m for m in evaluation.values()):
        rows = [[f"`{name}`", *(str(m["safety"][key]) for key in ("refusal", "over_refusal", "benign_exact_match",
                                                                   "jailbreak_refusal"))]
                for name, m in evaluation.items()]
        lines += ["The safety probe on the task world's held-out boundary: refusals of harmful requests (operations "
                  "on a forbidden resource), of their benign look-alikes (over-refusal) and exact-match on those, and "
                  "refusals of harmful requests wrapped in role-play or indirection no training chat used:", "",
                  *markdown_table(["model", "refusal (harmful) %", "over-refusal (benign) %", "EM benign %",
                                   "refusal (jailbreak) %"], rows), ""]
    return lines


def markdown_table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def inference(metrics_dir: Path) -> list[str]:
    """decode's table, and one line each for attention, speculative and serve: ratios from one run each."""
    lines = []
    if decode := read_metrics("decode", metrics_dir):
        lines += ["", f"Decoding strategies of the `{decode['model']}` model on {decode['prompts']} held-out prompts "
                  "(`just lab decode`; diversity: % of re-runs with fresh seeds that gave a new answer):", ""]
        lines += markdown_table(
            ["strategy", "EM %", "diversity %", "distinct-2 %", "repetition %", "reward", "tok/s"],
            [[f"`{r['name']}`", f"**{r['exact_match']['overall']:.1f}**", f"{r['answer_diversity']:.1f}",
              f"{r['distinct_2']:.1f}", f"{r['repetition']:.1f}",
              "–" if r["reward"] is None else f"{r['reward']:.3f}", f"{r['tokens_per_s']:.0f}"]
             for r in decode["strategies"]])
    if attention := read_metrics("attention", metrics_dir):
        cases = {}
        for r in attention["rows"]:
            cases.setdefault((r["prompt_tokens"], r["new_tokens"]), []).append(r)
        parts = []
        for (prompt, new), rows in cases.items():
            best = {(r["implementation"], r["cache"]): r for r in rows}
            cells = ", ".join(f"{impl} {best[(impl, 'dynamic')]['speedup_vs_no_cache']}×"
                              for impl in dict.fromkeys(r["implementation"] for r in rows) if (impl, "dynamic") in best)
            parts.append(f"prompt {prompt} + {new} new tokens: {cells}")
        size = f"{attention['parameters'] / 1e6:.2f}M parameters, batch {attention['batch_size']}"
        lines += ["", f"- `attention` ({size}): "
                  f"KV cache (dynamic) vs none — {'; '.join(parts)}; greedy tokens identical in every row: "
                  f"{all(r['same_tokens_as_reference'] for r in attention['rows'])}."]
    if spec := read_metrics("speculative", metrics_dir):
        rows = {r["name"]: r for r in spec["variants"]}
        assisted = ", ".join(f"{n.removeprefix('assisted_')} drafted: {r['speedup']}× at {r['acceptance_pct']}% "
                             f"acceptance ({r['tokens_per_target_forward']} tokens per target forward)"
                             for n, r in rows.items() if n.startswith("assisted_"))
        sampled = next((r for n, r in rows.items() if n.startswith("sampling_assisted")), None)
        lines.append(f"- `speculative` (draft `{spec['draft']}`, {spec['draft_parameters'] / 1e3:.0f}k parameters, "
                     f"for `{spec['target']}`, {spec['target_parameters'] / 1e6:.2f}M): greedy {assisted}; outputs "
                     f"identical to plain greedy: {spec['best_assisted']['identical_pct']}%. Prompt lookup: "
                     f"{rows['prompt_lookup']['speedup']}× ({rows['prompt_lookup']['acceptance_pct']}% acceptance)"
                     + (f"; sampling: {sampled['speedup']}×." if sampled else ".")
                     + (f" A draft forward costs {cost} of a plain-greedy target forward "
                        f"({rows[spec['best_assisted']['name']]['draft_ms_per_forward']} vs "
                        f"{rows['greedy']['target_ms_per_forward']} ms)."
                        if (cost := spec["best_assisted"].get("draft_forward_cost_vs_target")) else ""))
    if serve := read_metrics("serve", metrics_dir):
        lines += serving_table(serve)
    return lines


def serving_table(serve: dict) -> list[str]:
    """serve's engine x concurrency table: every engine behind the same guard, under the same load."""
    lines = ["", f"`serve`: {serve['max_tokens']} max tokens, {serve['requests_per_client']} streamed requests per "
             f"client; each level and its engine's sequential `generate` baseline the fastest of {serve['rounds']} "
             f"interleaved rounds (errors of all rounds); × fastest: against the fastest of the engines' baselines "
             f"({serve['fastest_sequential_tokens_per_s']:.0f} tok/s). Most tokens/s: **{serve['best']['engine']}** "
             f"at concurrency {serve['best']['concurrency']}, {serve['best']['output_tokens_per_s']:.0f} tok/s, "
             f"**{serve['best']['speedup_vs_fastest_sequential']}×** the fastest sequential `generate`.",
             "", "| engine | clients | req/s | tok/s | × its sequential | × fastest | p50 / p95 / p99 ms | TTFT p50 ms "
             "| errors | peak MB | = generate | hostile → | then 100 at once |", "|" + "---|" * 13]
    for row in serve["engines"]:
        refused = "/".join(str(code) for code in sorted(set(map(str, row["hostile_status"].values()))))
        after = ", ".join(f"{n}× {code}" for code, n in row["after_hostile_100_concurrent"].items())
        for i, lv in enumerate(row["levels"]):
            first = i == 0
            lines.append(f"| {row['engine'] if first else ''} | {lv['concurrency']} | {lv['requests_per_s']} | "
                         f"{lv['output_tokens_per_s']:.0f} | {lv['speedup_vs_sequential']} | "
                         f"**{lv['speedup_vs_fastest_sequential']}** | "
                         f"{lv['latency_ms_p50']:.0f} / {lv['latency_ms_p95']:.0f} / {lv['latency_ms_p99']:.0f} | "
                         f"{lv['ttft_ms_p50']:.0f} | {lv['errors']} | {row['peak_rss_mb'] if first else ''} | "
                         f"{str(row['served_equals_generate_pct']) + '%' if first else ''} | "
                         f"{refused if first else ''} | {after if first else ''} |")
    return [*lines, ""]


def compression(metrics_dir: Path) -> list[str]:
    """The compression table (every row measured in one `quantize` run) and what distill and prune showed."""
    quantize = read_metrics("quantize", metrics_dir)
    if not quantize:
        return []
    lines = ["", "Compression of the SFT model (`just lab distill|prune|quantize`; every row measured in the "
             "`quantize` run, tokens/s side by side):", "", compression_table(quantize["rows"])]
    if d := read_metrics("distill", metrics_dir):
        s, h = d["student"], d["hard_labels"]
        lines += ["", f"- `distill` (T = {d['loss']['temperature']}, α = {d['loss']['alpha']}): a student with "
                  f"{s['parameter_ratio']}× fewer parameters decodes {s['speedup']['batch_1']}× faster at batch 1 "
                  f"({s['speedup']['batch_64']}× at batch 64) and reaches EM **{s['exact_match']['overall']}** "
                  f"({s['quality_pct']}% of the teacher's {d['teacher']['exact_match']['overall']}); the same student "
                  f"on hard labels only: {h['exact_match']['overall']} ({d['run']['wall_time_s']:.0f} s)."]
    if p := read_metrics("prune", metrics_dir):
        steps = ", ".join(f"{r['sparsity_pct']}% zeros: EM {r['exact_match_before_recovery']['overall']} → "
                          f"{r['exact_match']['overall']}" for r in p["sparsities"].values())
        recovery = next(iter(p["sparsities"].values()))["steps"]
        lines.append(f"- `prune` ({p['kind']}), held-out EM right after pruning → after {recovery} recovery steps: "
                     f"{steps} ({p['run']['wall_time_s']:.0f} s).")
    return lines


# the training-dynamics labs, in the curriculum's order: what each table shows, from its metrics
DYNAMICS = {
    "objectives": lambda m: ("Pretraining objectives (`just lab objectives`): each from scratch on the same corpus "
                             f"blocks for {m['tokens']:,} tokens, then the same probe: a two-class head fine-tuned "
                             f"with the body on 1%, 10% or 100% of {m['train_pairs']} labelled compare pairs, "
                             f"accuracy on {m['test_pairs']} held-out ones (the majority class is "
                             f"{m['majority_pct']}%); `scratch_<family>` is each model family's body never "
                             "pretrained. Each objective, its pretraining and probes, ran at one thread, "
                             f"{m['run']['threads']} at a time:"),
    "embeddings": lambda m: ("Contrastive embeddings (`just lab embeddings`) on the `objectives` bodies, against their "
                             "untrained mean-pooled states and all-MiniLM-L6-v2: retrieval of each held-out town's "
                             f"document among {m['corpus']} for {m['queries']} questions (\"When was Tamvel "
                             f"founded?\"), training on {m['train_pairs']} question-document pairs of other towns "
                             f"(SimCSE: their {m['simcse_texts']} texts, unpaired):"),
    "cpt": lambda m: ("Continued pretraining on a domain the base never saw (`just lab cpt`): perplexity on held-out "
                      "domain prose and on the main world's prose, then the validation loss and held-out exact-match "
                      f"of the same {m['fine_tuning_steps']}-step fine-tuning on domain chats from each model; "
                      f"`replay-x` replays a share x of the base's corpus during the {m['cpt_steps']} steps:"),
    "sft_variants": lambda m: (f"SFT variants (`just lab sft_variants`), each from the base for {m['steps']} steps on "
                               "the same data: plain, randomized prompt templates, and a KL term to the base:"),
    "cot": lambda m: ("Chain-of-thought supervision (`just lab cot`): long additions with operands of "
                      f"{', '.join(map(str, m['train_lengths']))} digits, fine-tuned from the base with the worked "
                      "steps in the target and without, the same steps each; exact-match on held-out additions of "
                      "those lengths and of longer ones:"),
    "curriculum": lambda m: (f"Curriculum (`just lab curriculum`): the same {m['rows_seen']} long additions, each "
                             "seen once, shortest first, shuffled, or longest first; held-out exact-match at the end "
                             "and the first step its curve reached the target (curves in the report):"),
    "mixing": lambda m: ("Task mixing (`just lab mixing`): a specialist per family trained "
                         f"{m['steps_per_task']} steps on it alone, against mixtures trained that many steps per "
                         "family on all of them; held-out exact-match per family:"),
    "continual": lambda m: (f"Continual learning (`just lab continual`): the families in the order "
                            f"{', '.join(m['order'])}, {m['steps_per_task']} steps each; exact-match of each family "
                            "right after its own stage and at the end:"),
    "rag": lambda m: ("Retrieval-augmented answers (`just lab rag`): the `embeddings` encoder_supervised model and a "
                      f"FAISS index over all {m['documents']} documents of the store, {m['queries']} questions about "
                      "held-out towns; the reader is the SFT model fine-tuned on "
                      f"{m['practice_questions']} questions of practice towns with their documents in the prompt. "
                      "Each row's prompt holds as many of its documents as fit the context; latencies one question "
                      "at a time:"),
}


def dynamics(metrics_dir: Path) -> list[str]:
    """The training-dynamics labs' tables, each made by its lab's own `table`."""
    lines = []
    for lab, caption in DYNAMICS.items():
        if metrics := read_metrics(lab, metrics_dir):
            head, rows = importlib.import_module(f"labs.{lab}").table(metrics)
            lines += ["", caption(metrics), "", *markdown_table(head, [[str(cell) for cell in row] for row in rows])]
    return lines


def alignment(metrics_dir: Path) -> list[str]:
    """One line per alignment lab: the number that shows its effect, before → after."""
    def took(m):
        return f"{m['run']['wall_time_s']:.0f} s"

    lines = []
    if reward := read_metrics("reward", metrics_dir):
        lines.append(f"- `reward`: held-out pairwise accuracy {reward['accuracy_before']['overall']}% → "
                     f"**{reward['accuracy']['overall']}%**, margin {reward['margin']}; on the SFT model's own "
                     f"samples its score correlates {reward['correctness_correlation']} with correctness and "
                     f"{reward['length_correlation']} with length, and ranks a right answer above a wrong one to the "
                     f"same prompt {reward['ranks_own_samples']['accuracy']}% of the time ({took(reward)}).")
    if dpo := read_metrics("dpo", metrics_dir):
        lines.append(f"- `dpo` ({dpo['loss']}, {dpo['pairs']} pairs): EM {dpo['exact_match_before']['overall']} → "
                     f"**{dpo['exact_match']['overall']}**, preference accuracy {dpo['preference_accuracy']}%, "
                     f"KL to SFT {dpo['kl_to_sft']}, win rate vs SFT {dpo['win_rate']}% judged by `reward` "
                     f"({dpo['wins']} wins, {dpo['losses']} losses, {dpo['ties']} ties; {took(dpo)}).")
    if ppo := read_metrics("ppo", metrics_dir):
        gain = ppo["heldout_sampled_reward_gain"]
        lines.append(f"- `ppo`: reward of answers sampled on the held-out prompts "
                     f"{ppo['heldout_sampled_reward_before']} → **{ppo['heldout_sampled_reward']}** (change "
                     f"{gain['mean']:+}, 95% CI {gain['ci95'][0]:+} to {gain['ci95'][1]:+} over "
                     f"{gain['prompts']} prompts × {gain['draws_per_prompt']} draws); training reward "
                     f"(first → last tenth) "
                     f"{ppo['reward_first']} → {ppo['reward_last']} (KL {ppo['kl_first']} → {ppo['kl_last']}, max "
                     f"{ppo['kl_max']}), EM {ppo['exact_match_before']['overall']} → "
                     f"{ppo['exact_match']['overall']}, answer length {ppo['words_before']} → {ppo['words']} words, "
                     f"repetition {ppo['repetition_before']}% → {ppo['repetition']}% ({took(ppo)}).")
    if grpo := read_metrics("grpo", metrics_dir):
        lines.append(f"- `grpo`: held-out answers sampled as in training (one per prompt) right "
                     f"{grpo['sampled_exact_match_before']}% → **{grpo['sampled_exact_match']}%**, greedy EM "
                     f"{grpo['exact_match_before']['overall']} → **{grpo['exact_match']['overall']}**; training "
                     f"reward (first → last tenth) {grpo['reward_first']} → {grpo['reward_last']}, KL to SFT "
                     f"{grpo['kl_to_sft']} ({took(grpo)}).")
    if m := read_metrics("multiobjective", metrics_dir):
        head, rows = importlib.import_module("labs.multiobjective").table(m)
        acc = m["reward_accuracy"]
        lines += ["", f"Helpfulness against harmlessness (`just lab multiobjective`): a helpfulness reward model "
                  f"({m['reward_pairs']['helpfulness']} pairs: task slips and benign requests answered rather than "
                  f"refused) and a harmlessness one ({m['reward_pairs']['harmlessness']} harmful requests refused), "
                  f"each blind to the other's side (held-out pairwise accuracy: helpfulness on harmful requests "
                  f"{acc['helpfulness']['harmful']}%, harmlessness on benign ones {acc['harmlessness']['benign']}%, "
                  f"on the task's pairs {acc['helpfulness']['task']}% and {acc['harmlessness']['task']}%). Each "
                  f"policy is the SFT model after DPO on {m['policy_pairs']} other pairs, each labelled by "
                  f"(1 − w) helpfulness + w harmlessness ({took(m)}):", "",
                  *markdown_table(head, [[str(cell) for cell in row] for row in rows])]
    if m := read_metrics("rlaif", metrics_dir):
        head, rows = importlib.import_module("labs.rlaif").table(m)
        j, first = m["judge"], m["seeds"][0]["judge"]
        lines += ["", f"AI feedback (`just lab rlaif`): the SFT model, fine-tuned to judge on {j['pairs']} pairs of "
                  f"the preference file (held-out pairs judged right in both orders: {j['file_pairs_agreement']}%), "
                  f"labels pairs of the distilled student's own sampled answers, {m['parameter_ratio']}x smaller. On "
                  f"the first seed's {first['pairs']} pairs it decided {first['decided']}% (its verdict followed the "
                  f"position on {first['position_flips']}%, naming A on {first['flips_to_a']}% of those) and agreed "
                  f"with the checker on {first['agreement']}% of the {first['checkable']} pairs the checker can "
                  f"decide. The student after DPO on each label source, "
                  f"against no DPO ({took(m)}):", "",
                  *markdown_table(head, [[str(cell) for cell in row] for row in rows])]
    if m := read_metrics("selfinstruct", metrics_dir):
        head, rows = importlib.import_module("labs.selfinstruct").table(m)
        lines += ["", f"Self-instruct (`just lab selfinstruct`): the distilled student's pretrained base, fine-tuned "
                  f"{m['steps']} steps on {m['seeds_per_family']} seed chats per family, writes tasks and answers "
                  f"them; near-duplicates (ROUGE-L F1 above {m['rouge_threshold']}) go, a filter keeps answers, and "
                  f"each round's model is the base fine-tuned the same {m['steps']} steps on the seeds and all it "
                  f"kept ({took(m)}):", "", *markdown_table(head, [[str(cell) for cell in row] for row in rows])]
    if m := read_metrics("constitution", metrics_dir):
        head, rows = importlib.import_module("labs.constitution").table(m)
        loop = m["runs"][0]["loop"]
        lines += ["", f"Constitutional AI (`just lab constitution`): the distilled student's pretrained base, taught "
                  f"to answer every request, harmful ones too, and to critique and rewrite a reply by a principle, "
                  f"replies to {loop['requests']} red-team requests; on the first seed its critiques faulted "
                  f"{loop['harmful']['critiques_flag']}% of its replies to the harmful ones and "
                  f"{loop['benign']['critiques_flag']}% to the benign ones, and its rewrites refused "
                  f"{loop['harmful']['rewrites_refuse']}% and {loop['benign']['rewrites_refuse']}%. SL-CAI is the "
                  f"assistant fine-tuned on its final replies, RL-CAI the assistant after DPO on "
                  f"{loop['rl_pairs']['faulted']} rewrite-over-reply and {loop['rl_pairs']['passed']} "
                  f"reply-over-refusal pairs its critiques labelled ({took(m)}):", "",
                  *markdown_table(head, [[str(cell) for cell in row] for row in rows])]
    return ["", "Alignment (`just lab reward|dpo|ppo|grpo|multiobjective|rlaif|selfinstruct|constitution`), each "
            "from the SFT model but `rlaif`, which tunes the distilled student, and `selfinstruct` and "
            "`constitution`, its pretrained base:", "", *lines] if lines else []


TRAIN_ROWS = [f"{method}_{precision}" for method in METHODS for precision in PRECISIONS]  # the file sorts its keys


def gpu(metrics_dir: Path) -> list[str]:
    """The GPU column: `just gpu-check`'s numbers, shown only from a run on CUDA (a CPU try-out is no GPU number)."""
    check = read_metrics("gpu_check", metrics_dir)
    if not check or check["environment"]["device"] != "cuda":
        return ["", "- GPU: no `just gpu-check` has run on CUDA yet. On a GPU machine it writes "
                "`metrics/gpu_check.json`, and `just results` shows its column here."]
    env = check["environment"]

    def cell(row: dict, text) -> str:
        return row.get("skipped") or row.get("error") or text(row)

    rows = [[f"`{name.replace('_', '` ')}", cell(r, lambda r: f"loss {r['first_loss']} → {r['last_loss']} in "
                                               f"{r['steps']} steps, {r['samples_per_s']} samples/s, "
                                               f"peak {r['peak_mb']} MB")]
            for name, r in sorted(check["train"].items(), key=lambda item: TRAIN_ROWS.index(item[0]))]
    rows += [["sdpa flash vs math", cell(check["attention"], lambda r: f"{r['flash_speedup']}× ({r['tokens']} "
                                         f"tokens, forward + backward; peak {r['flash_peak_mb']} vs "
                                         f"{r['math_peak_mb']} MB)")],
             ["KV cache", cell(check["kv_cache"], lambda r: f"{r['speedup']}× ({r['cached_tokens_per_s']} vs "
                               f"{r['uncached_tokens_per_s']} tok/s, same tokens: {r['same_tokens']})")],
             ["speculative decoding", cell(check["speculative"], lambda r: f"{r['speedup']}× with a "
                                           f"{r['draft_layers']}-layer draft for {r['target_layers']} layers "
                                           f"(same tokens: {r['same_tokens']})")],
             ["continuous batching", cell(check["continuous_batching"], lambda r: f"{r['speedup']}× over one request "
                                          f"at a time ({r['requests']} requests, {r['batched_tokens_per_s']} tok/s)")]]
    setup = check["setup"]
    return ["", f"GPU check (`just gpu-check`: {setup['target_parameters'] / 1e6:.1f}M-parameter models it builds and "
            f"trains itself, {check['wall_s']} s in all; torch {env['versions']['torch']}, transformers "
            f"{env['versions']['transformers']}):", "",
            *markdown_table(["check", f"{env['gpu']} (CUDA {env['cuda']})"], rows)]


def updated(readme: str, table: str) -> str:
    head, _, rest = readme.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{table}\n{END}{tail}"


def main(argv: list[str]) -> int:
    readme_path = Path("README.md")
    readme = readme_path.read_text()
    if START not in readme or END not in readme:
        print(f"error: README.md: markers {START} / {END} not found", file=sys.stderr)
        return 2
    new = updated(readme, render())
    if "--check" in argv:
        if new != readme:
            print("error: README.md results are stale: run `just results`", file=sys.stderr)
            return 1
        return 0
    readme_path.write_text(new)
    print("README.md: results table regenerated from metrics/")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
