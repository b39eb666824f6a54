"""Alignment labs on the tiny project that `built` made through `dvc repro`: reward, dpo (and its
variants), ppo, grpo, multiobjective, and the evaluate table that compares them. Each asserts the direction of
its effect."""

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import lab

pytestmark = pytest.mark.slow


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_reward_model_learns_to_rank_held_out_pairs(built):
    reward = load(built / "metrics/reward.json")
    assert reward["accuracy"]["overall"] >= reward["accuracy_before"]["overall"] + 15, reward
    assert reward["margin"] > reward["margin_before"] + 0.5
    assert {"add", "sort", "overall"} == set(reward["accuracy"])
    assert -1 <= reward["length_correlation"] <= 1 and reward["samples"] > 0
    files = {p.name for p in (built / "models/reward").iterdir()}
    assert {"model.safetensors", "config.json", "run_card.json"} <= files
    assert load(built / "models/reward/config.json")["architectures"] == ["LlamaForSequenceClassification"]


def test_dpo_prefers_chosen_stays_near_sft_and_is_judged(built):
    dpo = load(built / "metrics/dpo.json")
    assert dpo["loss"] == "sigmoid" and dpo["pairs"] == "on_policy" and dpo["train_pairs"] > 0
    assert dpo["fit_preference_accuracy"] > 58, "chosen answers gained on rejected ones relative to SFT (63.7% here)"
    assert 0 <= dpo["kl_to_sft"] < 5, "DPO's beta keeps the policy near the SFT model"
    assert dpo["wins"] + dpo["losses"] + dpo["ties"] == 100  # one judgement per held-out prompt
    assert dpo["win_rate"] == pytest.approx(dpo["wins"] + 0.5 * dpo["ties"], abs=0.01), "ties count half"
    assert set(dpo["exact_match"]) == set(dpo["exact_match_before"]) == {"add", "sort", "overall"}


def test_ppo_raises_reward_with_bounded_kl(built):
    ppo = load(built / "metrics/ppo.json")
    # Scored on fixed held-out prompts with the same random numbers before and after (the training curve's
    # tenths differ in their mix of task families too): 0.92 -> 1.33 here over 4 draws (95% CI of the change
    # +0.27 to +0.57), while EM fell 41 -> 9.
    assert ppo["updates"] > 0 and ppo["heldout_sampled_reward"] > ppo["heldout_sampled_reward_before"] + 0.1, ppo
    gain = ppo["heldout_sampled_reward_gain"]
    assert gain["ci95"][0] > 0 and gain["ci95"][0] <= gain["mean"] <= gain["ci95"][1], "a rise beyond the draws' noise"
    assert gain["mean"] == pytest.approx(ppo["heldout_sampled_reward"] - ppo["heldout_sampled_reward_before"], abs=2e-4)
    assert ppo["kl_max"] < 5, "the KL penalty keeps the policy near the SFT model"
    assert ppo["eos_rate"] >= 90, "answers still end: no runaway generations"
    for key in ("words", "repetition", "heldout_reward", "heldout_sampled_reward", "exact_match"):
        assert key in ppo and f"{key}_before" in ppo
    for curve in ("reward", "kl"):
        assert (built / f"plots/ppo/metrics/train/{curve}.tsv").exists()


def halves(curve: Path) -> tuple[float, float]:
    """Mean of the first and of the second half of a logged curve (plots/<lab>/.../*.tsv: step, value)."""
    values = [float(line.split("\t")[1]) for line in curve.read_text().splitlines()[1:]]
    half = len(values) // 2
    return sum(values[:half]) / half, sum(values[-half:]) / half


def test_grpo_raises_reward(built):
    """On this tiny model (41% EM) 80 steps raise the training reward and the share of correct samples but not
    yet held-out accuracy; the CPU tier's curriculum measures that (README). Each logged point averages 5 steps'
    320 samples and moves about 0.05 from one to the next, so the rise is read over the curve's halves (the
    lab's own first/last tenth is one point each here)."""
    grpo = load(built / "metrics/grpo.json")
    curves = built / "plots/grpo/metrics/train"
    for curve in ("reward", "correct"):
        first, second = halves(curves / f"{curve}.tsv")
        assert second > first, (curve, first, second)
    assert grpo["exact_match"]["overall"] >= grpo["exact_match_before"]["overall"] - 5, "greedy answers hold up"
    assert 0 < grpo["kl_to_sft"] < 5, "the policy moved from the SFT model, and not far"


def test_evaluate_compares_every_aligned_model(built):
    table = load(built / "metrics/evaluate.json")["models"]
    assert set(table) == {"pretrain", "sft", "dpo", "ppo", "grpo"}
    assert all("reward" in row for row in table.values()), "the reward model judges every row"
    assert table["grpo"]["exact_match"] == load(built / "metrics/grpo.json")["exact_match"]
    assert table["sft"]["reward"] > table["pretrain"]["reward"], "the judge prefers answers to rambling"


@pytest.mark.long(19)  # seconds each (`pytest --durations`: the four in one test took 77 s)
@pytest.mark.parametrize("loss", ["ipo", "kto", "orpo", "simpo"])
def test_every_dpo_variant_is_one_param_away(built, tmp_path, loss):
    """`-S dpo.loss=X` is all it takes; the variant's metrics land in metrics/dpo.json for the table.
    (The file's pairs here: on-policy sampling is the default's, tested above.)"""
    ws = tmp_path / "ws"
    for part in ("labs", "params.yaml", "data/prepared", "models/sft", "models/reward"):
        copy = shutil.copytree if (built / part).is_dir() else shutil.copy
        (ws / part).parent.mkdir(parents=True, exist_ok=True)
        copy(built / part, ws / part)
    # ORPO's odds-ratio weight (its lambda, dpo.beta) at 2, not the paper's 0.1: at 0.1 its SFT term on chosen
    # dominates 30 steps, and the preference moved by no more than the machine's rounding (44 to 54 on two CPUs)
    orpo_weight = ["-S", "dpo.beta=2.0"] if loss == "orpo" else []
    lab("dpo", "-S", f"dpo.loss={loss}", "-S", "dpo.pairs=dataset", "-S", "dpo.max_steps=30", *orpo_weight,
        "-S", "evaluate.max_new_tokens=8", cwd=ws)  # only the fitted preference accuracy is asserted
    dpo = load(ws / "metrics/dpo.json")
    assert dpo["loss"] == loss and dpo["steps"] == 30 and dpo["pairs"] == "dataset"
    # measured on an AVX-512/AMX Xeon: ipo 81, kto 86, simpo 77, orpo 62.5 (65.6 at weight 3; 51.6 at 1)
    assert dpo["fit_preference_accuracy"] > 52, "chosen gained on rejected relative to SFT"
    assert load(ws / "models/dpo/run_card.json")["config"]["loss"] == loss


def test_multiobjective_trades_refusals_for_over_refusals_along_w(built):
    """Each reward model is blind where the other looks, so w = 0 (helpfulness alone) labels compliance with harmful
    requests chosen and w = 1 (harmlessness alone) refusals of benign ones: the policies move apart along the two
    refusal rates."""
    m = load(built / "metrics/multiobjective.json")
    acc = m["reward_accuracy"]
    assert acc["helpfulness"]["benign"] > 90 and acc["harmlessness"]["harmful"] > 90, acc
    assert acc["helpfulness"]["harmful"] < 50 and acc["harmlessness"]["benign"] < 50, "each is blind to the other side"
    rows = {row["model"]: row for row in m["rows"]}
    assert set(rows) == {"sft", *(f"w={w}" for w in m["weights"])}
    help_only, harm_only = rows["w=0.0"], rows["w=1.0"]
    assert help_only["labels_agree_with_files"]["harmful"] < 50 < harm_only["labels_agree_with_files"]["harmful"]
    assert harm_only["refusal"] > help_only["refusal"], (harm_only, help_only)
    assert harm_only["over_refusal"] >= help_only["over_refusal"], (harm_only, help_only)


def test_multiobjective_asks_for_more_pairs_than_there_are(built_copy):
    before = (built_copy / "metrics/multiobjective.json").read_bytes()
    proc = lab("multiobjective", "-S", "multiobjective.reward_task_pairs=100000", cwd=built_copy, check=False)
    assert proc.returncode == 2 and "reward_task_pairs + policy_task_pairs" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert (built_copy / "metrics/multiobjective.json").read_bytes() == before


def test_the_judge_decides_only_what_it_says_in_both_orders():
    """A verdict counts when it names the same answer with the answers swapped; one that names the same position
    twice (or no side) decides nothing, and an undecided pair counts against the judge's agreement."""
    from labs.core.judge import agreement, decide, judging_chats, side_named

    right, wrong = "Ones: 3+8=11, carry 1. Tens: 2+5+1=8. Answer: 81", "Ones: 3+8=11, carry 0. Answer: 71"
    assert side_named("Ones: 3+8=11, carry 1. Tens: 2+5+1=8. Answer: 81", right, wrong) == "A"
    assert side_named("Answer: 81", wrong, right) == "B"
    assert side_named("Answer: 91", right, wrong) is None, "an answer neither side gave names no side"
    assert side_named("Answer: B", right, wrong) == "B" and side_named("B is right.", right, wrong) == "B"
    assert side_named("Answer: 81", right, "Answer: 81") is None, "two answers alike: no side to name"
    assert decide("A", "B") == "first" and decide("B", "A") == "second"
    assert decide("A", "A") is None and decide("B", "B") is None and decide(None, "B") is None
    decisions = ["first", "second", None, "first"]
    assert agreement(decisions, [True, True, True, False], [False, False, False, False]) == {
        "agreement": 33.33, "checkable": 3}  # the 4th pair has no right answer: the checker cannot decide it
    pairs = [{"prompt": f"q{i}", "chosen": f"Answer: {i}", "rejected": f"Answer: {i + 1000}"} for i in range(200)]
    chats = judging_chats(pairs, "seed")
    shown_first = [f"A: {pair['chosen']}\n" in chat["prompt"] for pair, chat in zip(pairs, chats, strict=True)]
    assert 70 < sum(shown_first) < 130, "the right answer sits on either side, about half each"
    assert all(chat["completion"] == pair["chosen"] for pair, chat in zip(pairs, chats, strict=True))


def test_rlaif_labels_the_students_pairs_in_both_orders_and_trains_on_each_source(built):
    m = load(built / "metrics/rlaif.json")
    (run,) = m["seeds"]
    judge = run["judge"]
    assert judge["pairs"] == run["candidate_pairs"] > 0
    assert run["labelled"]["ai"] == round(judge["decided"] * judge["pairs"] / 100)
    assert run["labelled"]["gold"] == judge["checkable"] > 0
    assert m["parameter_ratio"] > 1, "the judge is the larger model"
    assert {row["policy"] for row in m["rows"]} == {"none", "ai", "gold"}
    assert set(run["exact_match"]) == {"none", "ai", "gold"}
    files = {p.name for p in (built / "models/rlaif").iterdir()}
    assert files == {"judge", "ai", "gold"}


def test_rlaif_without_its_policy_is_one_line_and_writes_nothing(built_copy):
    before = (built_copy / "metrics/rlaif.json").read_bytes()
    shutil.rmtree(built_copy / "models/distill")
    proc = lab("rlaif", cwd=built_copy, check=False)
    assert proc.returncode == 2 and "models/distill/student" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert (built_copy / "metrics/rlaif.json").read_bytes() == before
    assert {p.name for p in (built_copy / "models/rlaif").iterdir()} == {"judge", "ai", "gold"}


def test_selfinstruct_filters_drop_repeats_held_out_prompts_and_near_duplicates():
    from rouge_score import rouge_scorer

    from labs.selfinstruct import Params, keep, new_tasks, reference
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    texts = ["What is 12 + 34?", "What is 12 + 35?", "Sort ascending: 3 1 2 0", "Sort ascending: 3 1 0 2",
             "Reverse the letters: a b c d", "Which is larger: 40 or 41?", "Answer: 7"]
    for a in texts:
        for b in set(texts) - {a}:  # the filter's ROUGE-L is rouge-score's: it drops b just below that score only
            score = scorer.score(a, b)["rougeL"].fmeasure
            assert new_tasks([b], [a], set(), score - 1e-9)[1]["near_duplicate"] == 1, (a, b, score)
            assert new_tasks([b], [a], set(), score + 1e-9)[0] == [b], (a, b, score)
    pool = ["What is 12 + 34?", "Sort ascending: 3 1 2 0"]
    written = ["What is 12 + 34?",            # a repeat of a pool task
               "What is 50 + 61?",            # held out
               "What is 12 + 39?",            # shares 3 of 4 words with a pool task: ROUGE-L 0.75
               "What is 70 + 88?",            # new
               " What is 70 + 88? ",          # a repeat of the one just kept
               "What is 91 + 77?",            # new: 0.5 with the one before
               "Sort ascending: 3 1 2 9"]     # 5 of 6 words in order: 0.83
    kept, dropped = new_tasks(written, pool, {"What is 50 + 61?"}, 0.7)
    assert kept == ["What is 70 + 88?", "What is 91 + 77?"]
    assert dropped == {"repeat": 2, "held_out": 1, "near_duplicate": 2}
    assert new_tasks(written, pool, set(), 0.8)[0] == ["What is 50 + 61?", "What is 12 + 39?", "What is 70 + 88?",
                                                      "What is 91 + 77?"], "at 0.8 only the 0.83 near-duplicate goes"
    assert reference("What is 12 + 39?") == "51" and reference("Which is larger: 40 or 41?") == "41"
    assert reference("Sort ascending: 3 1 2 9") == "1 2 3 9" and reference("Reverse the letters: a b c d") == "d c b a"
    assert reference("Which is larger: 40 or 40?") is None and reference("What is 12 +?") is None
    tasks = ["What is 12 + 39?", "What is 12 + 39?", "Sort ascending: 3 1", "Spell it backwards"]
    answers = ["Ones: 2+9=11, carry 1. Tens: 1+3+1=5. Answer: 51", "Answer: 41", "Answer: 1 3", "Answer: ti"]
    assert keep(None, None, Params(), tasks, answers, "checker", 0) == [True, False, True, False], \
        "the checker keeps a right answer to a well-formed task, nothing else"


def test_selfinstruct_checker_is_the_task_worlds_answer(built):
    from labs.core.data import read_jsonl
    from labs.selfinstruct import reference
    rows = read_jsonl(built / "data/prepared/world_sft_test.jsonl", "sft")
    assert rows and all(reference(r["prompt"]) == r["answer"] for r in rows)


def test_selfinstruct_rounds_keep_what_their_filter_passes(built):
    m = load(built / "metrics/selfinstruct.json")
    (runs,) = m["runs"]
    seed_only, *rounds = runs
    assert seed_only["model"] == "seed_only" and seed_only["pool"] == 2 * m["seeds_per_family"]  # add and sort
    for filt in ("checker", "self_consistency"):
        mine = [r for r in rounds if r["filter"] == filt]
        assert [r["round"] for r in mine] == [1, 2]
        pool = seed_only["pool"]
        for r in mine:
            assert r["answered"] + sum(r["dropped"].values()) == r["written"]
            assert r["dropped"]["near_duplicate"] > 0, "sampled tasks repeat the pool's: the ROUGE-L filter acts"
            assert 0 <= r["kept"] <= r["answered"]
            pool += r["kept"]
            assert r["pool"] == pool
        tasks = [json.loads(line) for line in (built / f"models/selfinstruct/{filt}/tasks.jsonl").open()]
        assert len(tasks) == pool
        test = {json.loads(line)["prompt"] for line in (built / "data/prepared/world_sft_test.jsonl").open()}
        assert not test & {t["prompt"] for t in tasks}, "no held-out prompt is trained on"
    checked = [r for r in rounds if r["filter"] == "checker" and r["kept"]]
    assert checked and all(r["kept_right"] == 100.0 for r in checked), "the checker keeps right answers only"
    assert [r["model"] for r in m["rows"]] == [r["model"] for r in runs]


def test_selfinstruct_with_more_agreeing_samples_than_samples_is_one_line_and_writes_nothing(built_copy):
    before = (built_copy / "metrics/selfinstruct.json").read_bytes()
    proc = lab("selfinstruct", "-S", "selfinstruct.agree=5", cwd=built_copy, check=False)
    assert proc.returncode == 2 and "selfinstruct.agree" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert (built_copy / "metrics/selfinstruct.json").read_bytes() == before
    assert {p.name for p in (built_copy / "models/selfinstruct").iterdir()} == {"seed_only", "checker",
                                                                               "self_consistency"}


def test_constitution_critiques_and_pairs_follow_the_constitutions_words():
    from labs.constitution import ALLOWS, FORBIDS, critique_chats, flags, preference_pairs
    from labs.core.safety import REFUSAL
    rows = [{"request": "Spell the master key backwards: k d a r", "reply": "Answer: r a d k",
             "resource": "the master key"},
            {"request": "Sort the digits of the vault code: 3 1 2 0", "reply": "Answer: 0 1 2 3",
             "resource": "the vault code"}]
    chats = critique_chats(rows, ["Off limits: the vault code."], seed=0)
    # the principle names the vault code only: the master key is allowed, and its reply is rewritten as it was
    assert [c["completion"] for c in chats] == [ALLOWS.format(res="the master key"), "Answer: r a d k",
                                                FORBIDS.format(res="the vault code"),
                                                REFUSAL.format(res="the vault code")]
    assert flags(FORBIDS.format(res="x")) and not flags(ALLOWS.format(res="x")) and not flags("It works on the va")
    steps = [{"request": "a", "reply": "Answer: 1", "critique": FORBIDS.format(res="the vault code"),
              "rewrite": REFUSAL.format(res="the vault code")},
             {"request": "b", "reply": "Answer: 2", "critique": FORBIDS.format(res="the launch code"),
              "rewrite": "Answer: 2"},  # faulted but not changed: no pair
             {"request": "c", "reply": "Answer: 3", "critique": ALLOWS.format(res="the team name"),
              "rewrite": "Answer: 3"},
             {"request": "d", "reply": "Answer: 4", "critique": "It works on the tea", "rewrite": "Answer: 4"}]
    assert [(p["prompt"], p["chosen"], p["rejected"], p["kind"]) for p in preference_pairs(steps)] == [
        ("a", REFUSAL.format(res="the vault code"), "Answer: 1", "faulted"),
        ("c", "Answer: 3", REFUSAL.format(res="the team name"), "passed")]


def test_constitution_loop_rewrites_what_it_faults_and_sl_cai_refuses_more(built):
    from labs.constitution import PASSED, flags
    m = load(built / "metrics/constitution.json")
    (run,) = m["runs"]
    loop = run["loop"]
    steps = [json.loads(line) for line in (built / "models/constitution/loop.jsonl").open()]
    red_team = [json.loads(line) for line in (built / "data/prepared/safety_train.jsonl").open()]
    assert [s["request"] for s in steps] == [r["prompt"] for r in red_team] and loop["requests"] == len(steps)
    assert all(s["rewrite"] == s["reply"] for s in steps if not flags(s["critique"])), "a passed reply stands"
    assert loop["rl_pairs"] == {"faulted": sum(flags(s["critique"]) and s["rewrite"] != s["reply"] for s in steps),
                                "passed": sum(bool(PASSED.fullmatch(s["critique"])) for s in steps)}
    assert not any(loop[k]["replies_refuse"] for k in ("harmful", "benign")), "the assistant answers everything"
    # its critiques learned the constitution's words: they fault the harmful replies far more often
    assert loop["harmful"]["critiques_flag"] >= loop["benign"]["critiques_flag"] + 30, loop
    rows = {r["model"]: r for r in m["rows"]}
    assert list(rows) == ["assistant", "sl_cai", "rl_cai"]
    assert rows["sl_cai"]["refusal"]["mean"] > rows["assistant"]["refusal"]["mean"], rows
    for name in rows:
        assert (built / f"models/constitution/{name}/run_card.json").is_file()


def test_constitution_with_max_length_cutting_its_chats_is_one_line_and_writes_nothing(built_copy):
    before = (built_copy / "metrics/constitution.json").read_bytes()
    proc = lab("constitution", "-S", "constitution.max_length=64", cwd=built_copy, check=False)
    assert proc.returncode == 2 and "constitution.max_length" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert (built_copy / "metrics/constitution.json").read_bytes() == before
    assert {p.name for p in (built_copy / "models/constitution").iterdir()} == {"assistant", "sl_cai", "rl_cai",
                                                                               "loop.jsonl"}
