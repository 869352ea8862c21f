"""imgclf: config-driven image classification pipeline."""
