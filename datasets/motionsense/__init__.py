"""motionsense: see motionsense_dataset_builder.py."""
