"""What a pretrained encoder is for, under the paper's protocol: labelled data and the
protocol split (`labels`), training a classifier on device (`fit`), the tasks embed,
classify, finetune, baseline and report (`runners`), metrics (`evaluation`), the
paper-style report table (`report`) and t-SNE (`tsne`).

May import: runtime, data, models, io, export, pretraining.
"""
