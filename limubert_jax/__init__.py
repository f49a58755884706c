"""limubert_jax: LIMU-BERT (SenSys'21) in JAX/Flax, exact to the reference release."""

from limubert_jax.data.normalization import normalize
from limubert_jax.models.encoder import MODEL_CONFIGS, LimuBertConfig, LimuBertModel4Pretrain, count_params
from limubert_jax.models.recurrent import GRUClassifier, GRUClassifierConfig, gru_v2

__version__ = "0.1.0"

__all__ = [
    "GRUClassifier",
    "GRUClassifierConfig",
    "LimuBertConfig",
    "LimuBertModel4Pretrain",
    "MODEL_CONFIGS",
    "count_params",
    "gru_v2",
    "normalize",
]
