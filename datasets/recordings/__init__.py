"""recordings: your own continuous IMU recordings, one CSV / Parquet file each (README.md);
`reader` reads and checks a folder, `recordings_dataset_builder` builds it."""
