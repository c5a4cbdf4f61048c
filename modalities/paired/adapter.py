"""The ``paired`` modality: two towers, each a registered modality's encoder, trained on pairs ``(item_a, item_b)``.

CLIP's setting (Radford et al. 2021, arXiv:2103.00020): tower ``a`` embeds one modality, tower ``b`` another, and a
pair loss pulls each pair together in a shared space. A tower is any registered modality (``graph``, ``text``,
``vision``, a plug-in's) with that modality's own model options, validated by its ``ModelConfig``::

    modality: paired
    model:
      towers:
        a: {modality: graph, model: {encoder: gin, hidden_dim: 64, head_dim: 384}}
        b: {modality: text, model: {name_or_path: ${MINILM}, pooler: mean}}
    data:
      pairs: molecule_text               # a registered paired source (sources.py)
      towers: {a: {source: molecules, dataset: nci_first_5k, node_features: x}}   # each tower's own data section
      test_size: 1000                    # held out for the retrieval task, drawn with split_seed
    loss: {name: clip, negatives: cross}  # the default: CLIP's loss with a learned temperature

Views: a batch of ``B`` pairs is one :class:`PairInputs` (each tower's items collated by that tower's
``collate_eval``, un-augmented), and the encoder's ``forward`` returns ``cat([tower_a(inputs.a), tower_b(inputs.b)])``,
``(2B, d)``: ``n_views=2`` view-major rows, so the engine and every pair loss of the core work unchanged
(``negatives: cross`` contrasts a with b only, CLIP; ``within`` and ``both``: :mod:`mmcl.losses.clip`).

Embeddings for evaluation: each tower's projection-head output, the loss's shared space (``features`` and
``forward`` give the same ``(2n, d)`` rows; the backbones' own features have per-tower widths and live in unrelated
spaces). The ``retrieval`` task normalises them and ranks by cosine, as CLIP does. Both towers must project to the
same width, checked when the encoder is built.
"""

from __future__ import annotations

import inspect
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from mmcl.contract import Encoder, ModalityAdapter, PositiveInt, Seed, TrainBatch
from mmcl.contract.export import MANIFEST, read_manifest, write_manifest
from mmcl.contract.names import inside
from mmcl.contract.options import build_dataclass
from mmcl.modalities import modality_class, register_modality
from mmcl.modalities.paired.sources import PAIR_SOURCES, PairSource

TOWERS = ("a", "b")


@dataclass
class PairedModelConfig:
    """``model`` section: ``towers.a`` and ``towers.b``, each ``{modality: NAME, model: {...that modality's...}}``."""

    towers: dict = field(default_factory=dict)


@dataclass
class PairedDataConfig:
    """``data`` section: the paired source, each tower's own data section, and the held-out split."""

    pairs: str = "molecule_text"  # a registered paired source (register_pairs)
    options: dict = field(default_factory=dict)  # the source's keyword options
    towers: dict = field(default_factory=dict)  # {a: {...tower a's data section...}, b: {...}}
    test_size: PositiveInt = 1000  # pairs held out for evaluation (retrieval)
    split_seed: Seed = 0  # the seed of the train/test split


@dataclass
class PairInputs:
    """One batch of pairs as the encoder takes it: tower ``a``'s collated inputs and tower ``b``'s."""

    a: Any
    b: Any

    def to(self, device: Any, **kwargs: Any) -> PairInputs:
        return PairInputs(*(x.to(device) if hasattr(x, "to") else x for x in (self.a, self.b)))


class PairedTowers(nn.Module):
    """``forward(PairInputs)`` -> ``cat([a(inputs.a), b(inputs.b)])`` ``(2B, d)``: each tower's loss embeddings."""

    def __init__(self, a: nn.Module, b: nn.Module) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, inputs: PairInputs) -> Tensor:
        za, zb = self.a(inputs.a), self.b(inputs.b)
        if za.shape[1] != zb.shape[1]:
            raise ValueError(f"the towers' embeddings differ in width: a gives {za.shape[1]}, b gives {zb.shape[1]}")
        return torch.cat([za, zb.to(za.dtype)])


class PairedEncoder(Encoder):
    """Two towers behind the :class:`~mmcl.contract.Encoder` interface; ``tower("a")`` is tower a's own encoder."""

    def __init__(self, a: nn.Module, b: nn.Module) -> None:
        super().__init__(PairedTowers(a, b), nn.Identity())

    def tower(self, name: str) -> nn.Module:
        return getattr(self.backbone, name)


class Pairs(Dataset):
    """Items ``(item_a, item_b)`` of the pairs at ``indices`` (``with_index``: ``((item_a, item_b), i)``)."""

    def __init__(self, source: PairSource, indices: list[int], with_index: bool = False) -> None:
        self.source, self.indices, self.with_index = source, indices, with_index

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> Any:
        i = self.indices[position]
        pair = (self.source.items_a[i], self.source.items_b[i])
        return (pair, position) if self.with_index else pair


@register_modality
class PairedAdapter(ModalityAdapter):
    """Two towers (any registered modalities) on paired data; CLIP's loss and the retrieval task by default."""

    name: ClassVar[str] = "paired"
    ModelConfig: ClassVar[type] = PairedModelConfig
    DataConfig: ClassVar[type] = PairedDataConfig
    default_eval_tasks: ClassVar[tuple[str, ...]] = ("retrieval",)
    default_loss: ClassVar[str] = "clip"

    def __init__(self, model: PairedModelConfig, data: PairedDataConfig) -> None:
        super().__init__(model, data)
        extra = sorted(set(data.towers) - set(TOWERS))
        if extra:
            raise ValueError(f"data.towers has key(s) {extra}; the towers are {list(TOWERS)}")
        self.towers = {name: _tower_adapter(name, model.towers, data.towers.get(name) or {}) for name in TOWERS}
        self._check_source_options()
        self._source: PairSource | None = None
        self._split: dict[str, list[int]] | None = None

    def _check_source_options(self) -> None:
        loader = PAIR_SOURCES.get(self.data_config.pairs)  # an unknown name fails here, listing the registered ones
        parameters = list(inspect.signature(loader).parameters.values())[2:]
        valid = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        unknown = sorted(set(self.data_config.options) - valid)
        if unknown and not any(p.kind == p.VAR_KEYWORD for p in parameters):
            raise ValueError(f"data.options: unknown option(s) {unknown} for data.pairs={self.data_config.pairs!r}; "
                             f"valid: {sorted(valid)}")  # fmt: skip

    @property
    def source(self) -> PairSource:
        if self._source is None:
            loader = PAIR_SOURCES.get(self.data_config.pairs)
            self._source = loader(self.towers["a"], self.towers["b"], **self.data_config.options)
        return self._source

    @property
    def split(self) -> dict[str, list[int]]:
        """``{"train": [...], "test": [...]}``: pair indices, the test ones drawn with ``data.split_seed``."""
        if self._split is None:
            n, size = len(self.source.items_a), self.data_config.test_size
            if size > n - 2:
                raise ValueError(f"data.test_size={size} leaves fewer than 2 of the {n} pairs for training; "
                                 f"set data.test_size below {n - 1}")  # fmt: skip
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.data_config.split_seed)).tolist()
            self._split = {"train": sorted(order[size:]), "test": sorted(order[:size])}
        return self._split

    def build_encoder(self) -> Encoder:
        return self._checked(PairedEncoder(*(self.towers[name].build_encoder() for name in TOWERS)))

    def build_random_encoder(self) -> Encoder:
        return self._checked(PairedEncoder(*(self.towers[name].build_random_encoder() for name in TOWERS)))

    @torch.no_grad()
    def _checked(self, encoder: PairedEncoder) -> PairedEncoder:
        """Refuse towers whose projections differ in width (one forward of two training pairs, in eval mode)."""
        inputs, _ = self.collate_eval([(pair, 0) for pair in Pairs(self.source, self.split["train"][:2])])
        widths = {name: encoder.tower(name).eval()(getattr(inputs, name)).shape[1] for name in TOWERS}
        encoder.train()
        if widths["a"] != widths["b"]:
            towers = self.model_config.towers
            raise ValueError(
                f"the towers' projections must have the same width: model.towers.a ({towers['a']['modality']}) gives "
                f"{widths['a']}, model.towers.b ({towers['b']['modality']}) gives {widths['b']}; set one tower's "
                f"projection width to the other's (a graph tower: model.towers.<a|b>.model.head_dim={widths['b']})"
            )
        return encoder

    def train_dataset(self) -> Dataset:
        return Pairs(self.source, self.split["train"])

    def export(self, encoder: Encoder, folder: Path) -> Path | None:
        """Each tower in its own modality's export format, in ``folder/a`` and ``folder/b`` (a sentence-transformers
        folder for a text tower, ...), and the manifest naming them; None when a tower's modality exports nothing."""
        folder = Path(folder)
        exported = {name: self.towers[name].export(encoder.tower(name), folder / name) for name in TOWERS}
        if any(path is None for path in exported.values()):
            shutil.rmtree(folder, ignore_errors=True)
            return None
        modalities = {name: self.model_config.towers[name]["modality"] for name in TOWERS}
        write_manifest(
            folder, self.name, towers={name: {"folder": name, "modality": modalities[name]} for name in TOWERS}
        )
        return folder

    @classmethod
    def load_export(cls, folder: Path) -> Encoder:
        """Both towers, each read back by its own modality (:meth:`export`)."""
        towers = read_manifest(folder)["towers"]
        encoders = []
        for name in TOWERS:
            tower = inside(folder, towers[name]["folder"], f"{MANIFEST}'s towers.{name}.folder")
            encoders.append(modality_class(read_manifest(tower)["modality"]).load_export(tower))
        return PairedEncoder(*encoders).eval()

    def collate_train(self, items: list) -> TrainBatch:
        """``B`` pairs -> one :class:`PairInputs`, each tower's items through its own ``collate_eval``."""
        return TrainBatch(self._collate(items), n_views=2)

    def _collate(self, pairs: list) -> PairInputs:
        columns = list(zip(*pairs))
        inputs = [self.towers[name].collate_eval([(item, 0) for item in column])[0] for name, column in
                  zip(TOWERS, columns)]  # fmt: skip
        return PairInputs(*inputs)

    def eval_datasets(self) -> dict[str, Dataset]:
        """``"test"``: the held-out pairs, items ``((item_a, item_b), position)`` (the retrieval task)."""
        return {"test": Pairs(self.source, self.split["test"], with_index=True)}

    def collate_eval(self, items: list) -> tuple[PairInputs, Tensor]:
        return self._collate([item[0] for item in items]), torch.tensor([item[1] for item in items])


def _tower_adapter(name: str, towers: dict, data: dict) -> ModalityAdapter:
    """Tower ``name``'s adapter from ``model.towers.<name>`` (``modality`` and ``model``) and ``data.towers.<name>``."""
    key = f"model.towers.{name}"
    tower = towers.get(name)
    if not isinstance(tower, dict) or "modality" not in tower:
        raise ValueError(f"{key} must be a mapping with 'modality' (graph, text, vision, ...) and optionally 'model', "
                         f"got {tower!r}; e.g. {key}={{modality: graph, model: {{head_dim: 384}}}}")  # fmt: skip
    unknown = sorted(set(tower) - {"modality", "model"})
    if unknown:
        raise ValueError(f"{key} has unknown key(s) {unknown}; valid: ['modality', 'model'] (its data section is "
                         f"data.towers.{name})")  # fmt: skip
    if tower["modality"] == PairedAdapter.name:
        raise ValueError(f"{key}.modality=paired: a tower is one modality (graph, text, vision, ...)")
    cls = modality_class(tower["modality"])
    model = build_dataclass(cls.ModelConfig, tower.get("model") or {}, f"{key}.model")
    return cls(model, build_dataclass(cls.DataConfig, data, f"data.towers.{name}"))
