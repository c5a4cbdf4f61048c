"""The ``text`` modality adapter: SimCSE-style sentence-embedding pretraining on any Hugging Face encoder.

Gao, Yao & Chen 2021, "SimCSE: Simple Contrastive Learning of Sentence Embeddings", arXiv:2104.08821.

Views, view-major in one ``BatchEncoding`` so the encoder runs once per step (``B`` = batch size):

* ``data.mode=unsup``: the batch's ``B`` sentences tokenized once and repeated, ``(2B, L)``; dropout in the
  transformer makes the two passes differ (the engine reseeds torch's RNG each step, so it is reproducible).
* ``data.mode=pairs``: ``[anchors; positives]``, ``(2B, L)``.
* ``data.mode=nli``: ``[premises; entailments; contradictions]``, ``(3B, L)`` with ``has_negatives=True``: the
  engine passes the last ``B`` rows to the loss as ``negatives`` (SimCSE's supervised hard negatives); with
  ``data.hard_negatives=false`` only ``[premises; entailments]``.

All rows of a batch share one padding length (tokenized in one call), so the views line up.
Evaluation is the ``sts`` task (``tasks/sts.py``), which embeds sentences through :meth:`TextEncoder.encode`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset

from mmcl.contract import ModalityAdapter, ModelCard, PositiveInt, TrainBatch, Validation
from mmcl.modalities import register_modality
from mmcl.modalities.text.data import TokenizedTuples, build_rows, load_table, tokenize_rows

PoolerName = Literal[
    "cls", "cls_before_pooler", "mean", "first_last_avg", "top2_avg", "avg", "avg_first_last", "avg_top2"
]


@dataclass
class TextModelConfig:
    """``model`` section of a text config."""

    name_or_path: str = "bert-base-uncased"  # hub name, or a local folder (offline)
    pooler: PoolerName = "cls"
    mlp_only_train: bool = True  # cls: the MLP only in training, the bare [CLS] at evaluation (SimCSE unsup)
    mlp_init: Literal["random", "pretrained"] = "random"  # cls MLP: fresh (SimCSE) or the model's own pooler
    max_length: PositiveInt = 32  # training tokens per sentence (SimCSE: 32)
    eval_max_length: PositiveInt | None = None  # None: the tokenizer's model_max_length (512 for BERT)
    local_files_only: bool = False  # never ask the hub (also set by HF_HUB_OFFLINE=1)


@dataclass
class TextDataConfig:
    """``data`` section of a text config (the modes' column needs: :mod:`mmcl.modalities.text.data`)."""

    mode: Literal["unsup", "pairs", "nli"] = "unsup"
    path: str | list[str] | None = None  # local .txt (one sentence per line), .csv, .tsv, .json, .jsonl; or a list
    dataset: str | None = None  # hub dataset name (online), instead of path
    dataset_config: str | None = None
    split: str = "train"  # hub split
    format: Literal["auto", "text", "csv", "tsv", "json"] = "auto"
    columns: list[str] | None = None  # unsup: [sentence]; pairs: [a, b]; nli: [premise, entailment, contradiction]
    label_column: str | None = None  # nli from labelled rows: columns = [premise, hypothesis]
    hard_negatives: bool = True  # nli: feed the contradictions to the loss as negatives
    max_samples: PositiveInt | None = None  # keep the first N rows
    cache_dir: str | None = None  # Hugging Face datasets' cache (default ~/.cache/huggingface/datasets)


@register_modality
class TextAdapter(ModalityAdapter):
    """Sentences: ``TextEncoder`` + SimCSE views; evaluation by the ``sts`` task."""

    name: ClassVar[str] = "text"
    ModelConfig: ClassVar[type] = TextModelConfig
    DataConfig: ClassVar[type] = TextDataConfig
    default_eval_tasks: ClassVar[tuple[str, ...]] = ("sts",)
    dropout_views: ClassVar[bool] = True  # unsup: the two views of a sentence differ by dropout only
    #: SimCSE's checkpoint selection: STS-B dev Spearman x 100 (files under ``eval.sts.root``).
    validation: ClassVar[Validation | None] = Validation(
        "sts", {"split": "dev", "tasks": ["STSBenchmark"]}, metric="STSBenchmark.spearman", name="stsb_dev_spearman"
    )

    def __init__(self, model: TextModelConfig, data: TextDataConfig) -> None:
        super().__init__(model, data)
        self._tokenizer: Any = None
        self._train: TokenizedTuples | None = None

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from mmcl.modalities.text.encoder import load_tokenizer

            self._tokenizer = load_tokenizer(self.model_config.name_or_path, self.model_config.local_files_only)
        return self._tokenizer

    def build_encoder(self, random_init: bool = False):
        from mmcl.modalities.text.encoder import TextEncoder, load_pretrained

        model = self.model_config
        transformer, tokenizer = load_pretrained(model.name_or_path, model.local_files_only, random_init)
        if self._tokenizer is None:
            self._tokenizer = tokenizer
        return TextEncoder(
            transformer, self.tokenizer, model.pooler, model.mlp_only_train, model.mlp_init, model.eval_max_length
        )

    def build_random_encoder(self):
        """The architecture of ``model.name_or_path`` with freshly initialised weights (``AutoModel.from_config``)."""
        return self.build_encoder(random_init=True)

    def train_dataset(self) -> Dataset:
        """The pretraining tuples, tokenized once (not per step; cached per tokenizer and ``model.max_length``)."""
        if self._train is None:
            data = self.data_config
            table = load_table(data.path, data.dataset, data.dataset_config, data.split, data.format, data.cache_dir)
            rows = build_rows(table, data.mode, data.columns, data.label_column, data.hard_negatives, data.max_samples)
            self._train = TokenizedTuples(tokenize_rows(rows, self.tokenizer, self.model_config.max_length))
        return self._train

    def collate_train(self, items: list) -> TrainBatch:
        """Pad a batch of tokenized tuples into one view-major ``BatchEncoding`` ``(V*B, L)`` (module docstring)."""
        width = len(items[0])
        if width == 1:  # unsup: the sentence twice; the two passes differ only by dropout
            ids = [item[0] for item in items]
            return TrainBatch(self._pad(ids + ids), n_views=2)
        columns = list(zip(*items))
        return TrainBatch(self._pad([ids for column in columns for ids in column]), n_views=2, has_negatives=width == 3)

    def _pad(self, ids: list[list[int]]) -> Any:
        return self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")

    def eval_datasets(self) -> dict[str, Dataset]:
        return {}  # the sts task reads its own files (eval.sts.root)

    def collate_eval(self, items: list) -> tuple[Any, Tensor]:
        """``(sentence, label)`` items -> ``(BatchEncoding (n, L), labels (n,))``, for classification-style tasks."""
        sentences, labels = zip(*items)
        return self._tokenize(list(sentences), self.model_config.eval_max_length), torch.as_tensor(labels)

    def _tokenize(self, sentences: list[str], max_length: int | None) -> Any:
        return self.tokenizer(sentences, padding=True, truncation=True, max_length=max_length, return_tensors="pt")

    def export(self, encoder, folder: str | Path) -> Path:
        """A complete sentence-transformers folder (:mod:`mmcl.modalities.text.export`), which
        ``AutoModel.from_pretrained`` also loads. Normalised: mmcl scores sentence embeddings by their cosine (the
        ``sts`` task), so tools that take dot products of the exported embeddings score what mmcl scored."""
        from mmcl.modalities.text.export import export_sentence_transformer

        return export_sentence_transformer(encoder, folder, normalize=True, base_model=self.model_config.name_or_path)

    @classmethod
    def load_export(cls, folder: str | Path):
        from mmcl.modalities.text.export import load_encoder

        return load_encoder(folder)

    def model_card(self, folder: Path) -> ModelCard:
        from mmcl.modalities.text.export import usage

        tags = ["sentence-transformers", "feature-extraction", "sentence-similarity", "mmcl"]
        metadata = {"library_name": "sentence-transformers", "pipeline_tag": "sentence-similarity", "tags": tags}
        base = self.model_config.name_or_path
        if not Path(base).expanduser().exists():  # a hub name (a local folder is no base_model others can find)
            metadata["base_model"] = base
        return ModelCard(metadata=metadata, usage=usage(folder))
