"""Text modality: sentence embeddings from any Hugging Face encoder, trained SimCSE-style.

``TextAdapter`` (registered as ``text``) builds a :class:`TextEncoder` (``transformers.AutoModel`` +
``AutoTokenizer``, hub name or local folder; poolers ``cls``, ``cls_before_pooler``, ``mean``,
``first_last_avg``, ``top2_avg``) and the SimCSE views: unsupervised (dropout), pairs, and NLI triplets
with hard negatives. Gao et al. 2021, arXiv:2104.08821. Guide: ``docs/text.md``.

transformers and datasets are imported only when an encoder or a dataset is built, so registering the
adapter stays cheap.
"""

from mmcl.contract import ensure_torchvision_ops

ensure_torchvision_ops()  # before torchvision or transformers is imported (CPU-only torch: mmcl/contract/compat.py)

# isort: split

from mmcl.modalities.text.adapter import TextAdapter, TextDataConfig, TextModelConfig

__all__ = ["TextAdapter", "TextDataConfig", "TextModelConfig"]
