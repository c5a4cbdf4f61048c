"""Runs others can compare and use: trackers with the hyperparameters, TensorBoard's HParams view with the evaluation
results, the model card beside the export, exports loaded back, and the weights-only final checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mmcl
from mmcl.engine.config import load_config
from mmcl.engine.trainer import pretrain
from mmcl.runs import checkpoints as checkpoint
from mmcl.runs import folder as runs
from tests.test_engine import tiny


def _session_groups(logdir: Path) -> dict[str, tuple[dict, dict]]:
    """What TensorBoard's HParams tab lists for ``logdir``, through the plugin's own backend: ``{run: (hparams,
    metrics)}``, as ``tensorboard --logdir`` serves it."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    plugin_context = backend_context.Context(
        base_plugin.TBContext(logdir=str(logdir), data_provider=provider, multiplexer=multiplexer)
    )
    statuses = [api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE, api_pb2.STATUS_RUNNING]
    request = api_pb2.ListSessionGroupsRequest(start_index=0, slice_size=100, allowed_statuses=statuses)
    response = list_session_groups.Handler(context.RequestContext(), plugin_context, "", request).run()
    groups = {}
    for group in response.session_groups:
        hparams = {key: value.number_value if value.HasField("number_value") else value.string_value
                   for key, value in group.hparams.items()}  # fmt: skip
        metrics = {metric.name.tag: metric.value for metric in group.metric_values}
        groups[group.name.split("/")[0]] = (hparams, metrics)
    return groups


def test_tensorboard_hparams_view_compares_runs_with_their_evaluations(tmp_path):
    """Two runs with different temperatures, one evaluated: TensorBoard's HParams tab lists both with their
    hyperparameters and final loss, and the evaluated one with its kNN accuracy (eval/knn/top1)."""
    for name, temperature in (("t05", 0.5), ("t02", 0.2)):
        pretrain(load_config(tiny(loss={"temperature": temperature})), tmp_path / name)
    results = mmcl.evaluate(tmp_path / "t02", tasks=["knn"])
    groups = _session_groups(tmp_path)
    assert set(groups) == {"t05", "t02"}
    assert groups["t05"][0]["loss.temperature"] == 0.5 and groups["t02"][0]["loss.temperature"] == 0.2
    assert groups["t02"][0]["model.backbone"] == "small_cnn" and groups["t02"][0]["train.max_steps"] == 6
    assert groups["t02"][1]["eval/knn/top1"] == pytest.approx(results["knn"]["top1"])
    assert "eval/knn/top1" not in groups["t05"][1] and "loss" in groups["t05"][1]
    baseline = mmcl.evaluate(tmp_path / "t05", tasks=["knn"], random_init=True)
    assert _session_groups(tmp_path)["t05"][1]["eval_random_init/knn/top1"] == pytest.approx(baseline["knn"]["top1"])


def test_loggers_take_any_accelerate_tracker_and_none(tmp_path):
    """train.loggers: an Accelerate tracker of your own receives the hyperparameters and the curves; [] writes no
    TensorBoard folder; unknown and uninstalled trackers are refused before the run folder exists."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, GeneralTracker, get_available_trackers

    tracking_module = pytest.importorskip("accelerate.tracking")
    if not hasattr(tracking_module, "register_tracker_class"):
        pytest.skip("this Accelerate cannot register trackers")
    received: dict[str, list] = {"config": [], "log": []}

    class Recorder(GeneralTracker):
        name, requires_logging_directory, main_process_only = "mmcl_test_recorder", False, True

        def __init__(self, run_name: str, **kwargs) -> None:
            super().__init__()

        @property
        def tracker(self):
            return received

        def store_init_configuration(self, values: dict) -> None:
            received["config"].append(values)

        def log(self, values: dict, step: int | None = None, **kwargs) -> None:
            received["log"].append((step, values))

    tracking_module.register_tracker_class(Recorder)
    try:
        run = pretrain(load_config(tiny(train={"loggers": ["mmcl_test_recorder"]})), tmp_path / "recorded")
    finally:
        LOGGER_TYPE_TO_CLASS.pop("mmcl_test_recorder")
    assert received["config"] == [
        {**received["config"][0], "loss.temperature": 0.5, "train.loggers": '["mmcl_test_recorder"]'}
    ]
    assert [step for step, _ in received["log"]] == [1, 2, 3, 4, 5, 6] and "loss" in received["log"][0][1]
    assert not (run / "tensorboard").exists()
    silent = pretrain(load_config(tiny(train={"loggers": []})), tmp_path / "silent")
    assert not (silent / "tensorboard").exists() and len(mmcl.Run(silent).metrics()) == 6
    with pytest.raises(ValueError, match=r"train.loggers: 'tensorbord' is not one of Accelerate's trackers \["):
        pretrain(load_config(tiny(train={"loggers": ["tensorbord"]})), tmp_path / "typo")
    missing = sorted({"aim", "clearml", "dvclive", "swanlab"} - {str(t) for t in get_available_trackers()})
    if missing:
        with pytest.raises(ValueError, match=f"train.loggers: {missing[0]} is not installed; pip install {missing[0]}"):
            pretrain(load_config(tiny(train={"loggers": [missing[0]]})), tmp_path / "missing")
    assert not (tmp_path / "typo").exists() and not (tmp_path / "missing").exists()


def test_wandb_logs_offline_without_credentials(tmp_path, monkeypatch):
    """train.loggers=[wandb] on a machine without wandb credentials: an offline run in RUN/wandb holding the
    hyperparameters and the curves, no network needed."""
    pytest.importorskip("wandb", reason="pip install wandb")
    for variable in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    run = pretrain(load_config(tiny(train={"loggers": ["wandb", "tensorboard"]})), tmp_path / "run")
    records = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(records) == 1
    data = records[0].read_bytes()
    assert b"loss.temperature" in data and b"neg_cos_mean" in data
    assert any((run / "tensorboard").glob("events.out.tfevents.*"))


def test_model_card_and_export_follow_the_run_and_its_evaluations(tmp_path):
    """RUN/model holds the final weights (loaded back equal to the checkpoint's), and its README.md the training and,
    once evaluated, the results."""
    run = mmcl.Run(pretrain(load_config(tiny()), tmp_path / "run"))
    card = (run.folder / "model" / "README.md").read_text()
    assert "`nt_xent` temperature=0.5" in card and "6 steps, batch 32 x 1 process(es), seed 3" in card
    assert "the final weights, step 6" in card and "Not evaluated yet" in card
    results = mmcl.evaluate(run, tasks=["knn"])
    card = (run.folder / "model" / "README.md").read_text()
    assert f"| step_00000006 | knn | top1 | {results['knn']['top1']:.4g} |" in card
    images = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    exported, trained = mmcl.load_encoder(run.folder / "model"), mmcl.load_encoder(run)
    with torch.no_grad():
        torch.testing.assert_close(exported(images), trained(images), rtol=0, atol=0)
        torch.testing.assert_close(exported.features(images), trained.features(images), rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="neither a run folder nor a checkpoint file"):
        mmcl.load_encoder(tmp_path / "nothing")


def test_a_plugin_export_without_a_manifest_gets_no_card(tmp_path, monkeypatch):
    """A modality whose export writes its own files only (no mmcl_export.json, as before the manifest) still ends
    its run; the card needs the manifest and is skipped."""
    from mmcl.modalities.vision.adapter import VisionAdapter

    def export_weights(self, encoder, folder: Path) -> Path:
        Path(folder).mkdir()
        torch.save(encoder.state_dict(), Path(folder) / "weights.pt")
        return Path(folder)

    monkeypatch.setattr(VisionAdapter, "export", export_weights)
    run = pretrain(load_config(tiny()), tmp_path / "run")
    assert sorted(p.name for p in (run / "model").iterdir()) == ["weights.pt"]
    assert json.loads((run / "run.json").read_text())["status"] == "finished"


def test_weights_only_final_checkpoint(tmp_path):
    """train.save_optimizer_state=false: the final checkpoint holds the same weights without the optimiser's state
    (smaller: SGD's momentum buffers are the size of the weights), evaluates as usual, and a resume from it is
    refused with the reason; intermediate checkpoints keep the state."""
    full = pretrain(load_config(tiny(train={"checkpoint_every": 3})), tmp_path / "full")
    weights_only = {"checkpoint_every": 3, "save_optimizer_state": False}
    light = pretrain(load_config(tiny(train=weights_only)), tmp_path / "light")
    final, middle = checkpoint.checkpoint_path(light, 6), checkpoint.checkpoint_path(light, 3)
    assert "optimizer" not in checkpoint.load_checkpoint(final) and "optimizer" in checkpoint.load_checkpoint(middle)
    assert final.stat().st_size < checkpoint.checkpoint_path(full, 6).stat().st_size
    for a, b in zip(checkpoint.load_checkpoint(final)["model"].values(), checkpoint.load_checkpoint(
            checkpoint.checkpoint_path(full, 6))["model"].values()):  # fmt: skip
        assert torch.equal(a, b)
    assert 0 <= mmcl.evaluate(light, tasks=["knn"])["knn"]["top1"] <= 100
    with pytest.raises(ValueError, match=r"step_00000006.pt holds the weights only .*train.save_optimizer_state"):
        mmcl.pretrain(light, ["train.max_steps=8"], resume=True)


def test_loggers_and_weights_only_may_change_on_resume():
    changes = {"train.loggers": [["tensorboard"], []], "train.save_optimizer_state": [True, False]}
    assert runs.refused_changes(changes) == []


def test_hyperparameters_are_what_trackers_take():
    from mmcl.runs.tracking import hyperparameters

    values = hyperparameters(load_config(tiny()).to_dict())
    assert values["loss.temperature"] == 0.5 and values["model.backbone_options.channels"] == "[8, 16]"
    assert "train.run_name" not in values  # unset
    assert all(isinstance(value, (bool, int, float, str)) for value in values.values())
    assert json.loads(values["eval.tasks"]) == ["knn", "linear"]


def test_a_graph_run_within_one_second_has_ended_on_its_card(tmp_path):
    """run.json keeps whole seconds, so a short run's session may start and end in the same second: its card gave
    "in progress" for such a run (a 1-step MUTAG run did so every time)."""
    from mmcl.engine.config import build_adapter
    from mmcl.runs.card import write_model_card
    from mmcl.runs.record import RunRecord

    fake = {"num_graphs": 64, "avg_num_nodes": 10, "num_channels": 8, "num_classes": 2}
    run = mmcl.pretrain({
        "modality": "graph", "loss": {"name": "graphcl"},
        "data": {"source": "pyg", "dataset": "FakeDataset", "dataset_options": fake, "root": str(tmp_path / "pyg")},
        "train": {"max_steps": 1, "batch_size": 32, "progress_bar": False, "loggers": [], "output_dir": str(tmp_path)},
    })  # fmt: skip
    card = run.folder / "model" / "README.md"
    assert "| wall time | in progress |" not in card.read_text()
    record = RunRecord(run.folder)
    saved = record.read()
    saved["sessions"][-1]["ended"] = saved["sessions"][-1]["started"]  # as a run within one second records it
    record.write(saved)
    write_model_card(run.folder, build_adapter(run.config))  # what the trainer does once the session has ended
    assert "| wall time | < 1 s |" in card.read_text()
    del saved["sessions"][-1]["ended"]  # a session still running
    record.write(saved)
    write_model_card(run.folder, build_adapter(run.config))
    assert "| wall time | in progress |" in card.read_text()
