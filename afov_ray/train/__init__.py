"""afov_ray.train: the training stages on Ray Train.

The ingest of pairing shards into voxelised batches (``data``), the stages TMP / distillation / fine-tuning
as ``Stage`` objects (``stages``), the one per-worker loop and its ``TorchTrainer`` (``runner``), the
optimiser and schedule (``optim``), checkpoints (``checkpoint``), MLflow tracking and the model registry
(``tracking``), and the job configs of ``jobs/tmp.py``, ``jobs/distill.py``, ``jobs/finetune.py`` (``jobs``)."""
