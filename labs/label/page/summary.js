// The summary page: /api/summary's numbers in tables, every cell written with textContent.
"use strict";

const token = new URLSearchParams(location.hash.slice(1)).get("token");
const $ = (id) => document.getElementById(id);
const shown = (value, unit = "") => (value === null || value === undefined ? "n/a" : value + unit);

function row(table, cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    td.textContent = cell;
    tr.appendChild(td);
  }
  $(table).querySelector("tbody").appendChild(tr);
}

async function load() {
  const response = await fetch("api/summary", {headers: token ? {Authorization: "Bearer " + token} : {}});
  const s = await response.json();
  if (!response.ok) throw new Error(s.error || response.statusText);
  const labellers = Object.entries(s.labellers).map(([name, n]) => `${name} ${n}`).join(", ") || "none yet";
  $("overview").textContent = `${s.judgements} judgements in force of ${s.pairs} pairs (${s.undone} undone). ` +
    `Labellers: ${labellers}. Verdicts: A/B by pair ${s.verdicts.a}/${s.verdicts.b}, tie ${s.verdicts.tie}, ` +
    `both bad ${s.verdicts.both_bad}.`;
  for (const w of s.win_rates) {
    row("wins", [w.model, w.wins, w.decisive, shown(w.win_rate), w.ci95 ? `${w.ci95[0]} - ${w.ci95[1]}` : "n/a",
                 w.ties_or_both_bad]);
  }
  $("wins-note").textContent = s.win_rates.length ? "" :
    "The pairs are two samples of one model: there is no model to name a winner.";
  const a = s.agreement;
  row("agreement", ["answer shown on the left chosen (position bias; 50% = none)", shown(s.left_chosen_pct, "%")]);
  row("agreement", ["labellers agree (pairs judged by several)",
                    `${shown(a.agreement_pct, "%")} of ${a.labeller_pairs} labeller pairs on ${a.pairs_judged_by_several} pairs`]);
  row("agreement", ["agree with the answer checker", `${shown(s.checker.agreement_pct, "%")} of ${s.checker.judgements}`]);
  row("agreement", ["... where one answer is right and one wrong",
                    `${shown(s.checker.one_right_agreement_pct, "%")} of ${s.checker.one_right_judgements}`]);
  for (const k of a.kappa) row("kappa", [k.labellers.join(" & "), k.pairs, k.kappa]);
}

load().catch((error) => { $("status").textContent = "error: " + error.message; });
