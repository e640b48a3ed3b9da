"""Multi-device parallelism on torch.distributed: CFG, Ulysses and ring sequence parallel, a
spatially split VAE, FSDP. Every group is built with the active backend's process-group name
(nccl / hccl / gloo) and a bounded timeout."""
