"""IMU windows from disk to batches: datasets prepared, opened and split (`loading`:
`load_data`, `PretrainData`), the grain batches cut from them (`input_pipeline`), the
reference's splits (`splits`), normalization, span masking (`masking`) and synthetic windows
for demos and benchmarks (`synthetic`). The dataset builders themselves live in the
top-level `datasets/` folder (`limubert_jax.datasets`).

May import: runtime.
"""
