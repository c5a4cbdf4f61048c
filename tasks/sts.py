"""Semantic textual similarity (STS) as SimCSE and SentEval compute it: the ``sts`` evaluation task.

Reference: SimCSE's ``evaluation.py`` and its modified SentEval ``senteval/sts.py`` (Gao et al. 2021,
arXiv:2104.08821; Conneau & Kiela 2018, arXiv:1803.05449); evaluation spec section 3.

For each pair the system score is the **cosine similarity** of the two sentence embeddings (NaN -> 0);
a task's score is the **Spearman correlation x 100** between system and gold scores:

* STS12-16, SentEval's **"all"** setting (what SimCSE prints in ``--mode test``): concatenate the system and
  gold scores of *all subsets of the year*, then one Spearman. The mean and the size-weighted mean of the
  per-subset correlations are reported too (``spearman_mean``, ``spearman_wmean``), never as the score.
* STS-B: ``sts-test.csv`` (``split=dev``: ``sts-dev.csv``); SICK-R: ``relatedness_score`` of
  ``SICK_test_annotated.txt`` (``split=dev``: ``SICK_trial.txt``). Spearman on the split, no training.
* ``avg``: the mean of the task scores, at full precision like every score here (a study ranks and tests them:
  rounding is for display only). ``avg_simcse`` is the figure SimCSE prints, the mean of the task scores each
  rounded to two decimals; the two differ by less than 0.005. Rows without a gold score (blank score fields in
  STS15/16) are skipped.

Sentences are whitespace-normalised (``" ".join(s.split())``) as SentEval's batcher rebuilds them.

Files (``eval.sts.root``, required): ``stsb/sts-{test,dev}.csv`` (tab-separated, no quoting:
genre, file, year, id, score, sentence1, sentence2[, sources]), ``sick/SICK_{test_annotated,trial}.txt``
(tab-separated with a header: pair_ID, sentence_A, sentence_B, relatedness_score, ...),
``sts12-16/<year>/<subset>.test.tsv`` (``score<TAB>s1<TAB>s2``). SentEval's own ``data/downstream`` layout
(``STS/STS12-en-test/STS.input.<subset>.txt`` + ``STS.gs.<subset>.txt``, ``STS/STSBenchmark/``, ``SICK/``)
is read too.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
from scipy.stats import pearsonr, spearmanr

from mmcl.contract import PositiveInt
from mmcl.tasks.registry import EvalContext, register_task

#: SentEval's subsets of each year (STS13 without SMT, for licence reasons, as in SentEval).
STS_YEARS: dict[str, tuple[str, tuple[str, ...]]] = {
    "STS12": ("2012", ("MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN", "surprise.SMTnews")),
    "STS13": ("2013", ("FNWN", "headlines", "OnWN")),
    "STS14": ("2014", ("deft-forum", "deft-news", "headlines", "images", "OnWN", "tweet-news")),
    "STS15": ("2015", ("answers-forums", "answers-students", "belief", "headlines", "images")),
    "STS16": ("2016", ("answer-answer", "headlines", "plagiarism", "postediting", "question-question")),
}
ALL_TASKS = (*STS_YEARS, "STSBenchmark", "SICKRelatedness")
DEV_TASKS = ("STSBenchmark", "SICKRelatedness")
_ROOT_KEY = "eval.sts.root"


@dataclass
class STSOptions:
    root: str | None = None  # holds stsb/, sick/, sts12-16/ (or SentEval's STS/ and SICK/); required
    tasks: list[str] | None = None  # None: all seven (split=test) or STS-B and SICK-R (split=dev)
    split: Literal["test", "dev"] = "test"
    batch_size: PositiveInt | None = None  # sentences per forward pass; None: eval.batch_size
    max_length: PositiveInt | None = None  # tokens; None: the encoder's eval_max_length
    missing_subsets: Literal["warn", "error"] = "warn"  # a year's subset file absent (e.g. STS12 MSRvid)


@dataclass
class STSPairs:
    """Sentence pairs with gold scores: two lists of ``n`` strings and ``gold`` ``(n,)``."""

    sentences1: list[str]
    sentences2: list[str]
    gold: np.ndarray

    def __len__(self) -> int:
        return len(self.gold)


def normalize(sentence: str) -> str:
    return " ".join(sentence.split())


def _pairs(rows: list[tuple[str, str, str]], source: Path) -> STSPairs:
    """``(score, s1, s2)`` string rows -> pairs, skipping rows whose score is empty (no gold)."""
    kept = [(score.strip(), normalize(a), normalize(b)) for score, a, b in rows if score.strip()]
    try:
        gold = np.array([float(score) for score, _, _ in kept], dtype=np.float64)
    except ValueError as error:
        raise ValueError(f"{source}: a gold score is not a number ({error})") from error
    return STSPairs([a for _, a, _ in kept], [b for _, _, b in kept], gold)


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _fields(line: str, count: int, path: Path, number: int) -> list[str]:
    fields = line.rstrip("\r\n").split("\t")
    if len(fields) < count:
        raise ValueError(f"{path}:{number}: expected at least {count} tab-separated fields, got {len(fields)}")
    return fields


def read_sts_tsv(path: Path) -> STSPairs:
    """``score<TAB>sentence1<TAB>sentence2`` lines; an empty score means no gold label (row skipped)."""
    rows = [_fields(line, 3, path, i + 1)[:3] for i, line in enumerate(_lines(path)) if line.strip()]
    return _pairs([(s, a, b) for s, a, b in rows], path)


def read_senteval_sts(input_path: Path, gold_path: Path) -> STSPairs:
    """SentEval's ``STS.input.<subset>.txt`` (``s1<TAB>s2``) + ``STS.gs.<subset>.txt`` (a score or a blank line)."""
    inputs, golds = _lines(input_path), _lines(gold_path)
    if len(inputs) != len(golds):
        raise ValueError(f"{input_path} has {len(inputs)} lines but {gold_path} has {len(golds)}")
    rows = [(gold, *_fields(line, 2, input_path, i + 1)[:2]) for i, (line, gold) in enumerate(zip(inputs, golds))]
    return _pairs(rows, input_path)


def read_stsb(path: Path, key: str = _ROOT_KEY) -> STSPairs:
    """STS-B ``sts-{train,dev,test}.csv``: tab-separated, no quoting; score in field 5, sentences in 6 and 7."""
    _require(path, key)
    rows = [_fields(line.strip(), 7, path, i + 1) for i, line in enumerate(_lines(path)) if line.strip()]
    return _pairs([(r[4], r[5], r[6]) for r in rows], path)


def read_sick(path: Path, key: str = _ROOT_KEY) -> STSPairs:
    """SICK ``SICK_*.txt``: header line, then pair_ID, sentence_A, sentence_B, relatedness_score, ..."""
    _require(path, key)
    lines = _lines(path)
    rows = [_fields(line.strip(), 4, path, i + 2) for i, line in enumerate(lines[1:]) if line.strip()]
    return _pairs([(r[3], r[1], r[2]) for r in rows], path)


def _require(path: Path, key: str) -> None:
    if not path.is_file():
        where = (
            "the folder holding stsb/, sick/ and sts12-16/ or SentEval's data/downstream"
            if key == _ROOT_KEY
            else "the file's path"
        )
        raise FileNotFoundError(f"STS data file {path} not found; set {key} to {where}")


def _first_file(candidates: Sequence[Path], what: str, root: Path) -> Path:
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"{what} not found under {_ROOT_KEY}={str(root)!r} (looked for {tried}); "
        f"set {_ROOT_KEY} to the folder holding stsb/, sick/ and sts12-16/"
    )


def load_task(
    name: str, root: str | Path, split: str = "test", missing_subsets: str = "warn"
) -> tuple[dict[str, STSPairs], list[str]]:
    """``({subset: pairs}, missing subset names)`` of one task; STS-B and SICK-R have one subset (the split)."""
    root = Path(root).expanduser()
    if name == "STSBenchmark":
        file = _first_file(
            [root / "stsb" / f"sts-{split}.csv", root / "STS" / "STSBenchmark" / f"sts-{split}.csv"],
            f"STS-B {split} file sts-{split}.csv",
            root,
        )
        return {split: read_stsb(file)}, []
    if name == "SICKRelatedness":
        filename = {"test": "SICK_test_annotated.txt", "dev": "SICK_trial.txt"}[split]
        file = _first_file(
            [root / "sick" / filename, root / "SICK" / filename], f"SICK-R {split} file {filename}", root
        )
        return {split: read_sick(file)}, []
    if name not in STS_YEARS:
        raise ValueError(f"unknown STS task {name!r}; available: {list(ALL_TASKS)}")
    if split != "test":
        raise ValueError(f"{name} has only a test split; with eval.sts.split={split} use tasks {list(DEV_TASKS)}")
    year, subsets = STS_YEARS[name]
    ours, senteval = root / "sts12-16" / year, root / "STS" / f"{name}-en-test"
    if not ours.is_dir() and not senteval.is_dir():
        raise FileNotFoundError(
            f"{name}: neither {ours} nor {senteval} exists; set {_ROOT_KEY} (now {str(root)!r}) "
            "to the folder holding sts12-16/"
        )
    found, missing = {}, []
    for subset in subsets:
        # ../shared/data names STS12's surprise.OnWN / surprise.SMTnews files OnWN / SMTnews
        tsv = [ours / f"{stem}.test.tsv" for stem in dict.fromkeys((subset, subset.removeprefix("surprise.")))]
        tsv_file = next((f for f in tsv if f.is_file()), None)
        gold = senteval / f"STS.gs.{subset}.txt"
        if tsv_file is not None:
            found[subset] = read_sts_tsv(tsv_file)
        elif gold.is_file():
            found[subset] = read_senteval_sts(senteval / f"STS.input.{subset}.txt", gold)
        else:
            missing.append(subset)
    if missing:
        message = f"{name}: subset file(s) {missing} not found in {ours} (nor {senteval})"
        if not found:
            raise FileNotFoundError(f"{message}; set {_ROOT_KEY}")
        if missing_subsets == "error":
            raise FileNotFoundError(f"{message}; set {_ROOT_KEY}, or eval.sts.missing_subsets=warn to score the rest")
        warnings.warn(
            f"{message}; the score covers {list(found)} only and is not comparable to published figures", stacklevel=2
        )
    return found, missing


def cosine_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine ``(n,)`` of ``(n, f)`` embeddings, NaN (e.g. a zero vector) -> 0 as in SentEval."""
    a, b = np.nan_to_num(np.asarray(a, np.float64)), np.nan_to_num(np.asarray(b, np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return np.nan_to_num(scores)


def correlations(system: Sequence[float], gold: Sequence[float]) -> dict:
    """Spearman and Pearson x 100 (scipy) and the number of pairs."""
    system, gold = np.asarray(system, np.float64), np.asarray(gold, np.float64)
    if len(system) < 2:
        return {"spearman": float("nan"), "pearson": float("nan"), "n": int(len(system))}
    return {
        "spearman": 100.0 * float(spearmanr(system, gold).statistic),
        "pearson": 100.0 * float(pearsonr(system, gold).statistic),
        "n": int(len(system)),
    }


def aggregate(results: dict[str, tuple[Sequence[float], Sequence[float]]]) -> dict:
    """SentEval's aggregation of ``{subset: (system, gold)}``: per subset, "all", mean and size-weighted mean.

    ``all`` correlates the concatenation of every subset's scores (SimCSE's STS12-16 figure); ``mean``
    and ``wmean`` average the per-subset correlations (unweighted / weighted by pair counts).
    """
    subsets = {name: correlations(system, gold) for name, (system, gold) in results.items()}
    system = np.concatenate([np.asarray(s, np.float64) for s, _ in results.values()])
    gold = np.concatenate([np.asarray(g, np.float64) for _, g in results.values()])
    sizes = np.array([value["n"] for value in subsets.values()], dtype=np.float64)
    out = {"subsets": subsets, "all": correlations(system, gold)}
    for metric in ("spearman", "pearson"):
        values = np.array([value[metric] for value in subsets.values()])
        out[f"{metric}_mean"] = float(values.mean())
        out[f"{metric}_wmean"] = float(np.average(values, weights=sizes))
    return out


def score_pairs(embed: Callable[[list[str]], object], subsets: dict[str, STSPairs]) -> dict:
    """Embed every sentence of ``subsets`` in one call of ``embed`` (n strings -> (n, f)), then :func:`aggregate`."""
    sentences = [s for pairs in subsets.values() for s in (*pairs.sentences1, *pairs.sentences2)]
    vectors = _numpy(embed(sentences)) if sentences else np.zeros((0, 1))
    results, start = {}, 0
    for name, pairs in subsets.items():
        n = len(pairs)
        a, b = vectors[start : start + n], vectors[start + n : start + 2 * n]
        results[name] = (cosine_scores(a, b), pairs.gold)
        start += 2 * n
    return aggregate(results)


def _numpy(vectors: object) -> np.ndarray:
    if hasattr(vectors, "detach"):
        vectors = vectors.detach().float().cpu().numpy()
    return np.asarray(vectors, dtype=np.float64)


def _embed_once(embed: Callable[[list[str]], object], pairs: list[STSPairs]) -> Callable[[list[str]], np.ndarray]:
    """``embed`` run once on the distinct sentences of all ``pairs`` (tasks share many); returns a lookup."""
    unique = list(dict.fromkeys(s for p in pairs for s in (*p.sentences1, *p.sentences2)))
    vectors = _numpy(embed(unique)) if unique else np.zeros((0, 1))
    row = {sentence: i for i, sentence in enumerate(unique)}
    return lambda sentences: vectors[[row[s] for s in sentences]]


def evaluate_sts(embed: Callable[[list[str]], object], options: STSOptions | None = None) -> dict:
    """Every selected task's scores (Spearman x 100, full precision), their average, and SimCSE's average of the
    rounded scores."""
    options = options or STSOptions()
    if options.root is None:
        raise ValueError(
            f"{_ROOT_KEY} is not set: set it to the folder holding stsb/, sick/ and sts12-16/ "
            "(or SentEval's data/downstream), e.g. eval.sts.root=~/data/sts"
        )
    names = list(options.tasks) if options.tasks else list(ALL_TASKS if options.split == "test" else DEV_TASKS)
    unknown = [name for name in names if name not in ALL_TASKS]
    if unknown:
        raise ValueError(f"eval.sts.tasks: unknown task(s) {unknown}; available: {list(ALL_TASKS)}")
    loaded = {name: load_task(name, options.root, options.split, options.missing_subsets) for name in names}
    cached = _embed_once(embed, [pairs for subsets, _ in loaded.values() for pairs in subsets.values()])
    out: dict = {"split": options.split}
    for name, (subsets, missing) in loaded.items():
        scored = score_pairs(cached, subsets)
        if name in STS_YEARS:
            # SimCSE's STS12-16 figure is SentEval's "all"; mean/wmean are for reference only
            out[name] = {
                **scored["all"],
                "aggregation": "all",
                "subsets": scored["subsets"],
                **{k: v for k, v in scored.items() if k.endswith(("_mean", "_wmean"))},
            }
            if missing:
                out[name]["missing_subsets"] = missing
        else:
            out[name] = scored["all"]
    out["scores"] = {name: out[name]["spearman"] for name in names}
    out["avg"] = float(np.mean(list(out["scores"].values())))
    out["avg_simcse"] = round(float(np.mean([round(score, 2) for score in out["scores"].values()])), 2)
    out["tasks"] = names
    return out


@register_task(
    "sts",
    STSOptions,
    headline=(*(f"{name}.spearman" for name in ALL_TASKS), "avg"),
    primary="avg",
    protocol="Spearman x 100 of cosine similarities (SentEval 'all'), {split} split, average over the tasks",
    validation="Spearman x 100 on the STS-B dev split (SimCSE's checkpoint selection); the test sets are not read",
)
def sts(context: EvalContext, options: STSOptions) -> dict:
    """STS on the frozen encoder's evaluation embedding (``features``; the pooler is recorded)."""
    encoder = context.encoder
    if not hasattr(encoder, "encode"):
        raise ValueError(
            f"the sts task needs a text encoder with .encode(sentences); the {context.adapter.name!r} "
            "modality does not provide one"
        )
    batch_size = options.batch_size or context.batch_size

    def embed(sentences: list[str]):
        return encoder.encode(sentences, batch_size=batch_size, device=context.device, max_length=options.max_length,
                              progress=partial(context.progress, what="encode the sentences"))  # fmt: skip

    if context.validation is not None:  # validation: STS-B dev alone, whatever the options name
        options = dataclasses.replace(options, split="dev", tasks=["STSBenchmark"])
    results = evaluate_sts(embed, options)
    results["pooler"] = getattr(encoder, "pooler_name", None)
    results["max_length"] = options.max_length or getattr(encoder, "eval_max_length", None)
    return results
