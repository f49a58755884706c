"""IMU windows from disk to batches: the TFDS-backed input pipeline and `load_data`
(`input_pipeline`), the reference's splits (`splits`), normalization, span masking
(`masking`) and synthetic windows for demos and benchmarks (`synthetic`). The dataset
builders themselves live in the top-level `datasets/` folder (`limubert_jax.datasets`).

May import: runtime.
"""
