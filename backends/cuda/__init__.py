"""wanport's CUDA backend plugin (entry point ``wanport.backends: cuda``)."""
