"""hhar: see hhar_dataset_builder.py."""
