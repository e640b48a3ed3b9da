"""wanport's Ascend (torch_npu) backend plugin (entry point ``wanport.backends: ascend``)."""
