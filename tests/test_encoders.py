"""The shared encoder interface: shapes, padding invariance, causality, the last-position shortcut."""

import pytest
import torch

from userseq.core.errors import ConfigError
from userseq.encoders import ENCODERS, build_encoder
from userseq.encoders.config import ModelConfig


@pytest.mark.parametrize("name", ENCODERS)
def test_shapes_padding_invariance_and_last(name):
    torch.manual_seed(0)
    enc = build_encoder(ModelConfig(name=name, dim=16, max_len=12, heads=2), n_items=30).eval()
    x = torch.randint(1, 31, (4, 8))
    x[0, :3] = 0
    x[1, :7] = 0
    h = enc(x, x > 0)
    assert h.shape == (4, 8, 16)
    torch.testing.assert_close(enc.last(x, x > 0), h[:, -1], rtol=1e-5, atol=1e-5)
    wider = torch.cat([torch.zeros(4, 4, dtype=torch.long), x], 1)
    torch.testing.assert_close(enc.last(wider, wider > 0), h[:, -1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_causal_encoders_do_not_look_ahead(name):
    torch.manual_seed(0)
    enc = build_encoder(ModelConfig(name=name, dim=16, max_len=10), n_items=30).eval()
    x = torch.randint(1, 31, (2, 10))
    y = x.clone()
    y[:, -1] = (y[:, -1] % 30) + 1  # change only the newest item
    assert enc.causal
    torch.testing.assert_close(enc(x, x > 0)[:, :-1], enc(y, y > 0)[:, :-1])


def test_bert4rec_is_bidirectional_with_mask_token():
    enc = build_encoder(ModelConfig(name="bert4rec", dim=16, max_len=10, heads=2), n_items=30).eval()
    assert not enc.causal and enc.mask_token() == 31
    assert enc.items.output_matrix().shape == (31, 16)  # [mask] is not a rankable item
    x = torch.randint(1, 31, (2, 10))
    y = x.clone()
    y[:, -1] = (y[:, -1] % 30) + 1
    assert not torch.allclose(enc(x, x > 0)[:, 0], enc(y, y > 0)[:, 0])


def test_unknown_model_name():
    cfg = ModelConfig.model_construct(name="foo")
    with pytest.raises(ConfigError, match="unknown model 'foo'"):
        build_encoder(cfg, 10)


class _FeatureItems(torch.nn.Module):
    """An ItemRepr that adds a projected per-event feature to the id embedding."""

    def __init__(self, n_items, dim):
        super().__init__()
        from userseq.items.base import IdEmbedding

        self.base = IdEmbedding(n_items, dim)
        self.n_items, self.dim = n_items, dim
        self.proj = torch.nn.Linear(1, dim)

    def embed(self, ids, features=None):
        x = self.base(ids)
        return x if features is None else x + self.proj(features["f"])

    def output_matrix(self):
        return self.base.output_matrix()


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_features_reach_the_item_representation(name):
    torch.manual_seed(0)
    enc = build_encoder(ModelConfig(name=name, dim=8, max_len=8), 20, items=_FeatureItems(20, 8)).eval()
    x = torch.randint(1, 21, (3, 6))
    x[0, :2] = 0
    f = torch.randn(3, 6, 1)
    plain = enc.last(x, x > 0)
    with_f = enc.last(x, x > 0, {"f": f})
    assert not torch.allclose(plain, with_f)
    # features are aligned with the (left-padded) events: extra padding keeps the result
    wide = torch.cat([torch.zeros(3, 2, dtype=torch.long), x], 1)
    fw = torch.cat([torch.zeros(3, 2, 1), f], 1)
    torch.testing.assert_close(enc.last(wide, wide > 0, {"f": fw}), with_f, rtol=1e-5, atol=1e-5)


def test_init_std_and_attention_dropout_options():
    cfg = ModelConfig(name="sasrec", dim=32, max_len=10, init_std=0.02, attn_dropout=0.5)
    enc = build_encoder(cfg, n_items=500)
    table = enc.items.table.weight
    assert torch.all(table[0] == 0)  # padding row stays zero
    assert abs(table[1:].std().item() - 0.02) < 0.002
    assert abs(enc.blocks[0].attn.qkv.weight.std().item() - 0.02) < 0.002
    assert torch.all(enc.blocks[0].attn.qkv.bias == 0)
    ids = torch.randint(1, 501, (4, 10))
    mask = torch.ones_like(ids, dtype=torch.bool)
    enc.eval()
    assert torch.equal(enc(ids, mask), enc(ids, mask))  # no attention dropout at inference
    enc.train()
    torch.manual_seed(0)
    a = enc(ids, mask)
    torch.manual_seed(1)
    assert not torch.allclose(a, enc(ids, mask))
    with pytest.raises(ValueError):
        ModelConfig(attn_dropout=1.0)
