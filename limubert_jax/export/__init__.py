"""Trained models in and out of JAX: reference PyTorch state dicts read into checkpoints
(`torch_import`), released weights by name, fetched and converted once (`released`),
checkpoints written as PyTorch or safetensors files (`torch_export`), ONNX
graphs written from the parameters (`onnx_export`), TFLite files through PyTorch
(`tflite_export`), and one self-contained
PyTorch file (`limubert_torch`, importing only torch) that users copy into their projects.

May import: runtime, data, models, io.
"""
