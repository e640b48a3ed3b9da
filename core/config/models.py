"""Known models: architecture numbers and official sampling defaults (docs/wan-model.md §1.2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple, Union

DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
#: Wan2.1 I2V prefixes the default negative prompt with "camera shake" (wan_i2v_14B.py);
#: Wan2.2 I2V-A14B does not.
I2V21_NEGATIVE_PROMPT = "镜头晃动，" + DEFAULT_NEGATIVE_PROMPT

#: The two experts of a Wan2.2 A14B checkpoint: (name, subfolder). The high-noise expert runs
#: while the timestep is >= boundary * 1000, then the low-noise one.
EXPERTS = (("high_noise", "high_noise_model"), ("low_noise", "low_noise_model"))

GuideScale = Union[float, Tuple[float, float]]


@dataclass(frozen=True)
class ModelPreset:
    name: str
    family: str  # "wan2.1" | "wan2.2"
    task: str  # "t2v" | "i2v" | "ti2v"
    model_type: str  # config.json model_type
    #: expected config.json numbers (None: any, e.g. tiny checkpoints)
    arch: Optional[Dict[str, int]]
    vae_stride: Tuple[int, int, int] = (4, 8, 8)
    patch_size: Tuple[int, int, int] = (1, 2, 2)
    z_dim: int = 16
    #: "wan2.1" (Wan2.1_VAE.pth) or "wan2.2" (Wan2.2_VAE.pth)
    vae: str = "wan2.1"
    steps: int = 50
    shift: float = 5.0
    #: default shift for particular sizes (Wan2.1 I2V: 3.0 at 480p)
    shift_by_size: Dict[str, float] = field(default_factory=dict)
    #: one CFG scale, or (low-noise, high-noise) for two-expert models (official tuple order)
    guide_scale: GuideScale = 5.0
    frame_num: int = 81
    fps: int = 16
    #: W*H; for image-conditioned runs the maximum area, the aspect ratio follows the image
    size: str = "832*480"
    #: sizes the official code accepts for this model (others run, with a warning)
    official_sizes: Tuple[str, ...] = ()
    #: input image: "none", "required" (i2v) or "optional" (ti2v: image-to-video when given)
    image: str = "none"
    #: Wan2.1 I2V: CLIP image tokens feed the DiT's image-context cross-attention
    clip: bool = False
    #: two experts (high_noise_model/, low_noise_model/) switched at boundary * 1000
    boundary: Optional[float] = None
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    notes: str = ""
    extra: Dict[str, str] = field(default_factory=dict)

    @property
    def spatial_multiple(self) -> int:
        return self.vae_stride[1] * self.patch_size[1]

    @property
    def experts(self) -> bool:
        return self.boundary is not None

    @property
    def per_token_timesteps(self) -> bool:
        """TI2V conditions every token on its own timestep (the first frame's are 0 with an image)."""
        return self.model_type == "ti2v"

    def default_shift(self, width: int, height: int) -> float:
        return self.shift_by_size.get("%d*%d" % (width, height), self.shift)

    def describe_guide(self) -> str:
        g = self.guide_scale
        return "%g" % g if not isinstance(g, tuple) else "(low %g, high %g)" % g


_SIZES_14B = ("1280*720", "720*1280", "832*480", "480*832")
_SIZES_TI2V = ("1280*704", "704*1280")
_ARCH_14B = {"dim": 5120, "ffn_dim": 13824, "num_heads": 40, "num_layers": 40}
_SHIFT_480P = {"832*480": 3.0, "480*832": 3.0}
_TINY_NOTE = "tiny random-weight checkpoint written by `wanport make-tiny --model %s`"

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
        # ------------------------------------------------------------------ Wan2.1 I2V-14B
        # one config (wan_i2v_14B.py), two weight sets; the size is the maximum area, shift 3.0 at 480p
        ModelPreset(
            name="wan2.1-i2v-14b-480p",
            family="wan2.1",
            task="i2v",
            model_type="i2v",
            arch=dict(_ARCH_14B, in_dim=36, out_dim=16),
            steps=40,
            shift=5.0,
            shift_by_size=_SHIFT_480P,
            size="832*480",
            official_sizes=_SIZES_14B,
            image="required",
            clip=True,
            negative_prompt=I2V21_NEGATIVE_PROMPT,
            notes="Wan-AI/Wan2.1-I2V-14B-480P",
        ),
        ModelPreset(
            name="wan2.1-i2v-14b-720p",
            family="wan2.1",
            task="i2v",
            model_type="i2v",
            arch=dict(_ARCH_14B, in_dim=36, out_dim=16),
            steps=40,
            shift=5.0,
            shift_by_size=_SHIFT_480P,
            size="1280*720",
            official_sizes=_SIZES_14B,
            image="required",
            clip=True,
            negative_prompt=I2V21_NEGATIVE_PROMPT,
            notes="Wan-AI/Wan2.1-I2V-14B-720P",
        ),
        ModelPreset(
            name="wan2.1-i2v-tiny",
            family="wan2.1",
            task="i2v",
            model_type="i2v",
            arch=None,
            steps=8,
            shift=5.0,
            shift_by_size=_SHIFT_480P,
            frame_num=17,
            size="256*256",
            image="required",
            clip=True,
            negative_prompt=I2V21_NEGATIVE_PROMPT,
            notes=_TINY_NOTE % "wan2.1-i2v",
        ),
        # ------------------------------------------------------------------ Wan2.2 A14B (two experts)
        ModelPreset(
            name="wan2.2-t2v-a14b",
            family="wan2.2",
            task="t2v",
            model_type="t2v",
            arch=dict(_ARCH_14B, in_dim=16, out_dim=16),
            steps=40,
            shift=12.0,
            guide_scale=(3.0, 4.0),
            boundary=0.875,
            size="1280*720",
            official_sizes=_SIZES_14B,
            notes="Wan-AI/Wan2.2-T2V-A14B: high-noise expert for t >= 875, then low-noise",
        ),
        ModelPreset(
            name="wan2.2-t2v-a14b-tiny",
            family="wan2.2",
            task="t2v",
            model_type="t2v",
            arch=None,
            steps=8,
            shift=12.0,
            guide_scale=(3.0, 4.0),
            boundary=0.875,
            frame_num=17,
            size="256*256",
            notes=_TINY_NOTE % "wan2.2-t2v-a14b",
        ),
        ModelPreset(
            name="wan2.2-i2v-a14b",
            family="wan2.2",
            task="i2v",
            model_type="i2v",
            arch=dict(_ARCH_14B, in_dim=36, out_dim=16),
            steps=40,
            shift=5.0,
            guide_scale=(3.5, 3.5),
            boundary=0.900,
            size="1280*720",
            official_sizes=_SIZES_14B,
            image="required",
            notes="Wan-AI/Wan2.2-I2V-A14B: high-noise expert for t >= 900; no CLIP",
        ),
        ModelPreset(
            name="wan2.2-i2v-a14b-tiny",
            family="wan2.2",
            task="i2v",
            model_type="i2v",
            arch=None,
            steps=8,
            shift=5.0,
            guide_scale=(3.5, 3.5),
            boundary=0.900,
            frame_num=17,
            size="256*256",
            image="required",
            notes=_TINY_NOTE % "wan2.2-i2v-a14b",
        ),
        # ------------------------------------------------------------------ Wan2.2 TI2V-5B
        ModelPreset(
            name="wan2.2-ti2v-5b",
            family="wan2.2",
            task="ti2v",
            model_type="ti2v",
            arch={"dim": 3072, "ffn_dim": 14336, "num_heads": 24, "num_layers": 30, "in_dim": 48, "out_dim": 48},
            vae_stride=(4, 16, 16),
            z_dim=48,
            vae="wan2.2",
            steps=50,
            shift=5.0,
            guide_scale=5.0,
            frame_num=121,
            fps=24,
            size="1280*704",
            official_sizes=_SIZES_TI2V,
            image="optional",
            notes="Wan-AI/Wan2.2-TI2V-5B: text-to-video, or image-to-video with `image:`",
        ),
        ModelPreset(
            name="wan2.2-ti2v-5b-tiny",
            family="wan2.2",
            task="ti2v",
            model_type="ti2v",
            arch=None,
            vae_stride=(4, 16, 16),
            z_dim=48,
            vae="wan2.2",
            steps=8,
            shift=5.0,
            frame_num=17,
            fps=24,
            size="256*256",
            image="optional",
            notes=_TINY_NOTE % "wan2.2-ti2v-5b",
        ),
    )
}

#: `wanport make-tiny --model` names -> the preset a tiny checkpoint of that layout runs as
TINY_LAYOUTS = {
    "wan2.1-t2v": "wan2.1-t2v-tiny",
    "wan2.1-i2v": "wan2.1-i2v-tiny",
    "wan2.2-t2v-a14b": "wan2.2-t2v-a14b-tiny",
    "wan2.2-i2v-a14b": "wan2.2-i2v-a14b-tiny",
    "wan2.2-ti2v-5b": "wan2.2-ti2v-5b-tiny",
}
