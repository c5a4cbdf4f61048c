"""Export a trained :class:`~modalities.text.encoder.TextEncoder` as a plain Hugging Face model folder.

``save_pretrained(encoder, tokenizer, folder)`` writes the transformer (``config.json``, safetensors) and the
tokenizer, so ``AutoModel.from_pretrained(folder)`` and ``AutoTokenizer.from_pretrained(folder)`` load it
with no mmcl code. As SimCSE's ``simcse_to_huggingface.py`` does, the ``cls`` pooler's MLP is written into
the model's own pooler layer (BERT/RoBERTa ``pooler.dense``), so the exported model's ``pooler_output`` is
the trained MLP: SimCSE's ``evaluation.py --pooler cls`` evaluates it as trained, and ``cls_before_pooler``
the bare [CLS] vector. ``mmcl_sentence_embedding.json`` records the pooler to evaluate with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmcl.modalities.text.encoder import pooler_dense

#: SimCSE ``evaluation.py`` ``--pooler`` name of each mmcl evaluation pooler.
SIMCSE_POOLER = {
    "cls": "cls",
    "cls_before_pooler": "cls_before_pooler",
    "mean": "avg",
    "first_last_avg": "avg_first_last",
    "top2_avg": "avg_top2",
}


def save_pretrained(encoder: Any, tokenizer: Any, folder: str | Path) -> Path:
    """Write ``encoder``'s transformer and ``tokenizer`` to ``folder`` with ``save_pretrained``; returns it.

    Call it on the unwrapped encoder, in the main process only.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    transformer = encoder.transformer
    state = transformer.state_dict()
    mlp, dense = encoder.mlp, pooler_dense(transformer)
    mlp_exported = mlp is not None and dense is not None
    if mlp_exported:
        prefix = next(name for name, module in transformer.named_modules() if module is dense)
        state[f"{prefix}.weight"] = mlp.dense.weight.detach()
        state[f"{prefix}.bias"] = mlp.dense.bias.detach()
    state = {key: value.detach().contiguous() for key, value in state.items()}
    transformer.save_pretrained(folder, state_dict=state)
    tokenizer.save_pretrained(folder)
    evaluation_pooler = (
        "cls_before_pooler" if encoder.pooler_name == "cls" and encoder.mlp_only_train else encoder.pooler_name
    )
    info = {
        "pooler": encoder.pooler_name,
        "mlp_only_train": encoder.mlp_only_train,
        "evaluation_pooler": evaluation_pooler,
        "simcse_evaluation_pooler": SIMCSE_POOLER[evaluation_pooler],
        "mlp_in_pooler_layer": mlp_exported,
        "max_length": encoder.eval_max_length,
    }
    (folder / "mmcl_sentence_embedding.json").write_text(json.dumps(info, indent=2) + "\n")
    return folder
