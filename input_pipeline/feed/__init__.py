"""Feeding the accelerator: records to batches (batching, buffers), the Grain pipeline with its
checkpointable iterator (pipeline), and the pipeline's own measurement (throughput)."""
