"""shoaib: see shoaib_dataset_builder.py."""
