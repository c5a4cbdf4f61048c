"""Pretraining sentences through Hugging Face ``datasets``: plain text, CSV/TSV, JSON(L) or a hub dataset.

Each mode needs (sentence-transformers style):

============ ==================================================================================================
``unsup``    one column of sentences; a plain text file is one sentence per line (SimCSE's
             ``wiki1m_for_simcse.txt``). Each sentence is its own positive; dropout is the augmentation.
``pairs``    two columns (anchor, positive), e.g. (sentence, paraphrase) or (question, answer).
``nli``      (premise, entailment, contradiction) triplets, the contradiction a hard negative: either three
             columns (SimCSE's ``nli_for_simcse.csv``: ``sent0, sent1, hard_neg``; sentence-transformers'
             ``anchor, positive, negative``) or raw NLI rows
             (premise, hypothesis, label: SNLI's ``sentence1, sentence2, gold_label``, or the hub's
             ``premise, hypothesis, label`` with 0 = entailment, 2 = contradiction), grouped by premise.
============ ==================================================================================================

Rows with an empty sentence are dropped. The rows are tokenized once (:func:`tokenize_rows`), not per step.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

FORMATS = {".txt": "text", ".text": "text", ".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "json"}
#: Column names recognised without ``data.columns``.
TRIPLET_LAYOUTS = (("sent0", "sent1", "hard_neg"), ("anchor", "positive", "negative"))  # SimCSE, sentence-transformers
PAIR_LAYOUTS = (("sent0", "sent1"), ("anchor", "positive"), ("sentence1", "sentence2"))
NLI_LAYOUTS = (("sentence1", "sentence2", "gold_label"), ("premise", "hypothesis", "label"))
_ENTAILMENT = ("entailment", 0)
_CONTRADICTION = ("contradiction", 2)


class TokenizedTuples(Dataset):
    """Sentence tuples tokenized once (:func:`tokenize_rows`): items are tuples of token-id lists, unpadded; the
    adapter pads each batch to its longest row."""

    def __init__(self, rows: Sequence[tuple[list[int], ...]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[list[int], ...]:
        return self.rows[index]


_TOKENS: dict[tuple, list] = {}  # the tokenized rows of the last few (tokenizer, max_length, rows)
_TOKENS_KEPT = 4


def tokenize_rows(rows: Sequence[tuple[str, ...]], tokenizer: Any, max_length: int) -> list[tuple[list[int], ...]]:
    """Every sentence of ``rows`` tokenized once (truncated to ``max_length``), cached per process and keyed by the
    tokenizer's vocabulary and settings, ``max_length`` and the rows, so a changed tokenizer or length re-tokenizes."""
    key = (
        _fingerprint(tokenizer),
        max_length,
        hashlib.sha1("\x1f".join("\x1e".join(r) for r in rows).encode()).hexdigest(),
    )
    if key not in _TOKENS:
        width = len(rows[0])
        ids = tokenizer([s for row in rows for s in row], truncation=True, max_length=max_length)["input_ids"]
        _TOKENS[key] = [tuple(ids[i * width : (i + 1) * width]) for i in range(len(rows))]
        while len(_TOKENS) > _TOKENS_KEPT:
            del _TOKENS[next(iter(_TOKENS))]
    return _TOKENS[key]


def _fingerprint(tokenizer: Any) -> str:
    """The tokenizer's identity: its full definition for a fast tokenizer, else its class, name and vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    settings = f"{type(tokenizer).__name__}|{getattr(tokenizer, 'name_or_path', '')}|{tokenizer.padding_side}"
    return hashlib.sha1((settings + text).encode()).hexdigest()


def load_table(
    path: str | Sequence[str] | None,
    dataset: str | None,
    dataset_config: str | None = None,
    split: str = "train",
    file_format: str = "auto",
    cache_dir: str | None = None,
) -> Any:
    """A ``datasets.Dataset`` from local files (``path``: one or a list, one format) or a hub dataset (online).

    ``cache_dir`` (``data.cache_dir``) holds Hugging Face datasets' cache instead of ``~/.cache/huggingface``.
    """
    if path:
        files = [Path(p).expanduser() for p in ([path] if isinstance(path, str) else path)]
        for file in files:
            if not file.is_file():
                raise FileNotFoundError(
                    f"data.path: {file} does not exist; set data.path to a local text/CSV/TSV/JSON(L) "
                    "file or a list of them (or data.dataset to a hub dataset name when online)"
                )
            if file.stat().st_size == 0:
                raise ValueError(f"data.path: {file} is empty; it must hold the sentences (one per line for .txt)")
        kinds = {FORMATS.get(file.suffix.lower()) if file_format == "auto" else file_format for file in files}
        if len(kinds) != 1 or None in kinds:
            raise ValueError(
                f"data.path: cannot tell one format for {[f.name for f in files]}; "
                "set data.format to one of text, csv, tsv, json"
            )
        kind, data_files = kinds.pop(), [str(file) for file in files]
        if kind in ("text", "json"):
            return _load(f"data.path={path}", kind, data_files=data_files, split="train", cache_dir=cache_dir)
        # keep_default_na=False: a sentence "NA" or "null" stays a string; TSV has no quoting (quotes are text)
        options = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if kind == "tsv" else {"delimiter": ","}
        return _load(f"data.path={path}", "csv", data_files=data_files, split="train", keep_default_na=False,
                     cache_dir=cache_dir, **options)  # fmt: skip
    if dataset:
        return _load(f"data.dataset={dataset}", dataset, dataset_config, split=split, cache_dir=cache_dir)
    raise ValueError("the text modality needs data.path (a local file) or data.dataset (a hub dataset name)")


def _load(what: str, *args: Any, **kwargs: Any) -> Any:
    """``datasets.load_dataset`` with its reading errors named after the config key."""
    from datasets import load_dataset
    from datasets.exceptions import DatasetGenerationError

    try:
        return load_dataset(*args, **kwargs)
    except DatasetGenerationError as error:
        cause = error.__cause__ or error
        raise ValueError(f"{what}: the data cannot be read ({type(cause).__name__}: {cause})") from None


def build_rows(
    table: Any,
    mode: str,
    columns: Sequence[str] | None = None,
    label_column: str | None = None,
    hard_negatives: bool = True,
    max_samples: int | None = None,
) -> list[tuple[str, ...]]:
    """The pretraining tuples of a table for ``mode`` (``unsup``, ``pairs``, ``nli``; module docstring)."""
    available = list(table.column_names)
    columns = list(columns) if columns else None
    if mode == "unsup":
        column = _one_of(columns, available, [("text",), ("sentence",), ("sent0",), ("anchor",)], 1)[0]
        rows = [(s,) for s in _strings(table, column)]
    elif mode == "pairs":
        first, second = _one_of(columns, available, PAIR_LAYOUTS, 2)
        rows = list(zip(_strings(table, first), _strings(table, second)))
    elif mode == "nli":
        rows = _nli_rows(table, available, columns, label_column, hard_negatives)
    else:
        raise ValueError(f"data.mode must be unsup, pairs or nli, got {mode!r}")
    rows = [row for row in rows if all(s.strip() for s in row)]
    if max_samples is not None:
        rows = rows[:max_samples]
    if not rows:
        raise ValueError(f"no {mode} rows with non-empty sentences in the data (columns {available})")
    return rows


def _nli_rows(
    table: Any, available: list[str], columns: list[str] | None, label_column: str | None, hard_negatives: bool
) -> list[tuple[str, ...]]:
    if label_column is None and columns is None:
        triplets = next((layout for layout in TRIPLET_LAYOUTS if set(layout) <= set(available)), None)
        labelled = next((layout for layout in NLI_LAYOUTS if set(layout) <= set(available)), None)
        if triplets is not None:
            columns = list(triplets)
        elif labelled is not None:
            columns, label_column = list(labelled[:2]), labelled[2]
        else:
            raise ValueError(
                f"data.mode=nli: columns {available} are neither triplets {[list(x) for x in TRIPLET_LAYOUTS]} "
                f"nor NLI rows {[list(x) for x in NLI_LAYOUTS]}; set data.columns "
                "(and data.label_column for labelled rows)"
            )
    if label_column is None:  # triplet columns
        need = 3 if hard_negatives else 2
        if columns is None or len(columns) < need:
            raise ValueError(
                f"data.mode=nli needs data.columns = [premise, entailment{', contradiction' if need == 3 else ''}]"
            )
        _check_columns(columns[:need], available)
        return list(zip(*(_strings(table, c) for c in columns[:need])))
    if columns is None or len(columns) != 2:
        raise ValueError("data.mode=nli with data.label_column needs data.columns = [premise, hypothesis]")
    _check_columns([*columns, label_column], available)
    return nli_triplets(_strings(table, columns[0]), _strings(table, columns[1]), table[label_column], hard_negatives)


def nli_triplets(
    premises: Sequence[str], hypotheses: Sequence[str], labels: Sequence[Any], hard_negatives: bool = True
) -> list[tuple[str, ...]]:
    """(premise, entailment, contradiction) triplets from labelled NLI rows, grouped by premise.

    Each entailment hypothesis of a premise is paired with that premise's contradictions in turn (as
    SimCSE's ``nli_for_simcse.csv`` pairs them); premises without both are skipped. With
    ``hard_negatives=False``: (premise, entailment) pairs of every entailment. Labels are ``"entailment"`` /
    ``"contradiction"`` (SNLI's ``gold_label``; ``"-"`` = no consensus, ignored) or the hub's 0 / 2.
    """
    groups: dict[str, tuple[list[str], list[str]]] = {}
    for premise, hypothesis, label in zip(premises, hypotheses, labels):
        entail, contra = groups.setdefault(premise, ([], []))
        if label in _ENTAILMENT:
            entail.append(hypothesis)
        elif label in _CONTRADICTION:
            contra.append(hypothesis)
    rows: list[tuple[str, ...]] = []
    for premise, (entail, contra) in groups.items():
        if not hard_negatives:
            rows.extend((premise, e) for e in entail)
        elif contra:
            rows.extend((premise, e, contra[i % len(contra)]) for i, e in enumerate(entail))
    return rows


def _one_of(
    columns: list[str] | None, available: list[str], layouts: Sequence[tuple[str, ...]], count: int
) -> list[str]:
    """``columns`` (checked), else the first known layout present, else the only column (one-column modes)."""
    if columns is not None:
        if len(columns) != count:
            raise ValueError(f"data.columns must name {count} column(s) for this mode, got {columns}")
        _check_columns(columns, available)
        return columns
    found = next((list(layout) for layout in layouts if set(layout) <= set(available)), None)
    if found is None and count == 1 and len(available) == 1:
        found = available
    if found is None:
        raise ValueError(
            f"data.columns: name the {count} sentence column(s) among {available} "
            "(e.g. data.columns=[sentence,paraphrase])"
        )
    return found


def _check_columns(columns: Sequence[str], available: list[str]) -> None:
    missing = [c for c in columns if c not in available]
    if missing:
        raise ValueError(f"data.columns: {missing} not in the data's columns {available}")


def _strings(table: Any, column: str) -> list[str]:
    return ["" if value is None else str(value) for value in table[column]]
