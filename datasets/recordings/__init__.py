"""recordings: your own continuous IMU recordings, one CSV / Parquet file each (see recordings_dataset_builder.py)."""
