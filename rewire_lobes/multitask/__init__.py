"""Multi-task fine-tuning of a shared SSL encoder on several SUPERB tasks at once.

``tasks`` loads each task's own recipe (yaml, prepare step, data pipeline, head and
metrics); ``shared`` runs the encoder once per update on every task's batch;
``weighting`` combines the task losses; ``brain`` is the training loop, the per-task dev
evaluation and checkpoints, and the export of the tuned encoder.
"""
