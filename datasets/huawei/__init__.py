"""huawei: see huawei_dataset_builder.py."""
