"""Export a trained :class:`~modalities.text.encoder.TextEncoder` as a complete sentence-transformers folder.

``export_sentence_transformer(encoder, folder)`` writes what ``SentenceTransformer(folder)`` reads, so that
sentence-transformers, MTEB and every tool built on them embed sentences exactly as mmcl evaluated them::

    config.json, model.safetensors, tokenizer files   the transformer and tokenizer (save_pretrained), so
                                                      AutoModel/AutoTokenizer.from_pretrained(folder) load it too
    sentence_bert_config.json                         max_seq_length (the run's evaluation length), do_lower_case,
                                                      and output_hidden_states for the layer-averaging poolers
    modules.json                                      the module pipeline below
    1_WeightedLayerPooling/                           first_last_avg / top2_avg: the two layers' average
    N_Pooling/config.json                             cls (cls, cls_before_pooler) or mean tokens
    N_Dense/                                          cls with its MLP at evaluation: SimCSE's dense + tanh
    N_Normalize/                                      unit-length embeddings (mmcl scores by cosine)
    config_sentence_transformers.json                 similarity_fn_name "cosine", no prompts
    mmcl_export.json                                  the pooler and MLP settings mmcl.load_encoder rebuilds from

The legacy configuration keys (``word_embedding_dimension``, ``pooling_mode_*_token``) are the ones the hub's
sentence-transformers models use, read by every sentence-transformers release from 3.0 on.

As SimCSE's ``simcse_to_huggingface.py`` does, the ``cls`` pooler's MLP is also written into the model's own
pooler layer (BERT/RoBERTa ``pooler.dense``), so the exported model's ``pooler_output`` is the trained MLP:
SimCSE's ``evaluation.py --pooler cls`` evaluates it as trained, and ``cls_before_pooler`` the bare [CLS] vector.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mmcl.contract.export import MANIFEST, load_weights, read_manifest, save_weights, write_manifest
from mmcl.contract.names import inside
from mmcl.modalities.text.encoder import TextEncoder, load_pretrained, pooler_dense

#: SimCSE ``evaluation.py`` ``--pooler`` name of each mmcl evaluation pooler.
SIMCSE_POOLER = {
    "cls": "cls",
    "cls_before_pooler": "cls_before_pooler",
    "mean": "avg",
    "first_last_avg": "avg_first_last",
    "top2_avg": "avg_top2",
}
#: The hidden states (0: the embeddings, L: the last layer) each layer-averaging pooler averages.
_AVERAGED_LAYERS = {"first_last_avg": lambda layers: (1, layers), "top2_avg": lambda layers: (layers - 1, layers)}
_MODULES = "sentence_transformers.models."
#: Where the ``cls`` MLP is kept when neither the pooler layer nor a Dense module holds it (a training-only MLP on
#: a model without a pooler layer): for mmcl.load_encoder only.
CLS_MLP_FILE = "cls_mlp.safetensors"


def evaluation_pooler(encoder: TextEncoder) -> str:
    """The pooler mmcl evaluates with: ``cls`` with a training-only MLP is evaluated as the bare [CLS] vector."""
    return "cls_before_pooler" if encoder.pooler_name == "cls" and encoder.mlp_only_train else encoder.pooler_name


def export_sentence_transformer(
    encoder: TextEncoder, folder: str | Path, normalize: bool = True, base_model: str | None = None
) -> Path:
    """Write ``encoder`` (its transformer, tokenizer, evaluation pooling) to ``folder`` as a sentence-transformers
    model (module docstring); returns the folder. ``normalize`` appends a Normalize module. Call it on the
    unwrapped encoder, in the main process only."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    mlp_in_pooler_layer = _save_transformer(encoder, folder)
    pooler = evaluation_pooler(encoder)
    hidden = encoder.transformer.config.hidden_size
    modules: list[tuple[str, str]] = [("", "Transformer")]
    transformer_config: dict[str, Any] = {"max_seq_length": encoder.eval_max_length, "do_lower_case": False}
    if pooler in _AVERAGED_LAYERS:
        transformer_config["config_args"] = {"output_hidden_states": True}  # ST passes the layers on only then
        modules.append(_layer_average(folder, len(modules), pooler, encoder.transformer.config))
    modules.append(_pooling(folder, len(modules), "cls" if pooler.startswith("cls") else "mean", hidden))
    mlp_file = None
    if pooler == "cls":  # the MLP is part of the evaluation embedding
        modules.append(_dense(folder, len(modules), encoder.mlp))
        mlp_file = f"{modules[-1][0]}/model.safetensors"
    elif encoder.mlp is not None and not mlp_in_pooler_layer:
        mlp_file = str(save_weights(encoder.mlp, folder / CLS_MLP_FILE).name)
    if normalize:
        modules.append(_module_folder(folder, len(modules), "Normalize"))
    _write_json(folder / "sentence_bert_config.json", transformer_config)
    _write_json(folder / "modules.json", [
        {"idx": i, "name": str(i), "path": path, "type": _MODULES + kind} for i, (path, kind) in enumerate(modules)
    ])  # fmt: skip
    _write_json(folder / "config_sentence_transformers.json",
                {"prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"})  # fmt: skip
    write_manifest(
        folder,
        "text",
        pooler=encoder.pooler_name,
        mlp_only_train=encoder.mlp_only_train,
        evaluation_pooler=pooler,
        simcse_evaluation_pooler=SIMCSE_POOLER[pooler],
        mlp_in_pooler_layer=mlp_in_pooler_layer,
        mlp_file=mlp_file,
        max_length=encoder.eval_max_length,
        normalize=normalize,
        base_model=base_model,
    )
    return folder


def load_encoder(folder: str | Path) -> TextEncoder:
    """The :class:`TextEncoder` of an export folder (eval mode), its MLP restored from where the export put it."""
    manifest = read_manifest(folder)
    in_pooler_layer = manifest["mlp_in_pooler_layer"]
    transformer, tokenizer = load_pretrained(str(folder), local_files_only=True)
    encoder = TextEncoder(transformer, tokenizer, manifest["pooler"], manifest["mlp_only_train"],
                          "pretrained" if in_pooler_layer else "random", manifest["max_length"])  # fmt: skip
    if encoder.mlp is not None and not in_pooler_layer:
        state = load_weights(inside(folder, manifest["mlp_file"], f"{MANIFEST}'s mlp_file"))
        encoder.mlp.dense.load_state_dict({key.split(".")[-1]: value for key, value in state.items()})
    return encoder.eval()


def _save_transformer(encoder: TextEncoder, folder: Path) -> bool:
    """The transformer (with the ``cls`` MLP in its pooler layer, where it has one) and the tokenizer, with
    ``save_pretrained``; returns whether the MLP went into the pooler layer."""
    transformer = encoder.transformer
    state = transformer.state_dict()
    mlp, dense = encoder.mlp, pooler_dense(transformer)
    in_pooler_layer = mlp is not None and dense is not None
    if in_pooler_layer:
        prefix = next(name for name, module in transformer.named_modules() if module is dense)
        state[f"{prefix}.weight"] = mlp.dense.weight.detach()
        state[f"{prefix}.bias"] = mlp.dense.bias.detach()
    state = {key: value.detach().contiguous() for key, value in state.items()}
    transformer.save_pretrained(folder, state_dict=state)
    encoder.tokenizer.save_pretrained(folder)
    return in_pooler_layer


def _module_folder(folder: Path, index: int, kind: str) -> tuple[str, str]:
    path = f"{index}_{kind}"
    (folder / path).mkdir(exist_ok=True)
    return path, kind


def _layer_average(folder: Path, index: int, pooler: str, config: Any) -> tuple[str, str]:
    """WeightedLayerPooling weighting the two averaged hidden states 1 each (all others 0)."""
    path, kind = _module_folder(folder, index, "WeightedLayerPooling")
    layers = config.num_hidden_layers
    chosen = _AVERAGED_LAYERS[pooler](layers)
    start = min(chosen)
    weights = torch.zeros(layers + 1 - start)
    for layer in chosen:
        weights[layer - start] += 1.0
    settings = {"word_embedding_dimension": config.hidden_size, "layer_start": start, "num_hidden_layers": layers}
    _write_json(folder / path / "config.json", settings)
    save_weights({"layer_weights": weights}, folder / path / "model.safetensors")
    return path, kind


def _pooling(folder: Path, index: int, mode: str, hidden: int) -> tuple[str, str]:
    path, kind = _module_folder(folder, index, "Pooling")
    _write_json(folder / path / "config.json", {
        "word_embedding_dimension": hidden,
        "pooling_mode_cls_token": mode == "cls",
        "pooling_mode_mean_tokens": mode == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    })  # fmt: skip
    return path, kind


def _dense(folder: Path, index: int, mlp: torch.nn.Module) -> tuple[str, str]:
    """SimCSE's MLP (``tanh(W x + b)``) as a Dense module: ``linear.weight``, ``linear.bias``."""
    path, kind = _module_folder(folder, index, "Dense")
    linear = mlp.dense
    _write_json(folder / path / "config.json", {"in_features": linear.in_features, "out_features": linear.out_features,
                "bias": True, "activation_function": "torch.nn.modules.activation.Tanh"})  # fmt: skip
    save_weights({"linear.weight": linear.weight, "linear.bias": linear.bias}, folder / path / "model.safetensors")
    return path, kind


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def usage(folder: str | Path) -> str:
    """The model card's Markdown: sentence-transformers, MTEB and plain transformers."""
    manifest = read_manifest(folder)
    pooler = manifest["evaluation_pooler"]
    return f"""With sentence-transformers (the folder holds the pooling, MLP and normalisation mmcl evaluated):

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer({str(folder)!r})
embeddings = model.encode(["A man is playing a guitar.", "Someone plays an instrument."])
print(model.similarity(embeddings, embeddings))
```

With MTEB, unchanged (MTEB evaluates a local folder through sentence-transformers; `mteb run -m NAME` takes the
name once the folder is on the Hugging Face Hub):

```python
import mteb
from sentence_transformers import SentenceTransformer

results = mteb.evaluate(SentenceTransformer({str(folder)!r}), mteb.get_tasks(tasks=["STSBenchmark"]))
```

With mmcl (`encoder.encode(sentences)` gives the evaluation embeddings, before normalisation):

```python
import mmcl

encoder = mmcl.load_encoder({str(folder)!r})
```

The transformer alone loads with `transformers.AutoModel.from_pretrained({str(folder)!r})`; mmcl's pooler is
`{pooler}` (SimCSE's `evaluation.py --pooler {manifest["simcse_evaluation_pooler"]}`), with at most
{manifest["max_length"]} tokens per sentence."""
