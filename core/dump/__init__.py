"""Cross-backend precision tooling: ``wanport dump`` records a run (per-block statistics and
fingerprints for every block and step, chosen full tensors, latents, the video) in a versioned
folder; ``wanport compare`` measures two dumps against each other offline."""
