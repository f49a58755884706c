"""wisdm: see wisdm_dataset_builder.py."""
