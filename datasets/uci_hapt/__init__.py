"""uci_hapt: see uci_hapt_dataset_builder.py."""
