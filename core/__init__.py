"""wanport: Wan video diffusion on any accelerator.

The core is device-agnostic: it never imports a vendor package and never names a device
type. Fused operators and device utilities come from a backend plugin, resolved once at
start into a frozen op table (see ``wanport.registry``).

``wanport.Pipeline`` (load once, generate many) is imported on first use, so ``import wanport``
stays light.
"""

__version__ = "0.1.0"


def __getattr__(name):
    if name in ("Pipeline", "GenerateResult"):
        from .pipeline import api

        return getattr(api, name)
    raise AttributeError("module 'wanport' has no attribute %r" % name)


__all__ = ["Pipeline", "GenerateResult", "__version__"]
