"""What training, evaluation, prediction and the benchmark all stand on: the mesh and batch
placement (sharding), image scaling and augmentation (augment), the state and its pure steps
(state, train_step), checkpoints, the eval step (inference) and a finished run's loading (runs)."""
