"""Exact resume: a run interrupted at any step and continued with `--resume` ends with the same
weights and metrics as one never interrupted (same seed, dropout on). The checkpoint holds the
torch, NumPy and Python RNG states and the data position (docs/hardening.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import synthetic_events
from safetensors.torch import load_file

from userseq import EventLog, NextItemRecommender
from userseq.core.trainer import Trainer

# dropout on, masked-item noise off: sasrec's dropout draws from the torch RNG at every step;
# random training windows draw from the data order's own generator
OVERRIDES = {"model.dim": 16, "model.max_len": 12, "model.dropout": 0.3, "train.epochs": 4,
             "train.batch_size": 16, "train.threads": 1, "train.device": "cpu",
             "data.train_windows": "random"}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def _assert_same_run(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k  # bitwise
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (a, b))
    assert ma["valid"] == mb["valid"] and ma["test"] == mb["test"]
    la, lb = (json.loads((r / "train_log.json").read_text()) for r in (a, b))
    assert [h["loss"] for h in la] == [h["loss"] for h in lb]


class _Killed(Exception):
    pass


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """train.threads=1 sets torch's thread count for the process: put it back afterwards."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("checkpoint_every", [0, 3])
def test_interrupted_mid_epoch_then_resumed_is_exact(tmp_path, monkeypatch, checkpoint_every):
    """In-process: stop after 13 optimizer steps (mid-epoch 3 of 4), resume, compare bitwise.
    checkpoint_every=0 resumes from the end of epoch 2; 3 from step 12 (mid-epoch: the batches
    already trained are skipped, then the RNG states restored)."""
    log = EventLog.from_frame(synthetic_events(n_users=80, n_items=20, length=12))
    over = {**OVERRIDES, "train.checkpoint_every": checkpoint_every}
    NextItemRecommender("sasrec", overrides=over).fit(log, run_dir=tmp_path / "a", quiet=True)

    step = Trainer._step
    calls = {"n": 0}

    def dying_step(self, run, batch):
        calls["n"] += 1
        if calls["n"] > 13:
            raise _Killed
        return step(self, run, batch)

    monkeypatch.setattr(Trainer, "_step", dying_step)
    b = tmp_path / "b"
    with pytest.raises(_Killed):
        NextItemRecommender("sasrec", overrides=over).fit(log, run_dir=b, quiet=True)
    monkeypatch.setattr(Trainer, "_step", step)
    state = json.loads((b / "trainer_state.json").read_text())
    # 5 batches per epoch: killed at step 14 (epoch 3, batch 4); the last checkpoint is the end of
    # epoch 2, or with checkpoint_every=3 step 12 (epoch 3 after its batch 2)
    assert state["epoch"] == 2
    assert state["epoch_step"] == (0 if checkpoint_every == 0 else 2)
    assert not (b / "COMPLETE").exists()
    NextItemRecommender("sasrec", overrides=over).fit(log, run_dir=b, resume=True, quiet=True)
    _assert_same_run(tmp_path / "a", b)


def test_resume_without_rng_state_was_not_exact_before(tmp_path):
    """The control: a resume that reseeds (what userseq did before) ends with other weights; so
    the test above would catch a regression."""
    import userseq.core.trainer as trainer_mod

    log = EventLog.from_frame(synthetic_events(n_users=80, n_items=20, length=12))
    NextItemRecommender("sasrec", overrides=OVERRIDES).fit(log, run_dir=tmp_path / "a", quiet=True)
    over = {**OVERRIDES, "train.epochs": 2}
    NextItemRecommender("sasrec", overrides=over).fit(log, run_dir=tmp_path / "b", quiet=True)
    real = trainer_mod.set_rng_state
    trainer_mod.set_rng_state = lambda rng: trainer_mod.seed_everything(42 + 2)
    try:
        NextItemRecommender("sasrec", overrides=OVERRIDES).fit(log, run_dir=tmp_path / "b",
                                                               resume=True, quiet=True)
    finally:
        trainer_mod.set_rng_state = real
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)


def _train_args(data: Path, out: Path, *extra: str) -> list[str]:
    sets = [f"--set={k}={v}" for k, v in {**OVERRIDES, "train.epochs": 6,
                                          "train.checkpoint_every": 4}.items()]
    return ["train", "-d", str(data), "-o", str(out), "--model", "sasrec", "--quiet", *sets,
            *extra]


def _train_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "userseq.cli", *_train_args(data, out, *extra)]


def test_kill_9_mid_epoch_then_resume_is_exact(tmp_path, cli):
    """A real `kill -9` of `userseq train` mid-epoch, then `--resume`: the same weights, metrics
    and losses as an uninterrupted run (that one runs in-process, the same command)."""
    data = tmp_path / "events.csv"
    synthetic_events(n_users=200, n_items=30, length=20).write_csv(data)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    full = cli(*_train_args(data, tmp_path / "full"))
    assert full.code == 0, full.stderr

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(data, killed), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state_file = killed / "trainer_state.json"
    deadline = time.time() + 120
    state: dict = {}
    while time.time() < deadline and proc.poll() is None:
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            state = {}
        if state.get("epoch", 0) >= 1 and state.get("epoch_step", 0) > 0:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    assert state.get("epoch_step", 0) > 0  # killed mid-epoch, after a mid-epoch checkpoint
    assert not (killed / "COMPLETE").exists()
    unfinished = subprocess.run([sys.executable, "-m", "userseq.cli", "recommend", str(killed),
                                 "--user", "u1"], env=env, capture_output=True, text=True)
    assert unfinished.returncode == 2 and "--resume" in unfinished.stderr
    assert "Traceback" not in unfinished.stderr

    resumed = subprocess.run(_train_cmd(data, killed, "--resume"), env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_run(tmp_path / "full", killed)
