"""The model every recipe trains: :class:`LatentReasoner` around any HF causal LM."""

from rl_latent.model.build import BOT_TOKEN, EOT_TOKEN, find_package_gguf, load_lm, tiny_config
from rl_latent.model.layerwise import (
    DecoderAdapter,
    LayerwiseOutput,
    get_adapter,
    layerwise_forward,
    register_adapter,
)
from rl_latent.model.reasoner import LatentReasoner, position_ids_from_mask

__all__ = [
    "BOT_TOKEN",
    "EOT_TOKEN",
    "DecoderAdapter",
    "LatentReasoner",
    "LayerwiseOutput",
    "find_package_gguf",
    "get_adapter",
    "layerwise_forward",
    "load_lm",
    "position_ids_from_mask",
    "register_adapter",
    "tiny_config",
]
