"""pass-jax: PaSS (Parallel Speculative Sampling) for LLaMA-family models in JAX/Flax."""
from .config import LlamaConfig, load_preset
from .decoding import DecodeSpec, decode, decode_jit
from .errors import PassJaxError
from .generate import GenerationResult, Generator, generate
from .loading import LoadedModel, load_model
from .model import forward, init_cache, init_params
from .sampling import GREEDY, PAPER, SamplingConfig

__all__ = ["LlamaConfig", "load_preset", "DecodeSpec", "decode", "decode_jit", "PassJaxError", "GenerationResult",
           "Generator", "generate", "LoadedModel", "load_model", "forward", "init_cache", "init_params",
           "GREEDY", "PAPER", "SamplingConfig"]
__version__ = "0.1.0"
