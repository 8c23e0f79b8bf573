"""Feeding the accelerator: records to batches (batching, buffers), the Grain pipeline with its
checkpointable iterator (pipeline, composed of the Grain stages in stages), and the pipeline's
own measurement (throughput)."""
