"""Everything that reads or writes files: the storage layer every user path goes through
(`storage`: etils.epath, so `gs://` works; the one staged, atomic write), model checkpoints
(`checkpoint`), the reference PyTorch key names and shapes (`state_dict`), .safetensors
files (`safetensors`), the .npy window files the commands take (`windows`), a training
workdir's lock, resume checks and checkpoint policy (`workdir`), and PNG plots (`plots`).

May import: runtime, data, models.
"""
