"""Ray Train training of the MM-Diffusion models: shard loader, loop, checkpoints, MLflow.

Entry points: `training.run.train(TrainConfig)` and `training.run.train_sr(TrainConfig)`.
"""
