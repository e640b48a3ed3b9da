"""The recipes of the published step-distilled setups (4 steps, no CFG), for ``wanport models`` and
the README. Each runs ``sample.solver: distill`` with ``denoising_step_list [1000, 750, 500, 250]``,
shift 5 and ``guide_scale 1.0`` (no unconditional forward), as LightX2V's distill configs do."""

from __future__ import annotations

#: (recipe under recipes/, model preset, what it runs)
DISTILLED_RECIPES = (
    ("wan2.1-t2v-14b-distill-lora.yaml", "wan2.1-t2v-14b", "4-step distill LoRA (rank 64) over the base checkpoint"),
    ("wan2.1-t2v-14b-distill.yaml", "wan2.1-t2v-14b", "merged 4-step distilled checkpoint folder"),
    ("wan2.1-i2v-14b-480p-distill-lora.yaml", "wan2.1-i2v-14b-480p",
     "4-step distill LoRA (rank 64) over the base checkpoint"),
    ("wan2.1-i2v-14b-480p-distill.yaml", "wan2.1-i2v-14b-480p", "merged 4-step distilled checkpoint folder"),
    ("wan2.2-t2v-a14b-distill-lora.yaml", "wan2.2-t2v-a14b",
     "a 4-step distill LoRA per expert (high / low), boundary 0.875: steps 1-2 high, 3-4 low"),
    ("wan2.2-i2v-a14b-distill-lora.yaml", "wan2.2-i2v-a14b",
     "a 4-step distill LoRA per expert (high / low), boundary 0.9: steps 1-2 high, 3-4 low"),
    ("tiny-t2v-distill-lora.yaml", "wan2.1-t2v-tiny", "CPU/CI: tiny checkpoint, one merged + one unmerged tiny LoRA"),
    ("tiny-wan2.2-t2v-a14b-distill-lora.yaml", "wan2.2-t2v-a14b-tiny", "CPU/CI: tiny two-expert checkpoint, a LoRA "
                                                                       "per expert"),
)

__all__ = ["DISTILLED_RECIPES"]
