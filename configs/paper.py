"""The paper's protocol (LIMU-BERT, SenSys'21, §4.1; docs/reference.md §5 to §7) on one of its
four datasets: pretraining (3,200 epochs, batch 128, the reference's window split), then its
HAR table (Table 3): LIMU-GRU and the baselines DCNN, DeepSense and R-GRU on 1% labels, 700
classifier epochs, test accuracy and macro-F1.

`--config=paper:hhar` (also `uci`, `motion`, `shoaib`); a version and a task may follow,
`paper:uci,10_100` or `paper:hhar,report` (the report alone, in a workdir already
pretrained). The paper drew its labelled windows once; `--config.downstream.seeds=5` repeats
the draw (draw 0 stays the paper's) and reports intervals, `--config.dataset.split_by=user`
splits by subject instead of by window (docs/downstream.md).
"""

from limubert_jax import config_lib

# The paper's datasets, by the name its Table 3 gives them -> the TFDS builder.
DATASETS = {"hhar": "hhar", "uci": "uci_hapt", "uci_hapt": "uci_hapt", "motion": "motionsense",
            "motionsense": "motionsense", "shoaib": "shoaib"}


def get_config(arg: str = "hhar"):
    tokens = [t.strip() for t in str(arg).split(",") if t.strip()]
    names = [t for t in tokens if t in DATASETS]
    if len(names) != 1:
        raise ValueError(f"config argument {arg!r}: name one of the paper's datasets ({', '.join(DATASETS)}), "
                         f"e.g. paper:hhar or paper:uci,report")
    rest = ",".join(t for t in tokens if t not in DATASETS)
    default = config_lib.sibling_config(__file__, "default").get_config()
    config = config_lib.with_dataset(default, DATASETS[names[0]], rest)
    if config_lib.parse_config_arg(rest)[1] is None:
        config.task = "pretrain+report"
    # The default config is the reference's already (base_v1, 3,200 epochs, seed 3431, the
    # 80/10/10 window split, 1% labels, 700 classifier epochs); the report is Table 3's rows.
    config.downstream.methods = "limu_gru_v2,dcnn,deepsense,rgru"
    config.downstream.label_rate = 0.01
    return config
