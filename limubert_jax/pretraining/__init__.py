"""Self-supervised pretraining: the jitted, sharded train/eval steps (`steps`), the
optimizers including BertAdam's warmup schedule and freezing (`optim`), the metrics
writer (`metrics`: metrics.jsonl and TensorBoard), and the epoch loop
with validation, checkpoints, metrics and plots (`trainer`).

May import: runtime, data, models, io, export.
"""
