"""The reference backend: pure PyTorch, runs on any device, the numerical ground truth.

Its op implementations are the executable form of the contracts in ``wanport.ops.contracts``
and serve as fallbacks on every other backend. Its runtime is the host CPU.
"""
