"""Data-parallel training as torchrun runs it: two CPU processes on gloo stay identical, centroids included."""
from __future__ import annotations

import os
import socket

import cv2
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from edge.synthetic.smear import render_cell_crops
from export.classifier_training import (ClassifierTrainConfig, distributed_from_env, train_on_folder,
                                        update_centroids)
from export.models.heads import CCLHead

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="this torch build has no gloo backend for CPU process groups")

CONFIG = ClassifierTrainConfig(epochs=1, batch_size=4, lr=1e-3, gamma=0.3, beta=0.05)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _split_update_matches_whole_batch(rank: int, world: int) -> bool:
    """Stage II on each process's half of a batch equals Stage II on the whole batch in one process."""
    torch.manual_seed(0)
    head = CCLHead(16, 3, centroid_dim=8)
    features, labels = torch.randn(10, 16), torch.tensor([0, 1, 2, 0, 0, 1, 1, 0, 2, 0])
    alone = CCLHead(16, 3, centroid_dim=8)
    alone.load_state_dict(head.state_dict())
    alone.update_centroids(features, labels, CONFIG.gamma, CONFIG.beta, CONFIG.push_bound)
    update_centroids(head, features[rank::world], labels[rank::world], CONFIG)
    return torch.allclose(head.centroids, alone.centroids, atol=1e-6)


def _worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES="")
    torch.set_num_threads(1)
    with distributed_from_env() as (got_rank, got_world):
        assert (got_rank, got_world) == (rank, world) and dist.get_backend() == "gloo"
        exact = _split_update_matches_whole_batch(rank, world)
        model, history = train_on_folder(data, out, CONFIG, arch="crossformer_tiny_test", img_size=32,
                                         workers=0, progress=False)
    torch.save({"model": model.state_dict(), "history": history, "exact": exact},
               os.path.join(out, f"rank{rank}.result"))


def test_two_gloo_processes_end_identical(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    for label, name in enumerate(("basophil", "eosinophil", "platelet")):
        (data / name).mkdir(parents=True)
        for i, crop in enumerate(render_cell_crops(np.full(10, label), 40, seed=label)):
            cv2.imwrite(str(data / name / f"{i}.png"), crop)
    out.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(data), str(out)), nprocs=2, join=True)

    ranks = [torch.load(out / f"rank{r}.result", weights_only=True) for r in range(2)]
    assert ranks[0]["exact"] and ranks[1]["exact"]
    for name, value in ranks[0]["model"].items():
        assert torch.equal(value, ranks[1]["model"][name]), name
    torch.manual_seed(CONFIG.seed)
    initial = CCLHead(ranks[0]["model"]["head.weight"].shape[1], 3).centroids
    assert not torch.equal(ranks[0]["model"]["head.centroids"], initial)  # Stage II moved them
    # Loss, accuracy and the gathered evaluation agree on both ranks (the wall time need not).
    strip = [[{k: v for k, v in e.items() if k != "seconds"} for e in r["history"]] for r in ranks]
    assert strip[0] == strip[1] and len(strip[0]) == 1
    # Only rank 0 writes, and it wrote one epoch's checkpoint and log line.
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1
    assert len((out / "log.jsonl").read_text().splitlines()) == 1
