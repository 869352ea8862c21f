"""Training: the loop (engine.py), the run from start to finish (lifecycle.py), fine-tuning strategies
(finetune.py), resumable checkpoints (checkpoint.py), optimisers and schedules (optimizers.py), the learning-rate
finder (lr_find.py) and DDP under torchrun (distributed.py). Nothing after training imports it."""
