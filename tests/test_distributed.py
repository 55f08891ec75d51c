"""Data-parallel training (core/distributed.py + the one Trainer): sharding, 2 gloo CPU processes
launched by torchrun against 1 process with the same global batch, resume under torchrun, and a
rank that dies."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_events

from userseq.core import distributed
from userseq.core.artifacts import load_tensors
from userseq.data.batches import length_bucketed_batches, shard_rows

SRC = str(Path(__file__).resolve().parents[1] / "src")

# Every user has 15 events and max_len is 10, so every training row has the same 10 target
# positions: the mean of the two ranks' mean losses is the single process's mean loss, and the
# averaged gradients equal the single-process gradients up to float rounding. Dropout is off
# (its masks are drawn per rank). SGD, not Adam: Adam divides by the gradient's root mean square,
# which turns rounding noise in a gradient that is zero in exact arithmetic (the attention key
# bias) into full-size steps, so Adam runs differ there by ~lr x steps whatever the parallelism.
CONFIG = """\
model: {dim: 16, max_len: 10, dropout: 0.0}
train: {batch_size: 16, optimizer: sgd, lr: 0.2, momentum: 0.9, device: cpu, threads: 1,
        epochs: 3}
"""
# Stated tolerance of the 2-process vs 1-process comparison (fp32, 12 optimizer steps).
WEIGHT_ATOL = 1e-4
LOSS_RTOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    return env


def test_shard_rows_is_the_distributed_sampler_rule():
    rows = np.arange(7)
    assert shard_rows(rows, 0, 2).tolist() == [0, 2, 4, 6]
    assert shard_rows(rows, 1, 2).tolist() == [1, 3, 5]
    assert shard_rows(rows, 2, 3).tolist() == [2, 5]
    # a batch smaller than the world is repeated so every rank gets rows
    assert shard_rows(np.array([9]), 1, 2).tolist() == [9]
    assert shard_rows(rows).tolist() == rows.tolist()  # not distributed: unchanged
    # the ranks' shares of every bucketed batch add up to the single-process batches
    lengths = np.random.default_rng(0).integers(1, 20, 50)
    single = length_bucketed_batches(lengths, 8, np.random.default_rng(3))
    assert sum(len(b) for b in single) == 50
    assert not distributed.is_initialized() and distributed.is_main()


def test_communication_volume_from_model_size():
    vol = distributed.communication_bytes(torch.nn.Linear(10, 10), 4)
    assert vol["parameters"] == 110 and vol["gradient_bytes"] == 440
    assert vol["sent_per_rank_per_step"] == int(2 * 3 / 4 * 440)  # ring all-reduce


def _torchrun(data: Path, cfg: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", str(_free_port()), "-m", "userseq", "train", "--data", str(data),
           "--config", str(cfg), "--out", str(out), "--quiet", *extra]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> tuple[Path, Path, Path]:
    """The data, the config and a 1-process run of 3 epochs (global batch 16)."""
    from userseq.data.eventlog import EventLog
    from userseq.nextitem.config import RunConfig
    from userseq.nextitem.estimator import NextItemRecommender

    tmp = tmp_path_factory.mktemp("ddp")
    data, cfg_path = tmp / "events.csv", tmp / "cfg.yaml"
    synthetic_events(n_users=64).write_csv(data)
    cfg_path.write_text(CONFIG)
    one = tmp / "one"
    NextItemRecommender(config=RunConfig.from_yaml(cfg_path)).fit(
        EventLog.read(data), run_dir=one, quiet=True)
    return data, cfg_path, one


def _assert_same_run(one: Path, two: Path) -> None:
    a, b = load_tensors(one / "model.safetensors")[0], load_tensors(two / "model.safetensors")[0]
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < WEIGHT_ATOL, worst
    la = [h["loss"] for h in json.loads((one / "train_log.json").read_text())]
    lb = [h["loss"] for h in json.loads((two / "train_log.json").read_text())]
    assert len(la) == len(lb) == 3
    np.testing.assert_allclose(lb, la, rtol=LOSS_RTOL)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert mb["train"]["best_epoch"] == ma["train"]["best_epoch"]
    assert abs(mb["test"]["ndcg@10"] - ma["test"]["ndcg@10"]) < 1e-3


def test_two_processes_match_one_with_the_same_global_batch(one_process, tmp_path):
    data, cfg_path, one = one_process
    two = tmp_path / "two"
    r = _torchrun(data, cfg_path, two)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("saved run to") == 1  # rank 0 reports; rank 1 writes nothing
    _assert_same_run(one, two)


@pytest.mark.slow
def test_resume_under_torchrun(one_process, tmp_path):
    """2 epochs on 2 ranks, then --resume to 3: rank 0 reads the checkpoint and sends it."""
    data, cfg_path, one = one_process
    two = tmp_path / "two"
    r = _torchrun(data, cfg_path, two, "--epochs", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((two / "trainer_state.json").read_text())["epoch"] == 2
    r = _torchrun(data, cfg_path, two, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_run(one, two)


# ----------------------------------------------------------------------------- a rank that dies
def _worker(rank: int, port: int, die_at: int, result_file: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from userseq.core.config import TrainConfig
    from userseq.core.trainer import Trainer

    torch.set_num_threads(1)
    cfg = TrainConfig(epochs=1000, batch_size=8, device="cpu", dist_timeout=15, patience=1000)
    trainer = Trainer(cfg, quiet=True)
    x, y = torch.randn(64, 4), torch.randn(64)

    def batches(epoch: int):
        for b in range(0, 64, 8):
            yield shard_rows(np.arange(b, b + 8))

    def loss_fn(model, idx):
        if rank == 1 and trainer.state.step == die_at:
            os._exit(3)  # the rank dies mid-training, without a word to the others
        return ((model(x[idx]).squeeze(1) - y[idx]) ** 2).mean()

    t0 = time.time()
    try:
        trainer.fit(torch.nn.Linear(4, 1), batches, 8, loss_fn)
        msg = "finished"
    except distributed.DistributedError as e:
        msg = str(e)
    Path(result_file).write_text(json.dumps({"message": msg, "seconds": time.time() - t0}))


def test_a_rank_that_dies_ends_the_job_with_a_clear_error(tmp_path):
    ctx = torch.multiprocessing.get_context("spawn")
    port, out = _free_port(), tmp_path / "rank0.json"
    procs = [ctx.Process(target=_worker, args=(r, port, 5, str(out))) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, "a rank hung instead of failing"
    assert procs[1].exitcode == 3
    res = json.loads(out.read_text())
    assert res["message"].startswith("distributed training failed during the gradient "
                                     "all-reduce on rank 0 of 2: another rank died or did not "
                                     "answer within train.dist_timeout"), res["message"]
    assert res["seconds"] < 20


@pytest.mark.parametrize("missing", ["MASTER_ADDR"])
def test_world_size_without_torchrun_variables_is_a_clear_error(monkeypatch, missing):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_PORT", "29999")
    monkeypatch.delenv(missing, raising=False)
    with pytest.raises(distributed.DistributedError,
                       match="WORLD_SIZE is 2 but MASTER_ADDR is not set; launch with torchrun"):
        distributed.init_from_env()


@pytest.mark.slow
def test_ctr_trains_data_parallel_through_the_same_trainer(tmp_path):
    """Another task, the same loop: `userseq ctr train` under torchrun matches 1 process."""
    from userseq.ctr.synthetic import synthetic_ctr_events

    df = synthetic_ctr_events(n_users=60, n_items=120, n_cats=6, history_len=40, n_targets=5,
                              evidence=2, recent_clean=10, seed=0)
    events, cfg = tmp_path / "events.csv", tmp_path / "tiny.yaml"
    df.drop("click_prob").write_csv(events)
    cfg.write_text("model: {item_dim: 8, cat_dim: 4, user_dim: 4, mlp: [16], att_hidden: [8]}\n"
                   "train: {batch_size: 64, threads: 1, device: cpu, epochs: 2}\n")
    args = ["ctr", "train", "--data", str(events), "--model", "din", "--category-col",
            "category", "--config", str(cfg), "--quiet"]
    one = subprocess.run([sys.executable, "-m", "userseq", *args, "--out", str(tmp_path / "one")],
                         env=_env(), capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", str(_free_port()), "-m", "userseq", *args, "--out",
                          str(tmp_path / "two")], env=_env(), capture_output=True, text=True,
                         timeout=180)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("saved run to") == 1
    ma, mb = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert abs(ma["test"]["auc"] - mb["test"]["auc"]) < 0.02
