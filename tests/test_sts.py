"""The STS task: readers, SentEval's "all" aggregation, Spearman, the rounded average, error messages."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from mmcl.tasks.sts import (
    ALL_TASKS,
    STS_YEARS,
    STSOptions,
    aggregate,
    correlations,
    cosine_scores,
    evaluate_sts,
    load_task,
    read_sick,
    read_sts_tsv,
    read_stsb,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_all_aggregation_matches_the_spec_fixture_and_differs_from_the_means():
    # evaluation spec section 3: A = ([0.9, 0.8, 0.1, 0.4], [5, 4, 1, 2]), B = ([0.2, 0.3, 0.25], [3, 4, 5])
    out = aggregate({"A": ([0.9, 0.8, 0.1, 0.4], [5, 4, 1, 2]), "B": ([0.2, 0.3, 0.25], [3, 4, 5])})
    assert out["subsets"]["A"]["spearman"] == pytest.approx(100.0)
    assert out["subsets"]["B"]["spearman"] == pytest.approx(50.0)
    assert out["spearman_mean"] == pytest.approx(75.0)
    assert out["spearman_wmean"] == pytest.approx(100 * (4 * 1.0 + 3 * 0.5) / 7)
    assert out["all"]["spearman"] == pytest.approx(54.5545, abs=1e-4)
    assert out["all"]["pearson"] == pytest.approx(54.9615, abs=1e-4)
    assert out["all"]["n"] == 7


def test_all_aggregation_by_hand():
    # concatenation system [0.9, 0.8, 0.1, 0.4, 0.2, 0.3, 0.25] has ranks [7, 6, 1, 5, 2, 4, 3];
    # gold [5, 4, 1, 2, 3, 4, 5] has ranks [6.5, 4.5, 1, 2, 3, 4.5, 6.5]; Spearman = Pearson of the ranks
    rx = np.array([7, 6, 1, 5, 2, 4, 3], float)
    ry = np.array([6.5, 4.5, 1, 2, 3, 4.5, 6.5])
    by_hand = np.corrcoef(rx, ry)[0, 1]
    out = aggregate({"A": ([0.9, 0.8, 0.1, 0.4], [5, 4, 1, 2]), "B": ([0.2, 0.3, 0.25], [3, 4, 5])})
    assert out["all"]["spearman"] == pytest.approx(100 * by_hand)
    assert abs(out["all"]["spearman"] - out["spearman_mean"]) > 10


def test_spearman_on_known_data():
    # no ties: rho = 1 - 6 sum d^2 / (n (n^2 - 1)) = 1 - 6 * 4 / 120 = 0.8
    assert correlations([1, 2, 3, 4, 5], [2, 1, 4, 3, 5])["spearman"] == pytest.approx(80.0)
    assert correlations([1, 2, 3], [30, 20, 10])["spearman"] == pytest.approx(-100.0)
    # monotone but not linear: Spearman 100, Pearson below
    out = correlations([1, 2, 3, 4], [1, 10, 100, 1000])
    assert out["spearman"] == pytest.approx(100.0) and out["pearson"] < 90 and out["n"] == 4


def test_cosine_scores_and_nan_to_zero():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = np.array([[2.0, 0.0], [-1.0, -1.0], [1.0, 0.0]])
    np.testing.assert_allclose(cosine_scores(a, b), [1.0, -1.0, 0.0])


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_sts_tsv_skips_rows_without_gold_and_normalises_whitespace(tmp_path):
    file = _write(tmp_path / "x.test.tsv", '4.0\tA  man "plays".\tA man plays.\n\tno gold\there\n1.5\tone\ttwo \n')
    pairs = read_sts_tsv(file)
    assert pairs.sentences1 == ['A man "plays".', "one"] and pairs.sentences2 == ["A man plays.", "two"]
    np.testing.assert_array_equal(pairs.gold, [4.0, 1.5])


def test_stsb_and_sick_readers(tmp_path):
    stsb = _write(
        tmp_path / "sts-test.csv",
        "main-captions\tMSRvid\t2012test\t0001\t5.000\tA plane.\tAn airplane.\n"
        "main-news\theadlines\t2013\t0002\t0.500\tx\ty\textra\tsources\n",
    )
    pairs = read_stsb(stsb)
    assert pairs.sentences1 == ["A plane.", "x"] and list(pairs.gold) == [5.0, 0.5]
    sick = _write(
        tmp_path / "SICK_test_annotated.txt",
        "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\r\n"
        "6\tA boy\tA kid\t4.5\tENTAILMENT\r\n",
    )
    pairs = read_sick(sick)
    assert pairs.sentences2 == ["A kid"] and list(pairs.gold) == [4.5]


def _tiny_root(root: Path) -> Path:
    """All seven tasks in ../shared/data's layout, a few pairs each (STS12 lacks MSRvid, as there)."""
    rows = [
        "4.8\tthe cat sat\tthe cat sat down",
        "0.2\tthe cat sat\tstocks fell sharply",
        "3.0\ta dog ran\ta dog walked",
        "\tno gold\tskipped",
        "1.0\tred\tblue sky",
    ]
    for year, subsets in STS_YEARS.values():
        for subset in subsets:
            stem = subset.removeprefix("surprise.")
            if subset != "MSRvid":
                _write(root / "sts12-16" / year / f"{stem}.test.tsv", "\n".join(rows) + "\n")
    body = "".join(
        f"g\tf\ty\t{i}\t{line.split(chr(9))[0] or '2.0'}\t{line.split(chr(9))[1]}\t{line.split(chr(9))[2]}\n"
        for i, line in enumerate(rows)
    )
    _write(root / "stsb" / "sts-test.csv", body)
    _write(root / "stsb" / "sts-dev.csv", body)
    sick = "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n" + "".join(
        f"{i}\t{line.split(chr(9))[1]}\t{line.split(chr(9))[2]}\t{line.split(chr(9))[0] or '2.0'}\tNEUTRAL\n"
        for i, line in enumerate(rows)
    )
    _write(root / "sick" / "SICK_test_annotated.txt", sick)
    _write(root / "sick" / "SICK_trial.txt", sick)
    return root


def _bag_of_letters(sentences: list[str]) -> np.ndarray:
    out = np.zeros((len(sentences), 26))
    for i, sentence in enumerate(sentences):
        for ch in sentence.lower():
            if "a" <= ch <= "z":
                out[i, ord(ch) - 97] += 1
    return out


def test_evaluate_sts_on_a_constructed_root(tmp_path):
    root = _tiny_root(tmp_path)
    with pytest.warns(UserWarning, match="MSRvid"):
        out = evaluate_sts(_bag_of_letters, STSOptions(root=str(root)))
    assert out["tasks"] == list(ALL_TASKS)
    assert out["STS12"]["missing_subsets"] == ["MSRvid"] and out["STS12"]["aggregation"] == "all"
    assert out["STS13"]["n"] == 12 and set(out["STS13"]["subsets"]) == {"FNWN", "headlines", "OnWN"}
    assert out["STSBenchmark"]["n"] == 5  # the fixture writes 2.0 for STS-B's gold-less row
    assert out["avg"] == pytest.approx(np.mean([out[name]["spearman"] for name in ALL_TASKS]))
    assert out["scores"]["STS14"] == out["STS14"]["spearman"]
    dev = evaluate_sts(_bag_of_letters, STSOptions(root=str(root), split="dev"))
    assert dev["tasks"] == ["STSBenchmark", "SICKRelatedness"]


def test_scores_keep_full_precision_and_simcse_average_rounds(tmp_path, monkeypatch):
    """A study ranks and tests ``avg``: rounded to 0.01 (the size of a seed spread) it made ties and zero spreads.
    SimCSE's printed figure, the mean of the rounded task scores, is ``avg_simcse``."""
    import mmcl.tasks.sts as sts

    root = _tiny_root(tmp_path)
    values = iter([70.004, 80.0071])  # rounded 70.0 and 80.01: SimCSE's mean 75.005 -> 75.0 or 75.01 (float)

    def fake_score(embed, subsets):
        value = next(values)
        return {"all": {"spearman": value, "pearson": value, "n": 1}, "subsets": {}}

    monkeypatch.setattr(sts, "score_pairs", fake_score)
    out = evaluate_sts(_bag_of_letters, STSOptions(root=str(root), tasks=["STSBenchmark", "SICKRelatedness"]))
    assert out["scores"] == {"STSBenchmark": 70.004, "SICKRelatedness": 80.0071}
    assert out["avg"] == pytest.approx(75.00555, abs=1e-12)
    assert out["avg_simcse"] == round((70.0 + 80.01) / 2, 2)


def test_missing_files_name_the_config_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="eval.sts.root"):
        load_task("STSBenchmark", tmp_path)
    with pytest.raises(FileNotFoundError, match="eval.sts.root"):
        load_task("STS15", tmp_path)
    root = _tiny_root(tmp_path)
    with pytest.raises(FileNotFoundError, match="MSRvid"):
        load_task("STS12", root, missing_subsets="error")
    with pytest.raises(ValueError, match="only a test split"):
        load_task("STS13", root, split="dev")
    with pytest.raises(ValueError, match="unknown task"):
        evaluate_sts(_bag_of_letters, STSOptions(root=str(root), tasks=["STS17"]))


def test_senteval_layout(tmp_path):
    folder = tmp_path / "STS" / "STS13-en-test"
    for subset in ("FNWN", "headlines", "OnWN"):
        _write(folder / f"STS.input.{subset}.txt", "a b\tc d\ne f\tg h\ni j\tk l\n")
        _write(folder / f"STS.gs.{subset}.txt", "1.0\n\n3.5\n")
    subsets, missing = load_task("STS13", tmp_path)
    assert missing == [] and len(subsets["OnWN"]) == 2 and list(subsets["OnWN"].gold) == [1.0, 3.5]


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not present")
def test_real_files_have_senteval_sizes():
    sizes = {
        name: sum(len(p) for p in load_task(name, SHARED)[0].values()) for name in ("STS13", "STS14", "STS15", "STS16")
    }
    assert sizes == {"STS13": 1500, "STS14": 3750, "STS15": 3000, "STS16": 1186}  # SentEval's counts
    with pytest.warns(UserWarning, match="MSRvid"):
        sts12, missing = load_task("STS12", SHARED)
    assert missing == ["MSRvid"] and sum(len(p) for p in sts12.values()) == 2358
    assert len(load_task("STSBenchmark", SHARED)[0]["test"]) == 1379
    assert len(load_task("STSBenchmark", SHARED, "dev")[0]["dev"]) == 1500
    sick = load_task("SICKRelatedness", SHARED)[0]["test"]
    assert len(sick) == 4927 and not any(math.isnan(g) for g in sick.gold)
