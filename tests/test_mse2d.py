"""2D Matryoshka training (`loss.mse2d`): user vectors usable from the first n blocks and the
first d dimensions, the layers x dims grid, and exit_layer serving."""

from __future__ import annotations

import pytest
import torch
from test_nextitem import SMALL, cyclic_log

from userseq import NextItemRecommender
from userseq.core.errors import ConfigError
from userseq.data.split import leave_one_out
from userseq.encoders import build_encoder, encoder_config
from userseq.nextitem.config import RunConfig
from userseq.nextitem.estimator import mse2d_dims

OVER = {**SMALL, "model.layers": 2, "model.dim": 32, "train.epochs": 15}


@pytest.fixture(scope="module")
def log():
    return cyclic_log()


def test_layer_outputs_end_with_forward_and_exit_layer_serves_a_shallower_model():
    torch.manual_seed(0)
    enc = build_encoder(encoder_config("sasrec", dim=16, layers=3, max_len=8), 20).eval()
    x = torch.randint(1, 21, (4, 8))
    x[0, :3] = 0
    mask = x > 0
    outs = enc.layer_outputs(x, mask)
    assert len(outs) == 3 and all(o.shape == (4, 8, 16) for o in outs)
    torch.testing.assert_close(outs[-1], enc(x, mask))
    enc.exit_layer = 1
    torch.testing.assert_close(enc.last(x, mask), outs[0][:, -1])
    torch.testing.assert_close(enc(x, mask), outs[0])
    built = build_encoder(encoder_config("sasrec", dim=16, layers=3, exit_layer=2), 20)
    assert built.exit_layer == 2


def test_config_errors_are_clear():
    with pytest.raises(ConfigError, match=r"exit_layer \(3\) must be at most layers \(2\)"):
        encoder_config("sasrec", layers=2, exit_layer=3)
    cfg = RunConfig().updated({"model.dim": 64})
    assert mse2d_dims(cfg) == [64, 32, 16, 8]
    assert mse2d_dims(cfg.updated({"loss.mse2d.dims": [8, 64, 8]})) == [64, 8]
    with pytest.raises(ConfigError, match="transformer encoder"):
        NextItemRecommender("gru4rec", overrides={**OVER, "loss.mse2d.enabled": True}).fit(
            cyclic_log(n_users=10), quiet=True)
    with pytest.raises(ConfigError, match=r"loss.mse2d.dims \[64\]: each width must lie in "
                                          r"1..model.dim \(32\)"):
        NextItemRecommender("sasrec", overrides={**OVER, "loss.mse2d.enabled": True,
                                                 "loss.mse2d.dims": [64]}).fit(
            cyclic_log(n_users=10), quiet=True)


def test_2d_training_makes_the_shallow_narrow_cell_work(log):
    """The cyclic pattern (next = last + 1) is learnable from one block; a model trained only at
    full depth and width reads poorly after block 1 at 4 dims, the 2D-trained one well."""
    test = leave_one_out(log).test
    grids = {}
    for two_d in (False, True):
        over = {**OVER, "loss.mse2d.enabled": two_d, "loss.mse2d.dims": [32, 4]}
        rec = NextItemRecommender("sasrec", overrides=over).fit(log, quiet=True)
        grid = rec.evaluate_grid(test, ks=[10])
        assert [(g["layers"], g["dim"]) for g in grid] == [(1, 32), (1, 4), (2, 32), (2, 4)]
        assert rec.encoder_.exit_layer is None  # restored after the grid
        grids[two_d] = {(g["layers"], g["dim"]): g["ndcg@10"] for g in grid}
    assert grids[True][(2, 32)] > 0.5, grids  # the full model still learns the pattern
    assert grids[True][(1, 4)] > 0.3, grids
    assert grids[True][(1, 4)] > grids[False][(1, 4)] + 0.1, grids
