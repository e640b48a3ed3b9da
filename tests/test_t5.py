"""UMT5 text encoder: key map, official numerics (vs an independent float64 implementation),
trim rule, text cleaning, checkpoint errors, tiny tokenizer. CPU, a few seconds."""

from __future__ import annotations

import math
import os
import shutil
import zipfile

import pytest
import torch

from _float_bounds import chain_terms, f32_bound
from wanport.errors import CheckpointError
from wanport.models.t5 import (
    T5_CHECKPOINT_NAME,
    TOKENIZER_SUBDIR,
    WanTextEncoder,
    clean_text,
    expected_wan_t5_shapes,
    t5_config_from_shapes,
    wan_t5_to_hf,
    write_tiny_t5,
)
from wanport.models.t5.attention import WANPORT_T5_ATTENTION, select_attention_implementation, wan_t5_attention
from wanport.models.t5.keymap import hf_umt5_config_kwargs

NEG_ZH = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
          "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
          "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")
PROMPTS = [
    "a cat",
    "Two  dogs &amp; a bird,\n running through the forest at night — cinematic shot",
    NEG_ZH,  # > 128 tokens: exercises the last (clamped) relative-position bucket
]
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, num_heads=64, d_ff=10240, num_layers=24,
                relative_attention_num_buckets=32, relative_attention_max_distance=128)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("t5tiny"))
    write_tiny_t5(d, seed=0)
    return d


@pytest.fixture(scope="module")
def enc32(tiny_dir):
    return WanTextEncoder.load(tiny_dir, dtype=torch.float32, device=torch.device("cpu"), text_len=512)


@pytest.fixture(scope="module")
def enc16(tiny_dir):
    return WanTextEncoder.load(tiny_dir, dtype=torch.bfloat16, device=torch.device("cpu"), text_len=512)


def _wan_state(d):
    return torch.load(os.path.join(d, T5_CHECKPOINT_NAME), map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------- 1. key map / strict load


def test_api_constants():
    assert T5_CHECKPOINT_NAME == "models_t5_umt5-xxl-enc-bf16.pth"
    assert TOKENIZER_SUBDIR == "google/umt5-xxl"


def test_strict_load_of_official_names(tiny_dir):
    from transformers import UMT5Config, UMT5EncoderModel

    sd = _wan_state(tiny_dir)
    assert all(v.dtype == torch.bfloat16 for v in sd.values())
    cfg = t5_config_from_shapes({k: tuple(v.shape) for k, v in sd.items()})
    assert cfg == dict(UMT5_XXL, vocab_size=cfg["vocab_size"], d_model=64, d_kv=16, num_heads=4, d_ff=128,
                       num_layers=2)
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected_wan_t5_shapes(cfg)
    model = UMT5EncoderModel(UMT5Config(**hf_umt5_config_kwargs(cfg)))
    hf = wan_t5_to_hf(sd)
    assert hf["shared.weight"] is hf["encoder.embed_tokens.weight"] is sd["token_embedding.weight"]
    assert set(hf) == set(model.state_dict())  # every HF key covered, nothing extra
    model.load_state_dict(hf, strict=True)
    assert torch.equal(model.encoder.block[1].layer[1].DenseReluDense.wi_0.weight,
                       sd["blocks.1.ffn.gate.0.weight"].float())
    assert torch.equal(model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight,
                       sd["blocks.0.pos_embedding.embedding.weight"].float())


def test_key_map_at_umt5_xxl_scale():
    from transformers import UMT5Config, UMT5EncoderModel

    shapes = expected_wan_t5_shapes(UMT5_XXL)
    assert len(shapes) == 2 + 24 * 10
    assert shapes["blocks.3.pos_embedding.embedding.weight"] == (32, 64)
    assert t5_config_from_shapes(shapes) == UMT5_XXL
    with torch.device("meta"):
        model = UMT5EncoderModel(UMT5Config(**hf_umt5_config_kwargs(UMT5_XXL)))
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert wan_t5_to_hf(shapes) == want


# ----------------------------------------------------------------------------- 2. numerics


def _bucket(rel, num_buckets=32, max_distance=128):
    """Bidirectional T5 bucket of (key position - query position), written out in float64."""
    half = num_buckets // 2
    base = half if rel > 0 else 0
    n = abs(rel)
    exact = half // 2
    if n < exact:
        return base + n
    large = exact + int(math.log(n / exact) / math.log(max_distance / exact) * (half - exact))
    return base + min(large, half - 1)


def _reference(sd, ids, cfg, eps=1e-6):
    """The official T5 encoder math in float64 on the unpadded token ids [L]."""
    w = {k: v.double() for k, v in sd.items()}
    h, dkv = cfg["num_heads"], cfg["d_kv"]
    L = len(ids)

    def rms(x, g):
        return g * (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def gelu_tanh(x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))

    buckets = torch.tensor([[_bucket(j - i) for j in range(L)] for i in range(L)])
    x = w["token_embedding.weight"][torch.as_tensor(ids)]
    for i in range(cfg["num_layers"]):
        p = "blocks.%d." % i
        y = rms(x, w[p + "norm1.weight"])
        q = (y @ w[p + "attn.q.weight"].T).view(L, h, dkv)
        k = (y @ w[p + "attn.k.weight"].T).view(L, h, dkv)
        v = (y @ w[p + "attn.v.weight"].T).view(L, h, dkv)
        bias = w[p + "pos_embedding.embedding.weight"][buckets].permute(2, 0, 1)  # [H, Lq, Lk]
        s = torch.einsum("ihd,jhd->hij", q, k) + bias  # no 1/sqrt(d) scaling
        a = torch.einsum("hij,jhd->ihd", torch.softmax(s, dim=-1), v).reshape(L, h * dkv)
        x = x + a @ w[p + "attn.o.weight"].T
        y = rms(x, w[p + "norm2.weight"])
        ff = gelu_tanh(y @ w[p + "ffn.gate.0.weight"].T) * (y @ w[p + "ffn.fc1.weight"].T)
        x = x + ff @ w[p + "ffn.fc2.weight"].T
    return rms(x, w["norm.weight"])


def _rel(a, b):
    return ((a.double() - b).norm() / b.norm()).item()


def _ref_outputs(enc, tiny_dir, prompts):
    sd = _wan_state(tiny_dir)
    ids, mask = enc.tokenize(prompts)
    return [_reference(sd, ids[i, : int(mask[i].sum())].tolist(), enc.config) for i in range(len(prompts))]


def test_fp32_matches_float64_reference(enc32, tiny_dir):
    assert enc32.attn_implementation == select_attention_implementation()
    refs = _ref_outputs(enc32, tiny_dir, PROMPTS)
    for batched in (False, True):
        outs = enc32.encode(PROMPTS, batched=batched)
        lens = [o.shape[0] for o in outs]
        assert len(set(lens)) == 3 and max(lens) > 128
        for o, r in zip(outs, refs):
            assert o.dtype == torch.float32 and o.shape == r.shape
            assert _rel(o, r) <= 1e-5, _rel(o, r)


def test_bf16_close_to_float64_reference(enc16, tiny_dir):
    refs = _ref_outputs(enc16, tiny_dir, PROMPTS)
    outs = enc16.encode(PROMPTS)
    for o, r in zip(outs, refs):
        assert o.dtype == torch.bfloat16 and o.shape == r.shape
        assert torch.isfinite(o).all()
        assert _rel(o, r) <= 2e-2, _rel(o, r)  # measured ~8e-3 (2 layers, d_model 64)


def _official_bf16(sd, ids, mask, cfg, eps=1e-6):
    """Op-for-op emulation of the official bf16 forward (padded batch, mask, fp32 softmax)."""
    dt = torch.bfloat16
    w = {k: v.to(dt) for k, v in sd.items()}
    b, L = ids.shape
    h, dkv = cfg["num_heads"], cfg["d_kv"]

    def norm(x, g):
        x = x * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + eps)
        return g * x.type_as(g)

    def gelu(x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))

    lin = torch.nn.functional.linear
    buckets = torch.tensor([[_bucket(j - i) for j in range(L)] for i in range(L)])
    x = w["token_embedding.weight"][ids]
    for i in range(cfg["num_layers"]):
        p = "blocks.%d." % i
        y = norm(x, w[p + "norm1.weight"])
        q = lin(y, w[p + "attn.q.weight"]).view(b, -1, h, dkv)
        k = lin(y, w[p + "attn.k.weight"]).view(b, -1, h, dkv)
        v = lin(y, w[p + "attn.v.weight"]).view(b, -1, h, dkv)
        bias = y.new_zeros(b, h, L, L)
        bias += w[p + "pos_embedding.embedding.weight"][buckets].permute(2, 0, 1).unsqueeze(0)
        bias.masked_fill_(mask.view(b, 1, 1, -1) == 0, torch.finfo(dt).min)
        s = torch.einsum("binc,bjnc->bnij", q, k) + bias
        s = torch.softmax(s.float(), dim=-1).type_as(s)
        a = torch.einsum("bnij,bjnc->binc", s, v).reshape(b, -1, h * dkv)
        x = x + lin(a, w[p + "attn.o.weight"])
        y = norm(x, w[p + "norm2.weight"])
        x = x + lin(lin(y, w[p + "ffn.fc1.weight"]) * gelu(lin(y, w[p + "ffn.gate.0.weight"])),
                    w[p + "ffn.fc2.weight"])
    return norm(x, w["norm.weight"])


def test_bf16_follows_official_op_order(enc16, tiny_dir):
    """Same ops in the same order and dtype as the official bf16 code -> (near) bit equality."""
    sd = _wan_state(tiny_dir)
    outs = enc16.encode(PROMPTS)
    ids, mask = enc16.tokenize(PROMPTS)
    for i, o in enumerate(outs):
        ref = _official_bf16(sd, ids[i:i + 1], mask[i:i + 1], enc16.config)[0, : o.shape[0]]
        assert (o.float() - ref.float()).abs().max().item() <= 1e-2 * ref.float().abs().max().item()
        assert torch.equal(o, ref) or _rel(o, ref.double()) < 2e-3


def test_attention_function_upcasts_softmax():
    g = torch.Generator().manual_seed(1)
    b, h, L, d = 2, 3, 7, 8
    q, k, v = (torch.randn(b, h, L, d, generator=g).mul(3).to(torch.bfloat16) for _ in range(3))
    pos = torch.randn(1, h, L, L, generator=g).to(torch.bfloat16)
    mask = torch.ones(b, L, dtype=torch.bool)
    mask[0, 4:] = False
    out, probs = wan_t5_attention(torch.nn.Identity().eval(), q, k, v, mask, scaling=1.0, position_bias=pos)
    bias = torch.zeros(b, h, L, L, dtype=torch.bfloat16) + pos
    bias = bias.masked_fill(~mask.view(b, 1, 1, L), torch.finfo(torch.bfloat16).min)
    want_p = torch.softmax((q @ k.transpose(-1, -2) + bias).float(), dim=-1).to(torch.bfloat16)
    assert torch.equal(probs, want_p)  # bit-exact: the test repeats the function's ops in its order
    assert torch.equal(out, (want_p @ v).transpose(1, 2))
    assert probs[0, :, :, 4:].float().abs().max() == 0


def test_model_routes_attention_through_wanport(enc16, monkeypatch):
    from transformers import AttentionInterface

    if enc16.attn_implementation != WANPORT_T5_ATTENTION:
        pytest.skip("older transformers: UMT5's inline attention already upcasts the softmax")
    calls = []
    real = AttentionInterface._global_mapping[WANPORT_T5_ATTENTION]

    def counting(*args, **kwargs):
        calls.append(kwargs.get("position_bias") is not None)
        return real(*args, **kwargs)

    monkeypatch.setitem(AttentionInterface._global_mapping, WANPORT_T5_ATTENTION, counting)
    enc16.encode(["a cat"])
    assert calls == [True] * enc16.config["num_layers"]


def _t5_terms(enc):
    """Summed products through the encoder: its Linears, and per layer a d_kv-term score and a softmax
    over the 512 (padded) keys."""
    c = enc.config
    return chain_terms(enc.model, attention_terms=c["num_layers"] * (c["d_kv"] + 2 * 512))


def test_real_rows_do_not_depend_on_padding(enc32, tiny_dir):
    short = WanTextEncoder.load(tiny_dir, dtype=torch.float32, text_len=160)
    a = enc32.encode(PROMPTS[:2], batched=True)  # padded to 512, in a batch with a longer prompt
    alone = enc32.encode(PROMPTS[:1])
    b = short.encode(PROMPTS[:2], batched=True)  # padded to 160
    # the same rows in a batch of 2 or of 1: at most a float32 reorder (another GEMM shape) through the
    # encoder, √K·eps32 over its summed products (measured: bit-identical on an AVX2 machine)
    assert _rel(a[0], alone[0].double()) <= f32_bound(_t5_terms(enc32))
    for x, y in zip(a, b):
        assert x.shape == y.shape
        assert torch.allclose(x, y, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- 3. trim rule, cleaning


def test_trim_rule(enc16):
    outs = enc16.encode(PROMPTS + [""])
    tok = enc16.tokenizer
    for text, o in zip(PROMPTS + [""], outs):
        ids = tok(clean_text(text), add_special_tokens=True)["input_ids"]
        assert ids[-1] == 1 and o.shape == (len(ids), enc16.dim)
    assert outs[0].shape[0] == 3  # "▁a", "▁cat", "</s>"
    assert outs[-1].shape[0] == 1  # only "</s>"
    ids, mask = enc16.tokenize(["a cat"])
    assert ids.shape == (1, 512) and int(mask.sum()) == 3 and ids[0, 2] == 1 and (ids[0, 3:] == 0).all()


def test_truncation_keeps_eos(tiny_dir):
    enc = WanTextEncoder.load(tiny_dir, dtype=torch.float32, text_len=16)
    ids, mask = enc.tokenize([" ".join(["cat"] * 40)])
    assert int(mask.sum()) == 16 and ids[0, 15] == 1
    assert enc.encode([" ".join(["cat"] * 40)])[0].shape == (16, 64)


def test_clean_text():
    assert clean_text("  a   cat\n\tsits  ") == "a cat sits"
    assert clean_text("Tom &amp; Jerry") == "Tom & Jerry"
    assert clean_text("Tom &amp;amp; Jerry") == "Tom & Jerry"  # unescaped twice
    assert clean_text("fish &lt;3 chips") == "fish <3 chips"
    assert clean_text("cafÃ© ") == "café"  # mojibake repaired by ftfy
    assert clean_text("the dogâ€™s ball") == "the dog's ball"
    assert clean_text("a\u3000b\u00a0\u2009c") == "a b c"  # Unicode white space collapses
    regex = pytest.importorskip("regex")  # what the official code collapses white space with
    odd = "".join(chr(c) for c in range(0x3001) if chr(c).isspace() or regex.match(r"\s", chr(c)))
    import html

    import ftfy

    def official(t):
        t = html.unescape(html.unescape(ftfy.fix_text(t))).strip()
        return regex.sub(r"\s+", " ", t).strip()

    for c in odd:
        for text in ("a%s%sb" % (c, c), "%sa b%s" % (c, c)):
            assert clean_text(text) == official(text), hex(ord(c))
    assert clean_text("") == ""


# ----------------------------------------------------------------------------- 4. errors


def _copy_ckpt(src, dst, state=None):
    os.makedirs(dst, exist_ok=True)
    shutil.copytree(os.path.join(src, "google"), os.path.join(dst, "google"))
    if state is not None:
        torch.save(state, os.path.join(dst, T5_CHECKPOINT_NAME))
    return dst


def _raises(ckpt_dir, *needles):
    for fn in (lambda: WanTextEncoder.load(ckpt_dir, dtype=torch.float32),
               lambda: WanTextEncoder.check_files(ckpt_dir)):
        with pytest.raises(CheckpointError) as info:
            fn()
        for n in needles:
            assert n in str(info.value), (n, str(info.value))


def test_errors(tiny_dir, tmp_path):
    sd = _wan_state(tiny_dir)
    pth = T5_CHECKPOINT_NAME

    d = _copy_ckpt(tiny_dir, str(tmp_path / "missing_file"))
    _raises(d, os.path.join(d, pth), "not found")

    d = _copy_ckpt(tiny_dir, str(tmp_path / "random_bytes"))
    with open(os.path.join(d, pth), "wb") as f:
        f.write(os.urandom(4096))
    _raises(d, os.path.join(d, pth))

    d = _copy_ckpt(tiny_dir, str(tmp_path / "truncated"))
    with open(os.path.join(tiny_dir, pth), "rb") as f:
        data = f.read()
    with open(os.path.join(d, pth), "wb") as f:
        f.write(data[: len(data) // 2])
    _raises(d, os.path.join(d, pth))

    bad = dict(sd)
    del bad["blocks.1.attn.k.weight"]
    d = _copy_ckpt(tiny_dir, str(tmp_path / "missing_key"), bad)
    _raises(d, os.path.join(d, pth), "missing key", "blocks.1.attn.k.weight")

    bad = dict(sd, **{"blocks.0.attn.extra.weight": torch.zeros(2)})
    d = _copy_ckpt(tiny_dir, str(tmp_path / "extra_key"), bad)
    _raises(d, os.path.join(d, pth), "unexpected key", "blocks.0.attn.extra.weight")

    bad = dict(sd, **{"blocks.1.ffn.fc2.weight": torch.zeros(64, 100, dtype=torch.bfloat16)})
    d = _copy_ckpt(tiny_dir, str(tmp_path / "wrong_shape"), bad)
    _raises(d, os.path.join(d, pth), "blocks.1.ffn.fc2.weight", "[64, 100]")

    bad = dict(sd)
    del bad["token_embedding.weight"]
    d = _copy_ckpt(tiny_dir, str(tmp_path / "no_embedding"), bad)
    _raises(d, os.path.join(d, pth), "token_embedding.weight")

    d = str(tmp_path / "no_tokenizer")
    os.makedirs(d)
    shutil.copy(os.path.join(tiny_dir, pth), os.path.join(d, pth))
    _raises(d, os.path.join(d, "google", "umt5-xxl"), "tokenizer")

    d = _copy_ckpt(tiny_dir, str(tmp_path / "empty_tokenizer"), sd)
    shutil.rmtree(os.path.join(d, "google", "umt5-xxl"))
    os.makedirs(os.path.join(d, "google", "umt5-xxl"))
    _raises(d, os.path.join(d, "google", "umt5-xxl"), "tokenizer")

    _raises(str(tmp_path / "nowhere"), "nowhere")


def test_legacy_pth_format_loads(tiny_dir, tmp_path, enc32):
    d = _copy_ckpt(tiny_dir, str(tmp_path / "legacy"))
    torch.save(_wan_state(tiny_dir), os.path.join(d, T5_CHECKPOINT_NAME), _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(os.path.join(d, T5_CHECKPOINT_NAME))
    WanTextEncoder.check_files(d)
    enc = WanTextEncoder.load(d, dtype=torch.float32)
    assert torch.equal(enc.encode(["a cat"])[0], enc32.encode(["a cat"])[0])  # bit-exact: same weights, same calls


# ----------------------------------------------------------------------------- 5. tiny tokenizer / writer


def test_tiny_tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.join(tiny_dir, TOKENIZER_SUBDIR))
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.model_max_length == 512
    enc = tok(["a cat", NEG_ZH], padding="max_length", truncation=True, max_length=512,
              add_special_tokens=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert ids.shape == (2, 512)
    for row, m in zip(ids, mask):
        n = int(m.sum())
        assert row[n - 1] == 1 and (row[n:] == 0).all() and (row[:n - 1] > 2).all()
    assert tok.unk_token_id not in tok(clean_text(NEG_ZH))["input_ids"]
    assert tok.unk_token_id not in tok(NEG_ZH)["input_ids"]  # also uncleaned (full-width punctuation)
    assert tok.unk_token_id not in tok(clean_text("镜头晃动，" + NEG_ZH))["input_ids"]  # Wan2.1 I2V variant
    try:
        from wanport.config.models import DEFAULT_NEGATIVE_PROMPT
    except Exception:  # another module's constant; the spec text above is what counts
        DEFAULT_NEGATIVE_PROMPT = NEG_ZH
    assert DEFAULT_NEGATIVE_PROMPT == NEG_ZH


def test_tiny_writer_is_deterministic_and_atomic(tiny_dir, tmp_path, enc32):
    d = str(tmp_path / "again")
    cfg = write_tiny_t5(d, seed=0)
    write_tiny_t5(d, seed=0)  # rewriting over an existing one works
    assert sorted(os.listdir(d)) == ["google", T5_CHECKPOINT_NAME]
    assert sorted(os.listdir(os.path.join(d, "google"))) == ["umt5-xxl"]
    a, b = _wan_state(d), _wan_state(tiny_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert cfg == enc32.config
    out = enc32.encode(PROMPTS)
    for o in out:
        assert torch.isfinite(o).all() and o.std() > 0.5 and (o - o[0]).abs().max() > 0.1


def test_ready_4d_mask_path_gives_the_same_result(enc32, monkeypatch):
    """The fallback for transformers without the mask hook: a 4-D additive mask handed over."""
    import wanport.models.t5.encoder as encoder_module

    want = enc32.encode(PROMPTS[:2], batched=True)
    monkeypatch.setattr(encoder_module, "mask_is_hooked", lambda: False)
    got = enc32.encode(PROMPTS[:2], batched=True)
    for a, b in zip(got, want):
        # the same additive mask handed over in another form: at most a float32 reorder through the encoder
        assert _rel(a, b.double()) <= f32_bound(_t5_terms(enc32))
