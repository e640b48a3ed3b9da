"""Benchmarks (``wanport bench ...``): timings through the backend runtime, JSON + markdown out."""
