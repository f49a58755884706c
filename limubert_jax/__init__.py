"""limubert_jax: LIMU-BERT (SenSys'21) in JAX/Flax, exact to the reference release."""

from limubert_jax.data.normalization import normalize
from limubert_jax.models.encoder import MODEL_CONFIGS, LimuBertConfig, LimuBertModel4Pretrain, count_params
from limubert_jax.models.recurrent import GRUClassifier, GRUClassifierConfig, gru_v2

__version__ = "0.1.0"


def __getattr__(name: str):
    # Loading a trained classifier or encoder needs Orbax; imported on first use, not with the package.
    if name in ("load_classifier", "TrainedClassifier"):
        from limubert_jax import predict  # noqa: PLC0415  (Orbax off the package's import)

        return getattr(predict, name)
    if name in ("load_encoder", "TrainedEncoder"):
        from limubert_jax import embed  # noqa: PLC0415  (Orbax off the package's import)

        return getattr(embed, name)
    raise AttributeError(f"module 'limubert_jax' has no attribute {name!r}")


__all__ = [
    "GRUClassifier",
    "GRUClassifierConfig",
    "LimuBertConfig",
    "LimuBertModel4Pretrain",
    "MODEL_CONFIGS",
    "TrainedClassifier",
    "TrainedEncoder",
    "count_params",
    "gru_v2",
    "load_classifier",
    "load_encoder",
    "normalize",
]
