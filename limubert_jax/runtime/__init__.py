"""How the package runs on a machine, below everything else: the error type and the
command-line error handling (`errors`), the commands' one flag convention (`cli`), quieting of
noisy libraries (`log_filters`), matmul precision pinning (`precision`), XLA compile options
(`xla_options`), the device mesh and batch shardings (`sharding`), and multi-process start-up
(`distributed`).

May import: nothing else in the package.
"""
