"""LoRA adapters on the Wan DiT: recipe entries, key formats, inspection, merge and side path.

* :mod:`.spec` -- the recipe's ``lora:`` entries (no torch: the config package imports it);
* :mod:`.formats` -- the three key spellings people have (diffusers/PEFT, official-module names
  as used by LightX2V and ComfyUI, kohya-style flattened names) mapped onto our module names;
* :mod:`.files` -- a LoRA file read and checked (header, dtypes, finite values);
* :mod:`.match` -- every key matched against the model the recipe builds, before any weight loads;
* :mod:`.merge` -- deltas added in float32 as the DiT's tensors are read, rounded once;
* :mod:`.side_path` -- unmerged: a low-rank side path on the Linear layers, strengths mutable;
* :mod:`.weights` -- the weight-source wrapper that does both, and the report;
* :mod:`.tiny` -- tiny LoRA files in every format (``wanport make-tiny --lora``).

This package's ``__init__`` imports nothing, so the recipe loader stays torch-free.
"""

__all__ = ["set_lora_strengths", "lora_strengths"]


def __getattr__(name):  # lazy: importing the package stays torch-free
    if name in __all__:
        from . import side_path

        return getattr(side_path, name)
    raise AttributeError("module 'wanport.lora' has no attribute %r" % name)
