"""imu_npy: bring-your-own (N, S, F) / (N, S, L) .npy arrays (see imu_npy_dataset_builder.py)."""
