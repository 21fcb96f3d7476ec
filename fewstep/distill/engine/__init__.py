"""The training engine around the loop: batches, teacher cache, optimizers, precision,
checkpoints, distributed training, run logs."""
