"""The shared encoder interface (shapes, padding invariance, causality, the last-position
shortcut) and the encoder registry (one config class per encoder, `encoder_config`)."""

import pytest
import torch

from userseq.core.errors import ConfigError
from userseq.encoders import ENCODERS, EncoderConfig, build_encoder, encoder_config


@pytest.mark.parametrize("name", ENCODERS.names())
def test_shapes_padding_invariance_and_last(name):
    torch.manual_seed(0)
    enc = build_encoder(encoder_config(name, dim=16, max_len=12, heads=2), n_items=30).eval()
    x = torch.randint(1, 31, (4, 8))
    x[0, :3] = 0
    x[1, :7] = 0
    h = enc(x, x > 0)
    # closed-form baselines have their own width: 1 (pop), the catalogue + 1 (itemknn, ease)
    assert h.shape == (4, 8, enc.dim if getattr(enc, "closed_form", False) else 16)
    torch.testing.assert_close(enc.last(x, x > 0), h[:, -1], rtol=1e-5, atol=1e-5)
    wider = torch.cat([torch.zeros(4, 4, dtype=torch.long), x], 1)
    torch.testing.assert_close(enc.last(wider, wider > 0), h[:, -1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_causal_encoders_do_not_look_ahead(name):
    torch.manual_seed(0)
    enc = build_encoder(encoder_config(name, dim=16, max_len=10), n_items=30).eval()
    x = torch.randint(1, 31, (2, 10))
    y = x.clone()
    y[:, -1] = (y[:, -1] % 30) + 1  # change only the newest item
    assert enc.causal
    torch.testing.assert_close(enc(x, x > 0)[:, :-1], enc(y, y > 0)[:, :-1])


def test_bert4rec_is_bidirectional_with_mask_token():
    enc = build_encoder(encoder_config("bert4rec", dim=16, max_len=10, heads=2), n_items=30).eval()
    assert not enc.causal and enc.mask_token() == 31
    assert enc.items.output_matrix().shape == (31, 16)  # [mask] is not a rankable item
    x = torch.randint(1, 31, (2, 10))
    y = x.clone()
    y[:, -1] = (y[:, -1] % 30) + 1
    assert not torch.allclose(enc(x, x > 0)[:, 0], enc(y, y > 0)[:, 0])


def test_unknown_model_name():
    with pytest.raises(ConfigError, match="unknown encoder 'foo'. Choose one of: .*sasrec"):
        encoder_config("foo")
    cfg = encoder_config("sasrec").model_copy(update={"name": "foo"})
    with pytest.raises(ConfigError, match="unknown encoder 'foo'"):
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
    enc = build_encoder(encoder_config(name, dim=8, max_len=8), 20,
                        items=_FeatureItems(20, 8)).eval()
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
    cfg = encoder_config("sasrec", dim=32, max_len=10, init_std=0.02, attn_dropout=0.5)
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
    with pytest.raises(ConfigError, match="attn_dropout"):
        encoder_config("sasrec", attn_dropout=1.0)


# --------------------------------------------------------------------------- the registry


@pytest.mark.parametrize("name", ["sasrec", "bert4rec", "gru4rec"])
def test_each_encoder_is_registered_with_its_own_config(name):
    entry = ENCODERS.get(name)
    assert issubclass(entry.config, EncoderConfig) and entry.config is not EncoderConfig
    assert entry.config().name == name  # the config class defaults to its registered name
    cfg = encoder_config(name, dim=8, max_len=6)
    assert type(cfg) is entry.config and (cfg.dim, cfg.max_len) == (8, 6)
    # one construction: EncoderClass(config, items)
    assert type(build_encoder(cfg, 12)) is entry.obj


def test_settings_belong_to_their_encoder():
    sas, gru, bert = (ENCODERS.get(n).config.model_fields
                      for n in ("sasrec", "gru4rec", "bert4rec"))
    assert {"heads", "ffn_dim", "attn_dropout", "init_std"} <= set(sas) and "mask_prob" not in sas
    assert not {"heads", "ffn_dim", "attn_dropout", "init_std", "mask_prob"} & set(gru)
    assert "mask_prob" in bert
    common = {"name", "dim", "dropout", "max_len", "items", "item_table", "compression", "quantize"}
    assert common <= set(EncoderConfig.model_fields) and "layers" not in EncoderConfig.model_fields


def test_encoder_config_drops_only_the_common_settings_an_encoder_lacks():
    gru = encoder_config("gru4rec", dim=8, layers=1, heads=4, dropout=0.0, max_len=5)
    assert (gru.dim, gru.layers, gru.dropout, gru.max_len) == (8, 1, 0.0, 5)
    assert not hasattr(gru, "heads")
    sas = encoder_config("sasrec", dim=8, heads=4)
    assert sas.heads == 4
    with pytest.raises(ConfigError, match="unknown key 'mask_prob'.*allowed here: .*heads"):
        encoder_config("sasrec", mask_prob=0.3)  # not a common setting: an error, not dropped
    with pytest.raises(ConfigError, match="heads .3. must divide dim .8."):
        encoder_config("sasrec", dim=8, heads=3)



def test_overrides_drop_common_settings_but_refuse_other_encoders_own():
    from userseq.nextitem.config import RunConfig

    gru = RunConfig().updated({"model.name": "gru4rec", "model.heads": 4, "model.dim": 8})
    assert gru.model.name == "gru4rec" and gru.model.dim == 8 and not hasattr(gru.model, "heads")
    with pytest.raises(ConfigError, match="'model.mask_prob' is not a setting of encoder 'sasrec'"):
        RunConfig().updated({"model.mask_prob": 0.3})  # would be silently ignored otherwise
    bert = RunConfig().updated({"model.name": "bert4rec", "model.mask_prob": 0.3})
    assert bert.model.mask_prob == 0.3


def test_bert4rec_reserves_the_mask_row_in_any_item_table():
    from userseq.items.factory import special_tokens

    assert [special_tokens(encoder_config(n))
            for n in ("sasrec", "gru4rec", "bert4rec")] == [0, 0, 1]
    cfg = encoder_config("bert4rec", dim=8, max_len=6, item_table="hash", compression=2)
    enc = build_encoder(cfg, n_items=20)
    assert enc.mask_token() == 21
    x = torch.tensor([[0, 3, 5, 21]])
    assert enc(x, x > 0).shape == (1, 4, 8)


# --------------------------------------------------------------------------- reference recipe


@pytest.mark.parametrize("block,positions", [("sasrec", "last"), ("pre", "first"),
                                             ("sasrec", "first")])
@pytest.mark.parametrize("name", ["sasrec", "bert4rec"])
def test_block_and_position_options_keep_the_interface(name, block, positions):
    torch.manual_seed(0)
    cfg = encoder_config(name, dim=16, max_len=12, heads=2, block=block, positions=positions)
    enc = build_encoder(cfg, n_items=30).eval()
    assert all(b.style == block for b in enc.blocks)
    x = torch.randint(1, 31, (3, 8))
    x[0, :3] = 0
    x[1, :7] = 0
    h = enc(x, x > 0)
    torch.testing.assert_close(enc.last(x, x > 0), h[:, -1], rtol=1e-5, atol=1e-5)
    wider = torch.cat([torch.zeros(3, 4, dtype=torch.long), x], 1)  # more left padding
    torch.testing.assert_close(enc.last(wider, wider > 0), h[:, -1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="block"):
        encoder_config(name, block="post")


def test_sasrec_block_matches_the_reference_code_by_hand():
    """style="sasrec": q = LN1(x); x = q + Attn(q; keys/values x); h = LN2(x); out = h + FFN(h)."""
    from userseq.encoders.blocks import TransformerBlock, attention_mask

    torch.manual_seed(0)
    blk = TransformerBlock(8, 1, 8, 0.0, style="sasrec").eval()
    x = torch.randn(2, 5, 8)
    mask = torch.ones(2, 5, dtype=torch.bool)
    am = attention_mask(mask, causal=True)
    w, b = blk.attn.qkv.weight, blk.attn.qkv.bias
    q_in = blk.ln1(x)
    q = q_in @ w[:8].T + b[:8]
    k = x @ w[8:16].T + b[8:16]
    v = x @ w[16:].T + b[16:]
    scores = (q @ k.transpose(1, 2)) / 8**0.5
    scores = scores.masked_fill(~torch.tril(torch.ones(5, 5, dtype=torch.bool)), float("-inf"))
    y = blk.attn.out(torch.softmax(scores, -1) @ v)
    h = blk.ln2(q_in + y)
    expected = h + blk.ffn(h)
    torch.testing.assert_close(blk(x, am), expected, rtol=1e-5, atol=1e-5)
    # the default pre-LN block differs
    pre = TransformerBlock(8, 1, 8, 0.0).eval()
    pre.load_state_dict(blk.state_dict())
    assert not torch.allclose(pre(x, am), expected)


def test_positions_first_counts_from_the_oldest_event():
    torch.manual_seed(0)
    first = build_encoder(encoder_config("sasrec", dim=8, max_len=6, positions="first",
                                         layers=1, dropout=0.0), n_items=20).eval()
    last = build_encoder(encoder_config("sasrec", dim=8, max_len=6, layers=1, dropout=0.0),
                         n_items=20).eval()
    last.load_state_dict(first.state_dict())
    full = torch.tensor([[1, 2, 3, 4, 5, 6]])  # a full window: both alignments agree
    torch.testing.assert_close(first(full, full > 0), last(full, full > 0))
    short = torch.tensor([[0, 0, 0, 4, 5, 6]])  # 3 events: positions 0..2 vs 3..5
    assert not torch.allclose(first(short, short > 0)[:, -1], last(short, short > 0)[:, -1])
    alone = torch.tensor([[4, 5, 6, 0, 0, 0]])[:, :3]  # the same 3 events without padding
    torch.testing.assert_close(first(short, short > 0)[:, -3:], first(alone, alone > 0),
                               rtol=1e-5, atol=1e-5)
