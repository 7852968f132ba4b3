"""Minimal decoder for Llama / Qwen2 / Qwen3 / SmolLM3 / Mistral checkpoints, HF safetensors in and out."""
from model.config import ConfigError, ModelConfig
from model.decoder import Decoder, KVCache
from model.hf_io import load_pretrained, save_pretrained
from model.safetensors_io import CheckpointError

__all__ = ["ModelConfig", "Decoder", "KVCache", "load_pretrained", "save_pretrained", "ConfigError",
           "CheckpointError"]
