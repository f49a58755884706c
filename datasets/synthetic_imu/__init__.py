"""synthetic_imu: deterministic synthetic IMU windows (see synthetic_imu_dataset_builder.py)."""
