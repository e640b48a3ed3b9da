"""Recipes: schema (dataclasses), YAML loading with overrides, validation into a run plan.

This package imports no torch (``wanport nproc`` and ``run.sh`` stay fast); the semantic
validation that needs dtypes lives in :mod:`wanport.config.validate`.
"""

from .loader import apply_overrides, build_config, load_recipe, read_yaml
from .models import DEFAULT_NEGATIVE_PROMPT, MODELS, TINY_LAYOUTS, ModelPreset
from .schema import TINY_RECIPE, OutputConfig, RunConfig, SampleConfig

__all__ = [
    "apply_overrides",
    "build_config",
    "load_recipe",
    "read_yaml",
    "DEFAULT_NEGATIVE_PROMPT",
    "MODELS",
    "TINY_LAYOUTS",
    "ModelPreset",
    "TINY_RECIPE",
    "OutputConfig",
    "RunConfig",
    "SampleConfig",
]
