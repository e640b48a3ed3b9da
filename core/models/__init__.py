"""Model components: the Wan DiT, the VAEs, the text encoder."""
