"""Mean and spread over seeds: labs that train every variant again with more seeds report each metric this way,
so an effect can be read against the noise between seeds."""

from __future__ import annotations

import statistics


def over_seeds(runs: list[list[dict]], label: str, keys: tuple[str, ...]) -> list[dict]:
    """`runs` holds one list of rows per seed, rows in the same order (each names itself under `label`). Per row,
    each of `keys`: every seed's value, their mean and sample standard deviation."""
    table = []
    for by_seed in zip(*runs, strict=True):
        row = {label: by_seed[0][label]}
        for key in keys:
            values = [run[key] for run in by_seed]
            row[key] = {"runs": values, "mean": round(statistics.mean(values), 3),
                        "sd": round(statistics.stdev(values), 3) if len(values) > 1 else 0.0}
        table.append(row)
    return table


def cells(row: dict, keys: tuple[str, ...]) -> list[str]:
    """A spread row's cells: "mean ± sd" per key."""
    return [f"{row[key]['mean']} ± {row[key]['sd']}" for key in keys]
