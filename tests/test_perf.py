"""Training-speed pieces: CE chunk sizing, fused Adam, elapsed seconds in the log, train.compile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_nextitem import SMALL, cyclic_log

from userseq import NextItemRecommender
from userseq.core.config import TrainConfig
from userseq.core.optim import build_optimizer, fused_ok
from userseq.data.split import leave_one_out
from userseq.losses.softmax import ce_chunk_rows, full_ce


def test_ce_chunk_rows_keeps_a_block_near_four_mib():
    assert ce_chunk_rows(3417) == 306  # ML-1M: 2**20 // 3417
    assert ce_chunk_rows(10) == 8192  # tiny catalogue: capped
    assert ce_chunk_rows(10_000_000) == 64  # huge catalogue: at least 64 rows
    assert ce_chunk_rows(0) == 8192


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_full_ce_with_default_chunks_matches_cross_entropy(dtype, tol):
    torch.manual_seed(0)
    n, V, D = 700, 5000, 16  # 5000 columns: 209-row chunks, so 4 chunks
    h = torch.randn(n, D, requires_grad=True)
    W = (torch.randn(V, D) * 0.3).requires_grad_()
    t = torch.randint(1, V, (n,))
    loss = full_ce(h, t, W, dtype=dtype)
    loss.backward()
    h2, W2 = h.detach().clone().requires_grad_(), W.detach().clone().requires_grad_()
    logits = (h2 @ W2.T).masked_fill(torch.arange(V) == 0, float("-inf"))
    ref = F.cross_entropy(logits, t)
    ref.backward()
    assert abs(loss.item() - ref.item()) < tol * ref.item()
    assert torch.allclose(h.grad, h2.grad, atol=tol * float(h2.grad.abs().max()))
    assert torch.allclose(W.grad, W2.grad, atol=tol * float(W2.grad.abs().max()))


def test_adam_is_fused_for_dense_float_cpu_parameters():
    lin = torch.nn.Linear(3, 2)
    assert fused_ok(list(lin.parameters())) is True
    assert fused_ok([{"params": list(lin.parameters())}]) is True
    assert fused_ok([]) is None
    assert fused_ok([torch.zeros(2, dtype=torch.long)]) is None
    for name in ("adam", "adamw"):
        opt = build_optimizer(lin.parameters(), TrainConfig(optimizer=name))
        assert opt.defaults["fused"] is True
    opt = build_optimizer(lin.parameters(), TrainConfig(optimizer="sgd"))
    assert "fused" not in opt.defaults or not opt.defaults["fused"]


def test_train_log_records_elapsed_seconds(tmp_path):
    log = cyclic_log(n_users=40)
    NextItemRecommender("sasrec", overrides={**SMALL, "train.epochs": 3}).fit(
        log, run_dir=tmp_path, quiet=True)
    import json

    hist = json.loads((tmp_path / "train_log.json").read_text())
    secs = [h["seconds"] for h in hist]
    assert len(secs) == 3 and secs == sorted(secs) and secs[0] > 0
    assert secs[-1] >= sum(h["epoch_seconds"] for h in hist) - 1e-3  # includes validation


@pytest.mark.slow
def test_compiled_training_learns_and_saves_the_plain_module(tmp_path):
    log = cyclic_log()
    rec = NextItemRecommender("sasrec", overrides={**SMALL, "train.compile": True}).fit(
        log, run_dir=tmp_path, quiet=True)
    assert rec.evaluate(leave_one_out(log).test)["hr@10"] > 0.9
    again = NextItemRecommender.load(tmp_path)
    assert not any("_orig_mod" in k for k in again.encoder_.state_dict())
