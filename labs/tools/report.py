"""report — one self-contained HTML page (and a Markdown summary) comparing everything the curriculum produced.

    just report            # -> report/index.html (charts embedded), report/summary.md, report/*.png

Read from `metrics/` and `plots/` only, so a teammate's `dvc pull` is enough to rebuild it. Numbers are
printed as the metrics files hold them (no re-rounding), so a value on the page can be found verbatim in
`metrics/`. A lab that has not run is listed as missing, not left out silently.
"""

from __future__ import annotations

import base64
import csv
import html
import importlib
import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402

from labs.core.evaluation import peft_comparison  # noqa: E402
from labs.core.run import atomic_path, read_metrics  # noqa: E402
from labs.registry import LABS  # noqa: E402  (curriculum order)
from labs.tools.results import markdown_table  # noqa: E402

METRICS, PLOTS, OUT = Path("metrics"), Path("plots"), Path("report")
FAMILIES = ["add", "sort", "reverse", "compare"]


def read_tsv(path: Path) -> tuple[list[float], list[float]]:
    with path.open() as f:
        rows = list(csv.reader(f, delimiter="\t"))[1:]
    return [float(r[0]) for r in rows], [float(r[1]) for r in rows]


def cell(value) -> str:
    return "–" if value is None else html.escape(str(value))


# ---- tables: (title, header, rows), rendered to both HTML and Markdown ----

def models_table(evaluate: dict) -> tuple[str, list[str], list[list]]:
    families = [f for f in FAMILIES if any(f in m["exact_match"] for m in evaluate["models"].values())]
    # curriculum order (the metrics file sorts its keys)
    order = sorted(evaluate["models"], key=lambda n: list(LABS).index(n) if n in LABS else len(LABS))
    anchor = "sft" if "sft" in order else order[0]  # win rates are against this model
    header = ["model", "parameters", "EM overall", *(f"EM {f}" for f in families), "answer perplexity",
              "corpus perplexity", "reward", f"win rate vs {anchor} %",
              f"LLM-judge win rate vs {anchor} %", "ROUGE-L", "BLEU", "chrF", "similarity",
              "refusal %", "over-refusal %", "jailbreak refusal %", "EOS rate"]
    rows = [[name, m["parameters"], m["exact_match"]["overall"], *(m["exact_match"].get(f) for f in families),
             m["answer_perplexity"], m["corpus_perplexity"], m.get("reward"), m.get("win_rate", {}).get(anchor),
             m.get("judge_win_rate", {}).get(anchor), m.get("rouge_l"), m.get("bleu"), m.get("chrf"),
             m.get("similarity"),
             *(m.get("safety", {}).get(key) for key in ("refusal", "over_refusal", "jailbreak_refusal")), m["eos_rate"]]
            for name in order for m in [evaluate["models"][name]]]
    return "Every model on the held-out tasks (`evaluate`)", header, rows


def compression_table(quantize: dict) -> tuple[str, list[str], list[list]]:
    header = ["format", "memory MB", "memory × fp32", "disk MB", "EM overall", "perplexity", "tokens/s batch 1"]
    rows = [[r["name"], r["memory_mb"], r["memory_ratio"], r["disk_mb"], r["exact_match"]["overall"], r["perplexity"],
             r["tokens_per_s"]["batch_1"]] for r in quantize["rows"]]
    return "Compression: memory, quality and speed (`quantize`)", header, rows


def peft_table(comparison: list[dict]) -> tuple[str, list[str], list[list]]:
    header = ["method", "trainable %", "adapter MB", "EM overall", "EM over seeds (mean ± sd, n)", "validation loss",
              "train time s"]

    def spread(seeds: dict | None) -> str:
        return f"{seeds['overall_mean']} ± {seeds['overall_sd']} ({len(seeds['seeds'])})" if seeds else ""

    rows = [[r["method"], r["trainable_pct"], r["adapter_mb"], r["exact_match"], spread(r.get("exact_match_seeds")),
             r["val_loss"], r["train_time_s"]] for r in comparison]
    return "Parameter-efficient fine-tuning (`peft_methods`)", header, rows


def serving_table(serve: dict) -> tuple[str, list[str], list[list]]:
    header = ["engine", "clients", "req/s", "tok/s", "× its sequential", "× fastest sequential", "p50 ms", "p99 ms",
              "TTFT p50 ms", "errors", "peak MB", "= generate %"]
    rows = [[row["engine"], lv["concurrency"], lv["requests_per_s"], lv["output_tokens_per_s"],
             lv["speedup_vs_sequential"], lv["speedup_vs_fastest_sequential"], lv["latency_ms_p50"],
             lv["latency_ms_p99"], lv["ttft_ms_p50"], lv["errors"], row["peak_rss_mb"],
             row["served_equals_generate_pct"]] for row in serve["engines"] for lv in row["levels"]]
    return "Serving engines under load (speedup over sequential generate)", header, rows


def lab_table(name: str, title: str, metrics: dict) -> tuple[str, list[str], list[list]]:
    """A lab's own table (its module's `table`), under `title`."""
    return title, *importlib.import_module(f"labs.{name}").table(metrics)


def html_table(title: str, header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<h2>{html.escape(title)}</h2>\n<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def markdown_section(title: str, header: list[str], rows: list[list]) -> str:
    cells = [["–" if v is None else str(v) for v in row] for row in rows]
    return "\n".join([f"### {title}", "", *markdown_table(header, cells)])


# ---- charts: each writes report/<name>.png and returns its path, or None when its inputs are missing ----

def curves_chart(out: Path, name: str, title: str, series: dict[str, Path], ylabel: str) -> Path | None:
    present = {label: path for label, path in series.items() if path.exists()}
    if not present:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, path in present.items():
        ax.plot(*read_tsv(path), label=label)
    ax.set(title=title, xlabel="step", ylabel=ylabel)
    ax.legend(fontsize=8)
    return save(fig, out / f"{name}.png")


def bar_chart(out: Path, name: str, title: str, labels: list[str], values: list[float], ylabel: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.bar(labels, values, color="#4c72b0")
    ax.set(title=title, ylabel=ylabel)
    ax.tick_params(axis="x", rotation=45, labelsize=8)
    return save(fig, out / f"{name}.png")


def barh_chart(out: Path, name: str, title: str, labels: list[str], values: list[float], xlabel: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 0.25 * len(labels) + 1.2))
    ax.barh(labels[::-1], values[::-1], color="#4c72b0")
    ax.set(title=title, xlabel=xlabel)
    ax.tick_params(axis="y", labelsize=8)
    return save(fig, out / f"{name}.png")


def scatter_chart(out: Path, name: str, title: str, points: dict[str, tuple[float, float]], xlabel: str,
                  ylabel: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, (x, y) in points.items():
        ax.scatter(x, y)
        ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return save(fig, out / f"{name}.png")


def save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})  # no version stamp: same inputs, same bytes
    plt.close(fig)
    return path


def charts(out: Path, metrics: dict) -> list[Path]:
    made = [
        curves_chart(out, "loss_curves", "Training loss", {
            "pretrain": PLOTS / "pretrain/metrics/train/loss.tsv", "sft": PLOTS / "sft/metrics/train/loss.tsv",
            "lora": PLOTS / "lora/metrics/train/loss.tsv", "qlora": PLOTS / "qlora/metrics/train/loss.tsv"}, "loss"),
        curves_chart(out, "reward_curves", "Reward during RL", {
            "ppo": PLOTS / "ppo/metrics/train/reward.tsv", "grpo": PLOTS / "grpo/metrics/train/reward.tsv"},
            "mean reward"),
        curves_chart(out, "kl_curves", "KL to the reference during RL", {
            "ppo": PLOTS / "ppo/metrics/train/kl.tsv", "grpo": PLOTS / "grpo/metrics/train/kl.tsv"}, "KL"),
    ]
    if evaluate := metrics.get("evaluate"):
        _, _, rows = models_table(evaluate)
        made.append(bar_chart(out, "exact_match", "Held-out exact-match per model", [r[0] for r in rows],
                              [r[2] for r in rows], "EM %"))
    if quantize := metrics.get("quantize"):
        made.append(barh_chart(out, "compression", "Compression: weight memory (label: exact-match)",
                               [f"{r['name']} (EM {r['exact_match']['overall']})" for r in quantize["rows"]],
                               [r["memory_mb"] for r in quantize["rows"]], "memory MB"))
    if metrics.get("peft_methods"):
        shares = {r["method"]: (r["trainable_pct"], r["exact_match"]) for r in peft_comparison(METRICS)}
        made.append(scatter_chart(out, "peft", "PEFT: trainable share against exact-match", shares,
                                  "trainable parameters %", "EM %"))
    if metrics.get("decode"):
        made.append(scatter_chart(out, "decoding", "Decoding: diversity against exact-match",
                                  {s["name"]: (s["answer_diversity"], s["exact_match"]["overall"])
                                   for s in metrics["decode"]["strategies"]}, "answer diversity %", "EM %"))
    if objectives := metrics.get("objectives"):
        fig, ax = plt.subplots(figsize=(6, 3.6))
        shares = [str(share) for share in objectives["label_shares"]]
        for name, accuracy in objectives["accuracy"].items():
            ax.errorbar([100 * float(share) for share in shares], [accuracy[share]["mean"] for share in shares],
                        yerr=[accuracy[share]["sd"] for share in shares], marker="o", capsize=3, label=name,
                        linestyle="--" if name.startswith("scratch") else "-")
        ax.set(title="Pretraining objectives: probe accuracy by labels used", xlabel="labels used %",
               ylabel="accuracy %", xscale="log")
        ax.legend(fontsize=7)
        made.append(save(fig, out / "objectives.png"))
    if multiobjective := metrics.get("multiobjective"):
        points = {row["model"]: (row["over_refusal"], row["refusal"]) for row in multiobjective["rows"]}
        made.append(scatter_chart(out, "multiobjective", "Helpful vs harmless: one policy per weight w", points,
                                  "over-refusal of benign requests %", "refusal of harmful requests %"))
    if cpt := metrics.get("cpt"):
        points = {r["model"]: (r["domain_perplexity"], r["corpus_perplexity"]) for r in cpt["variants"]}
        made.append(scatter_chart(out, "cpt", "Continued pretraining: adaptation against forgetting", points,
                                  "new-domain perplexity", "main-world perplexity"))
    if curriculum := metrics.get("curriculum"):
        made.append(curves_chart(out, "curriculum", "Curriculum: held-out exact-match during training", {
            row["ordering"]: PLOTS / f"curriculum/{row['ordering']}/metrics/exact_match.tsv"
            for row in curriculum["orderings"]}, "EM %"))
    if serve := metrics.get("serve"):
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for row in serve["engines"]:
            ax.plot([lv["concurrency"] for lv in row["levels"]], [lv["output_tokens_per_s"] for lv in row["levels"]],
                    marker="o", label=row["engine"])
        ax.axhline(serve["fastest_sequential_tokens_per_s"], color="grey", linestyle="--",
                   label="sequential generate (fastest)")
        ax.set(title="Serving: output tokens/s by concurrent clients", xlabel="concurrent clients", ylabel="tokens/s",
               xscale="log")
        ax.legend(fontsize=7)
        made.append(save(fig, out / "serving.png"))
    return [p for p in made if p is not None]


def revision() -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"



# the labs with a table of their own in their module: the training-dynamics labs, then the alignment labs
LAB_TABLES = {"objectives": "Pretraining objectives at one token budget, one probe (`objectives`)",
            "embeddings": "Contrastive embeddings: retrieval recall and MRR (`embeddings`)",
            "cpt": "Continued pretraining on a new domain, with replay (`cpt`)",
            "sft_variants": "SFT variants: templates and KL to the base (`sft_variants`)",
            "cot": "Chain-of-thought supervision (`cot`)",
            "curriculum": "Curriculum: the order of the training rows (`curriculum`)",
            "mixing": "Task mixing against specialists (`mixing`)",
            "continual": "Continual learning: forgetting, replay, adapters (`continual`)",
            "rag": "Retrieval-augmented answers: closed book, top-k, gold (`rag`)",
            "multiobjective": "Helpfulness against harmlessness: one DPO policy per weight (`multiobjective`)",
            "rlaif": "AI feedback: DPO on a judge's labels against the checker's (`rlaif`)",
            "selfinstruct": "Self-instruct: rounds of the model's own tasks, filtered two ways (`selfinstruct`)",
            "constitution": "Constitutional AI: critiques, rewrites, SL-CAI and RL-CAI (`constitution`)"}

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f0f0f0}td:first-child{text-align:left}.charts{display:flex;flex-wrap:wrap;gap:12px}
.charts img{width:580px;border:1px solid #ddd}"""


def build() -> dict:
    labs = [name for name in LABS if name not in ("data", "prepare", "tokenizer")]  # the ones with results
    metrics = {name: m for name in labs if (m := read_metrics(name, METRICS)) is not None}
    missing = [name for name in labs if name not in metrics]
    tables = []
    if "evaluate" in metrics:
        tables.append(models_table(metrics["evaluate"]))
    if "quantize" in metrics:
        tables.append(compression_table(metrics["quantize"]))
    if "peft_methods" in metrics:
        tables.append(peft_table(peft_comparison(METRICS)))
    if "serve" in metrics and "engines" in metrics["serve"]:
        tables.append(serving_table(metrics["serve"]))
    for name, title in LAB_TABLES.items():
        if name in metrics:
            tables.append(lab_table(name, title, metrics[name]))
    if not tables:
        raise SystemExit("error: metrics/: no evaluate, quantize or peft_methods metrics yet (run `just repro`)")

    with atomic_path(OUT) as tmp:
        tmp.mkdir()
        pngs = charts(tmp, metrics)
        images = "".join(f'<img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
                         for p in pngs)
        note = f"Generated by <code>just report</code> from <code>metrics/</code> and <code>plots/</code> at git " \
               f"revision {html.escape(revision())}."
        if missing:
            note += f" Not run yet: {html.escape(', '.join(missing))}."
        page = (f"<!doctype html><html><head><meta charset='utf-8'><title>LLM Lab report</title>"
                f"<style>{STYLE}</style></head><body><h1>LLM Lab report</h1><p>{note}</p>"
                f"<div class='charts'>{images}</div>" + "".join(html_table(*t) for t in tables) + "</body></html>\n")
        (tmp / "index.html").write_text(page)
        summary = "\n\n".join(markdown_section(*t) for t in tables)
        (tmp / "summary.md").write_text(summary + "\n")
    print(f"report: {OUT / 'index.html'} ({len(pngs)} charts, {len(tables)} tables); missing: {missing or 'none'}")
    return {"charts": [p.name for p in pngs], "tables": [t[0] for t in tables], "missing": missing}


if __name__ == "__main__":
    build()
