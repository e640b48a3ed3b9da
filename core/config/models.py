"""Known models: architecture numbers and official sampling defaults (spec §1.2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)


@dataclass(frozen=True)
class ModelPreset:
    name: str
    family: str  # "wan2.1"
    task: str  # "t2v"
    model_type: str  # config.json model_type
    #: expected config.json numbers (None: any, e.g. tiny checkpoints)
    arch: Optional[Dict[str, int]]
    vae_stride: Tuple[int, int, int] = (4, 8, 8)
    patch_size: Tuple[int, int, int] = (1, 2, 2)
    z_dim: int = 16
    steps: int = 50
    shift: float = 5.0
    guide_scale: float = 5.0
    frame_num: int = 81
    fps: int = 16
    size: str = "832*480"
    #: sizes the official code accepts for this model (others run, with a warning)
    official_sizes: Tuple[str, ...] = ()
    notes: str = ""
    extra: Dict[str, str] = field(default_factory=dict)

    @property
    def spatial_multiple(self) -> int:
        return self.vae_stride[1] * self.patch_size[1]


_SIZES_14B = ("1280*720", "720*1280", "832*480", "480*832")

MODELS: Dict[str, ModelPreset] = {
    p.name: p
    for p in (
        ModelPreset(
            name="wan2.1-t2v-1.3b",
            family="wan2.1",
            task="t2v",
            model_type="t2v",
            arch={"dim": 1536, "ffn_dim": 8960, "num_heads": 12, "num_layers": 30, "in_dim": 16, "out_dim": 16},
            official_sizes=("832*480", "480*832"),
            notes="official README recommends shift 8-12 and guide scale 6",
        ),
        ModelPreset(
            name="wan2.1-t2v-14b",
            family="wan2.1",
            task="t2v",
            model_type="t2v",
            arch={"dim": 5120, "ffn_dim": 13824, "num_heads": 40, "num_layers": 40, "in_dim": 16, "out_dim": 16},
            official_sizes=_SIZES_14B,
        ),
        ModelPreset(
            name="wan2.1-t2v-tiny",
            family="wan2.1",
            task="t2v",
            model_type="t2v",
            arch=None,
            steps=8,
            frame_num=17,
            size="256*256",
            notes="tiny random-weight checkpoint written by `wanport make-tiny --model wan2.1-t2v`",
        ),
    )
}

#: `wanport make-tiny --model` names -> the preset a tiny checkpoint of that layout runs as
TINY_LAYOUTS = {"wan2.1-t2v": "wan2.1-t2v-tiny"}
