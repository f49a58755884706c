"""Default pretraining config: the reference's LIMU-BERT `base_v1` setup.

Dataset configs (`configs/<dataset>.py`) start from this and override what differs.
Any field can be overridden on the command line, e.g. `--config.train.batch_size=64`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.task = "pretrain"  # pretrain, embed, classify, finetune, baseline, report; 'a+b' runs a then b
    config.seed = 3431  # init, masking and shuffling seed (the reference's)
    config.cpu_devices = -1  # CPU backend: devices the cores are split into, pretraining data parallel over them; -1 one per core

    config.model = ml_collections.ConfigDict()
    config.model.feature_num = 6  # F: input channels used (6 = acc + gyro, 9 = + magnetometer)
    config.model.hidden = 72  # H: representation width
    config.model.hidden_ff = 144  # FF: feed-forward width
    config.model.n_layers = 4  # times the shared block is applied
    config.model.n_heads = 4  # attention heads (hidden must divide by it)
    config.model.seq_len = ml_collections.config_dict.placeholder(int)  # S: window length; None: the dataset version's (120 for 20_120)
    config.model.emb_norm = True  # LayerNorm the input projection before adding positions

    config.mask = ml_collections.ConfigDict()
    config.mask.mask_ratio = 0.15  # fraction of steps predicted per window (18 of 120)
    config.mask.max_gram = 10  # longest masked span
    config.mask.p = 0.2  # geometric parameter of span lengths
    config.mask.mask_prob = 0.8  # per window: zero the selected steps with this probability
    config.mask.replace_prob = 0.0  # else replace them with U[0,1) noise with this probability
    config.mask.exclude_last = True  # reference quirk: never mask the last step; False turns it off

    config.dataset = ml_collections.ConfigDict()
    config.dataset.name = "synthetic_imu"  # TFDS builder (see limubert_jax.datasets)
    config.dataset.version = "20_120"  # builder config: <rate Hz>_<window steps>
    config.dataset.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS data_dir; None: TFDS default
    config.dataset.manual_dir = ml_collections.config_dict.placeholder(str)  # raw files/archives of a recorded dataset, or imu_npy's data_/label_<version>.npy (TFDS manual_dir)
    config.dataset.seed = 3431  # seed of the reference's 80/10/10 window shuffle-split
    config.dataset.train_rate = 0.8  # fraction of windows for training
    config.dataset.vali_rate = 0.1  # fraction for validation (the rest is test, unused here)
    config.dataset.window_store = True  # read windows from one float32 array beside the build (written once), not its records
    config.dataset.split_by = "window"  # 'window': the reference's window shuffle; 'recording'/'user'/'device' (HHAR's device_model): none in two splits
    config.dataset.stride = 0  # recordings: steps between window starts; 0: the window length (no overlap)
    config.dataset.max_gap_s = 1.0  # recordings: a longer pause between timestamps splits a recording
    config.dataset.acc_unit = "m/s^2"  # recordings: accelerometer columns in 'm/s^2' or 'g' (x 9.80665)
    config.dataset.gyro_unit = "rad/s"  # recordings: gyroscope columns in 'rad/s' or 'deg/s'
    config.dataset.timestamp_unit = "s"  # recordings: numeric timestamps in 's', 'ms', 'us' or 'ns' (ISO-8601 text as is)
    config.dataset.columns = ""  # recordings: rename the files' columns to the contract's, e.g. 'ax:acc_x,ay:acc_y'
    config.dataset.label_columns = ""  # recordings: label columns, e.g. 'activity,user'; '': every other column
    config.dataset.ignore_columns = ""  # recordings: columns to leave out, e.g. 'pressure,temp'
    config.dataset.fingerprint = "stat"  # recordings: notice a changed folder by 'stat' (size, mtime) or 'content' (SHA-256)

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "bert_adam"  # 'bert_adam' (the seed's) or 'adam' (the public release)
    config.optimizer.learning_rate = 1e-3  # peak learning rate
    config.optimizer.warmup = 0.1  # bert_adam: warmup fraction of the run's total steps
    config.optimizer.decay_grouping = "reference"  # bert_adam: 'reference' decays all; 'no_decay_for_bias_and_norm'

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 128  # global batch (all devices together)
    config.train.num_epochs = 3200  # passes over the training split
    config.train.extend_to_epochs = ml_collections.config_dict.placeholder(int)  # resume: carry the workdir's run on to N epochs (replaces num_epochs; exact only for a constant-rate optimizer)
    config.train.eval_batch_size = 512  # validation batch, at most: a smaller split is one batch (padded to the devices)
    config.train.log_every_steps = 50  # progress-bar refresh of the running loss
    config.train.checkpoint_every_epochs = 1  # latest-checkpoint interval (resume point)
    config.train.plot_windows = 4  # validation windows drawn in reconstruction.png
    config.train.steps_per_dispatch = 1  # train steps per compiled call (a lax.scan over a stack of host batches)
    config.train.compute_dtype = "float32"  # 'bfloat16': bf16 compute, float32 parameters and optimizer state
    config.train.encoder_chunk = -1  # CPU work split, windows per chunk (>0); 0 whole batch; -1: on CPU 8 (train) / 16 (eval)
    config.train.matmul_precision = "highest"  # train-step matmuls: 'highest' full fp32 (the reference); 'high'/'default' TF32 (GPU), bf16 passes (TPU)
    config.train.device_resident = False  # training windows on device; each epoch (shuffle, masking) one call
    config.train.fall_back_to_good_checkpoint = False  # resume: move a corrupted step aside and resume from the newest good one
    config.train.init_from = ""  # start pretraining from these weights: released ones by name (limu_bert_x) or a checkpoint/workdir; model fields left at their defaults follow them; a resume ignores it

    config.downstream = ml_collections.ConfigDict()
    config.downstream.label = "activity"  # the task's label, by name: activity, user, position, device_model
    config.downstream.label_rate = 0.01  # fraction of the training sub-windows that are labelled
    config.downstream.balance = True  # draw the same number of labelled sub-windows per class
    config.downstream.merge = ml_collections.config_dict.placeholder(int)  # classifier sub-window length (steps), dividing seq_len; None: the encoder's seq_len where shorter than the windows, else 20
    config.downstream.classifier = "gru_v2"  # head for classify/finetune: gru_v1, gru_v2, lstm_v1, cnn1_v1, cnn2_v1, attn_v1
    config.downstream.baseline = "rgru"  # model for the baseline task: dcnn, deepsense, rgru
    config.downstream.methods = "limu_gru_v2,dcnn,deepsense,rgru"  # report task: limu_<head>, finetune_<head>, baselines
    config.downstream.dataset = ml_collections.config_dict.placeholder(str)  # merged name a+b: the source downstream tasks use; None: the first
    config.downstream.encoder = ml_collections.config_dict.placeholder(str)  # pretrained checkpoint or workdir; None: --workdir
    config.downstream.freeze_encoder = False  # finetune: train the head only
    config.downstream.run_name = ml_collections.config_dict.placeholder(str)  # suffix of the run folders (<method>-<label>-<rate>-<run_name>): keeps runs of other settings apart
    config.downstream.overwrite = False  # replace a run folder that holds the results of other settings
    config.downstream.num_epochs = 700  # classifier epochs (the reference's)
    config.downstream.batch_size = 128  # classifier batch
    config.downstream.learning_rate = 1e-3  # classifier Adam learning rate
    config.downstream.tsne_points = 2000  # test sub-windows drawn in tsne.png
    config.downstream.seeds = 1  # draws per method (labelled subset and classifier init seeded +0, +1, ...; same encoder and split): >1 reports mean, sd, 95% t-interval and paired differences vs the best baseline
    config.downstream.label_rates = ""  # report: a label-rate curve, e.g. '0.002,0.01,0.05,0.2,1.0' (each rate replaces label_rate; label_rate_curve.png); '': label_rate alone
    config.downstream.labels_per_class = ""  # labelled sub-windows per class instead of a rate, e.g. '5'; report: a curve, e.g. '1,5,10'; '': by label_rate
    config.downstream.split_by = ml_collections.config_dict.placeholder(str)  # downstream split groups: window, user, recording, device (HHAR's device_model); None: config.dataset.split_by's
    config.downstream.folds = 1  # grouped K-fold over the split groups, each tested once, scores averaged over folds; -1: one fold per group (leave one subject out); 1: the one split
    return config
