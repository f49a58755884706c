"""eleme: see eleme_dataset_builder.py."""
