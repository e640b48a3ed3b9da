"""Feature caching of the DiT's blocks across denoising steps (TeaCache, MagCache, first-block
cache): lossy, opt-in (``cache.method``), correct under CFG, sequence parallelism and the Wan2.2
expert switch. docs/caching.md describes the methods, their published defaults and the
parallel guarantees. Importing this package loads no torch."""
