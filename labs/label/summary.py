"""What a labelling round says so far: the summary page's numbers (/summary, /api/summary).

  * per model, its win rate over decisive judgements with a 95% Wilson interval (scipy), when the two answers
    come from different models (two samples of one model have no winner to name),
  * position bias: how often the answer shown on the left was chosen (50% when sides do not matter),
  * agreement between labellers on the pairs several judged: the share of labeller pairs that gave the same
    verdict, and Cohen's kappa (scikit-learn) for each two labellers, which discounts agreement by chance,
  * agreement with the task world's checker (it knows the right answer): overall, and on the pairs where one
    answer is right and the other wrong.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import combinations

from scipy.stats import binomtest
from sklearn.metrics import cohen_kappa_score

from labs.core.judgements import DECISIVE, VERDICTS, standing


def pct(part: int, whole: int) -> float | None:
    return round(100 * part / whole, 2) if whole else None


def win_rates(pairs: dict, current: list[dict]) -> list[dict]:
    wins, decisive, ties = Counter(), Counter(), Counter()
    for row in current:
        models = pairs[row["pair"]]["models"]
        if models[0] == models[1]:
            continue
        for model in models:
            if row["verdict"] in DECISIVE:
                decisive[model] += 1
                wins[model] += row["chosen_model"] == model
            else:
                ties[model] += 1
    table = []
    for model in sorted(decisive.keys() | ties.keys()):
        n, k = decisive[model], wins[model]
        low, high = binomtest(k, n).proportion_ci(0.95, method="wilson") if n else (None, None)
        table.append({"model": model, "wins": k, "decisive": n, "ties_or_both_bad": ties[model],
                      "win_rate": pct(k, n), "ci95": [round(100 * low, 2), round(100 * high, 2)] if n else None})
    return table


def agreement(current: list[dict]) -> dict:
    by_pair = defaultdict(dict)
    for row in current:
        by_pair[row["pair"]][row["labeller"]] = row["verdict"]
    same = [a == b for verdicts in by_pair.values() for a, b in combinations(verdicts.values(), 2)]
    kappas = []
    for first, second in combinations(sorted({r["labeller"] for r in current}), 2):
        common = [v for v in by_pair.values() if first in v and second in v]
        if len(common) >= 2:
            x, y = [v[first] for v in common], [v[second] for v in common]
            kappa = cohen_kappa_score(x, y, labels=list(VERDICTS)) if len(set(x + y)) > 1 else 1.0
            kappas.append({"labellers": [first, second], "pairs": len(common), "kappa": round(float(kappa), 3)})
    return {"pairs_judged_by_several": sum(len(v) > 1 for v in by_pair.values()), "labeller_pairs": len(same),
            "agreement_pct": pct(sum(same), len(same)), "kappa": kappas}


def summary(pairs: list[dict], rows: list[dict]) -> dict:
    """The round's numbers from the pair file and every line of the judgements file."""
    by_id = {p["pair"]: p for p in pairs}
    current = [row for row in standing(rows).values() if row["pair"] in by_id]
    decisive = [row for row in current if row["verdict"] in DECISIVE]
    checked = [row for row in current if by_id[row["pair"]].get("checker")]
    checker_decisive = [row for row in checked if by_id[row["pair"]]["checker"] in DECISIVE]
    matches = lambda rows: sum(row["verdict"] == by_id[row["pair"]]["checker"] for row in rows)  # noqa: E731
    return {
        "pairs": len(pairs),
        "judgements": len(current),
        "undone": sum(row["verdict"] == "undo" for row in rows),
        "labellers": dict(sorted(Counter(row["labeller"] for row in current).items())),
        "verdicts": {v: sum(row["verdict"] == v for row in current) for v in VERDICTS},
        "left_chosen_pct": pct(sum(row["verdict"] == row["left"] for row in decisive), len(decisive)),
        "win_rates": win_rates(by_id, current),
        "agreement": agreement(current),
        "checker": {"judgements": len(checked), "agreement_pct": pct(matches(checked), len(checked)),
                    "one_right_judgements": len(checker_decisive),
                    "one_right_agreement_pct": pct(matches(checker_decisive), len(checker_decisive))},
    }
