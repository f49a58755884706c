"""The networks, as pure Flax modules with frozen config dataclasses: the LIMU-BERT encoder
and its pretraining head (`encoder`), shared layers and PyTorch-style initialisers
(`layers`), the GRU/LSTM classifiers (`recurrent`), the convolutional and attention heads
and baselines (`heads`), building any classifier by name (`registry`), running the
encoder over many windows in batches (`inference`), and a trained classifier from raw
readings to class probabilities (`pipeline`).

May import: runtime, data.
"""
