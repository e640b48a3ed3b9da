"""Probe: do float32 attention (each PyTorch SDPA backend) and a float32 matmul on this GPU run in full
float32, or on TF32 tensor cores? Relative L2 against float64 at a tiny Wan shape (B 1, 2 heads, 48
tokens, head dim 128): ~1e-7 is float32, ~1e-3 would be TF32. Asked when the tiny checkpoint's
video under Ulysses differed from the one-GPU video by 1e-3 (benchmarks/parallel_video_check.py).

    python3 benchmarks/fp32_attention_probe.py
"""
import torch, torch.nn.functional as F, json
from torch.nn.attention import sdpa_kernel, SDPBackend
torch.manual_seed(0)
q,k,v=[torch.randn(1,2,48,128,device="cuda") for _ in range(3)]
ref=F.scaled_dot_product_attention(q.double(),k.double(),v.double())
out={}
for name,b in [("efficient",SDPBackend.EFFICIENT_ATTENTION),("math",SDPBackend.MATH),("cudnn",SDPBackend.CUDNN_ATTENTION),("flash",SDPBackend.FLASH_ATTENTION)]:
    try:
        with sdpa_kernel([b]):
            o=F.scaled_dot_product_attention(q,k,v)
        out[name]=float((o.double()-ref).norm()/ref.norm())
    except Exception as e:
        out[name]=str(e)[:80]
a=torch.randn(48,512,device="cuda"); w=torch.randn(512,512,device="cuda")
out["matmul_fp32"]=float(((a@w).double()-(a.double()@w.double())).norm()/(a.double()@w.double()).norm())
out["allow_tf32"]=torch.backends.cuda.matmul.allow_tf32
print(json.dumps(out))
