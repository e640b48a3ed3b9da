"""wanport: Wan video diffusion on any accelerator.

The core is device-agnostic: it never imports a vendor package and never names a device
type. Fused operators and device utilities come from a backend plugin, resolved once at
start into a frozen op table (see ``wanport.registry``).
"""

__version__ = "0.1.0"
