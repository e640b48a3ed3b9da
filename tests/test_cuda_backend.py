"""The CUDA backend: plugin logic on the CPU; kernels, attention and the DiT on a GPU (marked,
skipped without one — run through the device tool, results in benchmarks/results/)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

from wanport.errors import BackendError
from wanport.models.dit import DiTConfig, WanDiT
from wanport.models.dit.requirements import dit_requirements
from wanport.precision import PRESETS
from wanport.registry import discover, resolve_ops
from wanport.testing import BackendConformance

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
triton_ok = importlib.util.find_spec("triton") is not None


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# ------------------------------------------------------------------ CPU: plugin logic

def test_discovery_imports_no_triton_or_vendor_package():
    code = ("import sys\nfrom wanport.registry import discover\nr = discover()\n"
            "assert 'cuda' in r.backends\n"
            "bad = [m for m in ('triton', 'flash_attn', 'sageattention', 'torch_npu') if m in sys.modules]\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_cuda_impls_declare_device_and_refuse_cpu():
    reg = discover()
    cuda = [i for i in reg.impls if i.backend == "cuda"]
    assert {i.kind for i in cuda} >= {"attention", "qk_norm_rope", "rms_norm", "layer_norm",
                                      "layer_norm_modulate", "gated_residual"}
    assert all(i.constraints.device_types == frozenset({"cuda"}) for i in cuda)
    # lossy: only when named, or (fp8_triton, fp8_cudnn) when the recipe asks quant.attention: fp8 / fp8_tensor
    assert [i.name for i in cuda if not i.exact and i.kind != "quant_linear"] == ["sageattn", "fp8_triton", "fp8_cudnn"]
    # the quantized Linears are lossy too, chosen only through the recipe's quant.dit scheme
    assert all(not i.exact and i.constraints.schemes for i in cuda if i.kind == "quant_linear")
    cfg = DiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=1)
    with pytest.raises(BackendError, match="runs on cuda"):
        resolve_ops(reg, reg.backends["reference"], dit_requirements(cfg, PRESETS["official"], "cpu"),
                    {"attention": "cuda.sdpa_cudnn"})


def _fake_modules(monkeypatch, present):
    """importlib.util.find_spec answering as if exactly the modules in ``present`` (plus the real
    ones outside the flash-attn-4 set) were installed."""
    import wanport_cuda.plugin as plugin

    pieces = {m for m, _ in plugin.FA4_PIECES} | {"nvidia_cutlass_dsl", "flash_attn_2_cuda"}
    real = plugin._has_module
    monkeypatch.setattr(plugin, "_has_module", lambda name: name in present if name in pieces else real(name))
    return plugin


def test_fa4_unavailable_names_each_missing_piece(monkeypatch):
    plugin = _fake_modules(monkeypatch, {"flash_attn.cute", "tvm_ffi", "nvidia_cutlass_dsl"})
    ok, why = plugin._fa4_available()
    assert not ok
    for pip in ("nvidia-cutlass-dsl-libs-core", "torch-c-dlpack-ext", "quack-kernels"):
        assert pip in why
    assert "flash-attn-4," not in why and "apache-tvm-ffi" not in why
    assert "dsl_packages" in why and "PYTHONPATH" in why  # the pip --target pitfall, named
    plugin = _fake_modules(monkeypatch, set())
    ok, why = plugin._fa4_available()
    assert not ok and "dsl_packages" not in why and "wanport[fa4]" in why


def test_fa4_present_without_gpu_and_fa2_not_confused_with_fa4(monkeypatch):
    plugin = _fake_modules(monkeypatch, {m for m, _ in __import__("wanport_cuda.plugin").plugin.FA4_PIECES})
    monkeypatch.setattr(plugin, "_cutlass_toolkit_flavour", lambda: False)
    ok, why = plugin._fa4_available()  # every package, but no -libs-cu12/-cu13: import cutlass would raise
    assert not ok and "nvidia-cutlass-dsl-libs-cu13" in why
    monkeypatch.setattr(plugin, "_cutlass_toolkit_flavour", lambda: True)
    monkeypatch.setattr(plugin.torch.cuda, "is_available", lambda: False)
    ok, why = plugin._fa4_available()
    assert not ok and "no CUDA device" in why
    monkeypatch.setattr(plugin.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(plugin.torch.cuda, "get_device_capability", lambda *a: (8, 0))
    ok, why = plugin._fa4_available()
    assert not ok and "sm80" in why
    monkeypatch.setattr(plugin.torch.cuda, "get_device_capability", lambda *a: (9, 0))
    assert plugin._fa4_available() == (True, "")
    # flash-attn-4's namespace package "flash_attn" is not FlashAttention 2
    ok, why = plugin._flash_attn2_available()
    assert not ok and "FlashAttention 2" in why


def test_resolver_prefers_fa4_and_falls_back_to_cudnn(monkeypatch):
    """With every implementation's availability forced, the exact attention the resolver picks
    for the DiT is flash_attn4 when it is available and cuDNN otherwise; ring attention (LSE)
    takes flash_attn4 or cudnn_lse."""
    import dataclasses

    reg = discover()
    cfg = DiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=1)
    for fa4_ok, plain, with_lse in ((True, "cuda.flash_attn4", "cuda.flash_attn4"),
                                    (False, "cuda.sdpa_cudnn", "cuda.cudnn_lse")):
        impls = []
        for i in reg.impls:
            if i.backend == "cuda":
                ok = fa4_ok if i.name == "flash_attn4" else i.name not in ("flash_attn3", "flash_attn2", "sageattn")
                i = dataclasses.replace(i, available=(lambda ok=ok: (ok, "" if ok else "forced off")),
                                        load=lambda: (lambda *a, **k: None))  # no GPU here: nothing runs
            impls.append(i)
        forced = dataclasses.replace(reg, impls=tuple(impls))
        table = resolve_ops(forced, forced.backends["cuda"], dit_requirements(cfg, PRESETS["official"], "cuda"))
        assert table.self_attention.impl == plain
        assert table.cross_attention.impl == "cuda.sdpa_cudnn"  # flash_attn4 only by default where it is faster
        reqs = dit_requirements(cfg, PRESETS["official"], "cuda", ring_lse=True)
        assert resolve_ops(forced, forced.backends["cuda"], reqs).self_attention.impl == with_lse


def test_has_module_finds_submodules_without_importing(tmp_path, monkeypatch):
    import wanport_cuda.plugin as plugin

    (tmp_path / "nspkg_x" / "cute").mkdir(parents=True)
    (tmp_path / "nspkg_x" / "cute" / "__init__.py").write_text("raise RuntimeError('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert plugin._has_module("nspkg_x") and plugin._has_module("nspkg_x.cute")
    assert not plugin._has_module("nspkg_x.other") and not plugin._has_module("no_such_top_level_pkg.cute")
    assert "nspkg_x.cute" not in sys.modules
    (tmp_path / "cutlass" / "_mlir" / "_mlir_libs").mkdir(parents=True)
    (tmp_path / "cutlass" / "__init__.py").write_text("raise RuntimeError('imported')\n")
    assert not plugin._cutlass_toolkit_flavour()
    (tmp_path / "cutlass" / "_mlir" / "_mlir_libs" / "_cutlass_ir.cu13.cpython-312-x86_64-linux-gnu.so").write_text("")
    assert plugin._cutlass_toolkit_flavour() and "cutlass" not in sys.modules


def test_kv_lens_are_honoured_by_slicing():
    from wanport.ops.checks import per_sample_keys as _per_length
    from wanport.reference.attention import attention_math

    calls = []

    def core(q, k, v, scale, return_lse):
        calls.append(k.shape[1])
        return attention_math(q, k, v, scale=scale, return_lse=return_lse)

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 6, 2, 16, generator=g) for _ in range(3))
    ref = attention_math(q, k, v, scale=0.25, kv_lens=[6, 4])
    out = _per_length(core, q, k, v, 0.25, [6, 4], False)
    assert calls == [6, 4] and rel(out, ref) < 1e-6
    calls.clear()
    _per_length(core, q, k, v, 0.25, [3, 3], False)
    assert calls == [3]  # equal lengths: one call on sliced keys
    calls.clear()
    _per_length(core, q, k, v, 0.25, None, False)
    assert calls == [6]
    with pytest.raises(ValueError):
        _per_length(core, q, k, v, 0.25, [0, 6], False)


@pytest.mark.skipif(not triton_ok, reason="triton not installed")
def test_modulation_broadcast_shapes_checked():
    from wanport_cuda._rows import modulation_strides

    x = torch.empty(2, 5, 8)
    assert modulation_strides(torch.empty(2, 1, 8), x) == (8, 0)
    assert modulation_strides(torch.empty(2, 5, 8), x) == (40, 8)
    assert modulation_strides(torch.empty(1, 1, 8), x) == (0, 0)
    with pytest.raises(ValueError):
        modulation_strides(torch.empty(2, 3, 8), x)


# ------------------------------------------------------------------ GPU


class TestCudaConformance(BackendConformance):
    """Every cuda implementation through the conformance kit (wanport.testing): signature, outputs vs
    the float64 reference over the contract's small shapes, declared refusals, the runtime. On a host
    without a GPU each test skips with the backend's reason; the Wan-shape kernel tests below stay."""

    backend = "cuda"


def _impl(kind, name):
    reg = discover()
    impl = next(i for i in reg.impls if i.backend == "cuda" and i.kind == kind and i.name == name)
    ok, why = impl.available()
    if not ok:
        pytest.skip(why)
    fn = impl.load()
    return impl, fn


@gpu
@pytest.mark.parametrize("c,heads", [(5120, 40), (1536, 12)])
@pytest.mark.parametrize("wdtype", [torch.float32, torch.bfloat16])
def test_qk_norm_rope_kernel(c, heads, wdtype):
    from wanport.models.dit.rope import rope_tables
    from wanport.ops.composites import compose_qk_norm_rope
    from wanport.reference.rms_norm import rms_norm
    from wanport.reference.rotary import rotary

    impl, fn = _impl("qk_norm_rope", "triton")
    dev = torch.device("cuda")
    grid = (3, 6, 10)
    s = 180
    q = (2 * torch.randn(2, s, c, device=dev)).bfloat16()
    k = (2 * torch.randn(2, s, c, device=dev)).bfloat16()
    wq = (1 + 0.1 * torch.randn(c, device=dev)).to(wdtype)
    wk = (1 + 0.1 * torch.randn(c, device=dev)).to(wdtype)
    cos, sin = (t.to(dev) for t in rope_tables(grid, c // heads))
    out_q, out_k = fn(q, k, wq, wk, 1e-6, cos, sin, heads, torch.bfloat16)
    ref_q, ref_k = compose_qk_norm_rope(rms_norm, rotary)(q, k, wq, wk, 1e-6, cos, sin, heads, torch.bfloat16)
    assert out_q.shape == (2, s, heads, c // heads) and out_q.dtype == torch.bfloat16
    assert rel(out_q, ref_q) < impl.tolerance and rel(out_k, ref_k) < impl.tolerance
    # against float64 math
    q64 = q.double()
    n64 = q64 * torch.rsqrt(q64.pow(2).mean(-1, keepdim=True) + 1e-6) * wq.double()
    r64 = rotary(n64.view(2, s, heads, -1), n64.view(2, s, heads, -1), cos.double(), sin.double())[0]
    assert rel(out_q, r64) < impl.tolerance


@gpu
@pytest.mark.parametrize("xdtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("per_token", [False, True])
def test_layer_norm_modulate_kernel(xdtype, per_token):
    from wanport.reference.layer_norm_modulate import layer_norm_modulate as ref

    impl, fn = _impl("layer_norm_modulate", "triton")
    dev = torch.device("cuda")
    x = (1 + 3 * torch.randn(2, 300, 5120, device=dev)).to(xdtype)
    rows = 300 if per_token else 1
    shift = torch.randn(2, rows, 5120, device=dev)
    scale = 0.3 * torch.randn(2, rows, 5120, device=dev)
    for out_dtype in (None, torch.bfloat16):
        out = fn(x, shift, scale, 1e-6, out_dtype=out_dtype)
        r = ref(x, shift, scale, 1e-6, out_dtype=out_dtype)
        assert out.dtype == r.dtype
        assert rel(out, r) < (1e-5 if out.dtype == torch.float32 and xdtype == torch.float32 else impl.tolerance)


@gpu
@pytest.mark.parametrize("per_token", [False, True])
def test_add_layer_norm_modulate_kernel_is_the_add_then_the_norm(per_token):
    """The fused residual add + adaLN norm gives the bits of x + y followed by the layer_norm_modulate
    kernel's norm (up to the order of the row sums), and writes the sum into x's storage."""
    _, lnm = _impl("layer_norm_modulate", "triton")
    _, fn = _impl("add_layer_norm_modulate", "triton")
    dev = torch.device("cuda")
    x = 1 + 3 * torch.randn(2, 300, 5120, device=dev)
    y = torch.randn(2, 300, 5120, device=dev).bfloat16()
    rows = 300 if per_token else 1
    shift = torch.randn(2, rows, 5120, device=dev)
    scale = 0.3 * torch.randn(2, rows, 5120, device=dev)
    expect_sum = x + y
    expect = lnm(expect_sum, shift, scale, 1e-6, out_dtype=torch.bfloat16)
    ptr = x.data_ptr()
    total, h = fn(x, y, shift, scale, 1e-6, out_dtype=torch.bfloat16)
    # the sum bit for bit; the norm within its float32 rounding (two compiled kernels may sum a row in a
    # different order), then one bf16 rounding: at most one bf16 step apart
    assert total.data_ptr() == ptr and torch.equal(total, expect_sum)
    assert h.dtype == torch.bfloat16 and (h.float() - expect.float()).abs().max() <= 2 ** -7 * expect.float().abs().max()
    assert rel(h, expect) < 2 ** -8
    # a bf16 stream with a float32 branch promotes: a new float32 sum, x untouched
    xb = x.bfloat16()
    yf = y.float()
    total, h = fn(xb, yf, shift, scale, 1e-6)
    assert total.dtype == torch.float32 and total.data_ptr() != xb.data_ptr()
    assert torch.equal(total, xb + yf) and rel(h, lnm(xb + yf, shift, scale, 1e-6)) < 1e-6


@gpu
def test_fp8_norm_quantizer_with_the_residual_add_is_the_add_then_the_quantizer():
    _impl("quant_linear", "fp8_rowwise_scaled_mm")  # skips where FP8 GEMMs are unavailable
    from wanport_cuda.quant_rows import ln_modulate_quant_fp8

    dev = torch.device("cuda")
    x = 1 + 3 * torch.randn(1, 257, 5120, device=dev)
    y = torch.randn(1, 257, 5120, device=dev).bfloat16()
    shift, scale = torch.randn(1, 1, 5120, device=dev), 0.3 * torch.randn(1, 1, 5120, device=dev)
    expect_sum = x + y
    q0, s0 = ln_modulate_quant_fp8(expect_sum, shift, scale, 1e-6, torch.bfloat16)
    ptr = x.data_ptr()
    total, q, s = ln_modulate_quant_fp8(x, shift, scale, 1e-6, torch.bfloat16, y=y)
    assert total.data_ptr() == ptr and torch.equal(total, expect_sum)
    assert torch.equal(q.view(torch.uint8), q0.view(torch.uint8)) and torch.equal(s, s0)


@gpu
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_and_rms_norm_kernels(affine):
    from wanport.reference.layer_norm import layer_norm as ref_ln
    from wanport.reference.rms_norm import rms_norm as ref_rms

    _, ln = _impl("layer_norm", "triton")
    impl, rms = _impl("rms_norm", "triton")
    dev = torch.device("cuda")
    x = 2 + 3 * torch.randn(1, 257, 5120, device=dev)
    w = 1 + 0.1 * torch.randn(5120, device=dev) if affine else None
    b = 0.1 * torch.randn(5120, device=dev) if affine else None
    assert rel(ln(x, w, b, 1e-6), ref_ln(x, w, b, 1e-6)) < 1e-5
    assert rel(ln(x, w, b, 1e-6, out_dtype=torch.bfloat16), ref_ln(x, w, b, 1e-6, out_dtype=torch.bfloat16)) < 1e-2
    xb = x.bfloat16()
    w1 = 1 + 0.1 * torch.randn(5120, device=dev)
    out = rms(xb, w1, 1e-6, out_dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16
    assert rel(out, ref_rms(xb, w1, 1e-6)) < impl.tolerance
    assert rms(xb, w1, 1e-6).dtype == torch.float32


@gpu
def test_gated_residual_kernel_in_place_and_promoting():
    from wanport.reference.gated_residual import gated_residual as ref

    _, fn = _impl("gated_residual", "triton")
    dev = torch.device("cuda")
    x = torch.randn(1, 333, 5120, device=dev)
    y = torch.randn(1, 333, 5120, device=dev).bfloat16()
    g = torch.randn(1, 1, 5120, device=dev)
    expect = ref(x, y, g)
    ptr = x.data_ptr()
    out = fn(x, y, g)
    assert out.data_ptr() == ptr and rel(out, expect) < 1e-6  # written into the float32 stream
    xb = torch.randn(1, 333, 5120, device=dev).bfloat16()
    out = fn(xb, y, g)
    assert out.dtype == torch.float32 and rel(out, ref(xb, y, g)) < 1e-6


@gpu
def test_linear_gelu_epilogue():
    from wanport.reference.linear_gelu import linear_gelu as ref

    impl, fn = _impl("linear_gelu", "cublaslt_epilogue")
    dev = torch.device("cuda")
    x = torch.randn(1, 1000, 1536, device=dev).bfloat16()
    w = (torch.randn(8960, 1536, device=dev) / 1536 ** 0.5).bfloat16()
    b = (0.1 * torch.randn(8960, device=dev)).bfloat16()
    out = fn(x, w, b)
    assert out.shape == (1, 1000, 8960) and out.dtype == torch.bfloat16
    exact = torch.nn.functional.gelu(x.double() @ w.double().t() + b.double(), approximate="tanh")
    assert rel(out, exact) < impl.tolerance
    assert rel(out, ref(x, w, b)) < impl.tolerance


@gpu
@pytest.mark.parametrize("name", ["flash_attn4", "sdpa_cudnn", "sdpa_flash", "sdpa_efficient", "cudnn_lse",
                                  "flash_lse"])
def test_attention_impls(name):
    from wanport.reference.attention import attention_math

    impl, fn = _impl("attention", name)
    dev = torch.device("cuda")
    q, k, v = (torch.randn(1, 777, 4, 128, device=dev).bfloat16() for _ in range(3))
    out = fn(q, k, v, scale=128 ** -0.5)
    ref, lse = attention_math(q.double(), k.double(), v.double(), scale=128 ** -0.5, return_lse=True)
    assert out.shape == q.shape and out.dtype == torch.bfloat16
    assert rel(out, ref) < 1e-2
    out2 = fn(q, k, v, scale=128 ** -0.5, kv_lens=[500])
    assert rel(out2, attention_math(q.double(), k.double(), v.double(), scale=128 ** -0.5, kv_lens=[500])) < 1e-2
    if impl.constraints.lse:
        o, l = fn(q, k, v, scale=128 ** -0.5, return_lse=True)
        assert l.shape == (1, 4, 777) and l.dtype == torch.float32
        assert rel(l, lse) < 1e-4


@gpu
def test_dit_cuda_backend_matches_reference_ops():
    """The whole DiT with the cuda op table vs the reference op table, same weights, same GPU."""
    reg = discover()
    dev = torch.device("cuda")
    cfg = DiTConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=4)
    policy = PRESETS["official"]
    reqs = dit_requirements(cfg, policy, "cuda")
    fast = resolve_ops(reg, reg.backends["cuda"], reqs)
    ref = resolve_ops(reg, reg.backends["cuda"], reqs,
                      {k: "reference." + v for k, v in
                       {"attention": "math", "rotary": "real_tables", "rms_norm": "torch", "layer_norm": "torch",
                        "layer_norm_modulate": "torch", "gated_residual": "torch", "linear_gelu": "torch"}.items()}
                      | {"qk_norm_rope": "composed"})
    fa4 = next(i for i in reg.impls if i.backend == "cuda" and i.name == "flash_attn4").available()[0]
    assert fast.self_attention.impl == ("cuda.flash_attn4" if fa4 else "cuda.sdpa_cudnn")
    assert fast.cross_attention.impl == "cuda.sdpa_cudnn"
    assert fast.qk_norm_rope.impl == "cuda.triton"
    assert fast.linear_gelu.impl == "cuda.cublaslt_epilogue"
    assert ref.qk_norm_rope.impl.startswith("composed(reference")
    model = WanDiT.random(cfg, policy, dev, seed=3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 5, 30, 52, generator=g).to(dev)
    ctx = torch.randn(1, 512, 4096, generator=g).to(dev).bfloat16()
    with torch.no_grad():
        a = model.bind_ops(fast)(x, torch.tensor([900]), ctx)
        b = model.bind_ops(ref)(x, torch.tensor([900]), ctx)
    cos = torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()
    assert cos >= 0.9999, cos
