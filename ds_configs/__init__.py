"""DeepSpeed JSON templates (ZeRO / precision blocks only; batch, lr and precision come from the run config)."""
