"""ModelConfig: the decoder's hyperparameters, read from and written to a Hugging Face config.json."""
from dataclasses import asdict, dataclass, field

# architecture -> (model_type, default rope_theta, default max_position_embeddings, default tying),
# the defaults transformers' config classes use when config.json leaves the field out.
FAMILIES = {
    "LlamaForCausalLM": ("llama", 10000.0, 2048, False),
    "Qwen2ForCausalLM": ("qwen2", 10000.0, 32768, False),
    "Qwen3ForCausalLM": ("qwen3", 10000.0, 32768, False),
    "SmolLM3ForCausalLM": ("smollm3", 2000000.0, 32768, True),
    "MistralForCausalLM": ("mistral", 10000.0, 131072, False),
}
ROPE_TYPES = ("default", "linear", "llama3")
ROPE_KEYS = {"linear": ("factor",),
             "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}
REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
# keys that describe the config format rather than the model; never carried over into `extra`
FORMAT_KEYS = ("architectures", "model_type", "transformers_version", "auto_map", "rope_parameters",
               "rope_theta", "rope_scaling", "dtype", "torch_dtype")


class ConfigError(ValueError):
    """A config.json field that is missing, malformed or asks for a feature we do not implement."""


@dataclass
class ModelConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    architecture: str = "LlamaForCausalLM"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # {"rope_type": "linear" | "llama3", ...} or None for plain RoPE
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # bias on q/k/v projections (Qwen2, or attention_bias)
    o_bias: bool = False  # bias on the output projection (attention_bias)
    mlp_bias: bool = False
    qk_norm: bool = False  # RMSNorm on q and k per head (Qwen3)
    nope_layers: tuple[int, ...] = ()  # layers without RoPE (SmolLM3)
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    torch_dtype: str | None = None
    extra: dict = field(default_factory=dict)  # other config.json keys, written back unchanged

    def __post_init__(self):
        if self.architecture not in FAMILIES:
            raise ConfigError(f"architectures: {self.architecture!r} is not supported; "
                              f"supported: {', '.join(FAMILIES)}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_attention_heads ({self.num_heads}) must be a multiple of "
                              f"num_key_value_heads ({self.num_kv_heads})")
        self.nope_layers = tuple(sorted(self.nope_layers))
        _check_rope_scaling(self.rope_scaling, "rope_scaling")

    @property
    def model_type(self) -> str:
        return FAMILIES[self.architecture][0]

    @classmethod
    def from_hf_dict(cls, d: dict) -> "ModelConfig":
        archs = d.get("architectures")
        if not archs:
            raise ConfigError("architectures: missing; expected e.g. [\"LlamaForCausalLM\"]")
        if len(archs) != 1 or archs[0] not in FAMILIES:
            raise ConfigError(f"architectures: {archs!r} is not supported; supported: {', '.join(FAMILIES)}")
        arch = archs[0]
        model_type, default_theta, default_max_pos, default_tie = FAMILIES[arch]
        for key in REQUIRED:
            if d.get(key) is None:
                raise ConfigError(f"{key}: missing from config.json (required for {arch})")
        _refuse_unsupported(d, arch)
        theta, scaling = _read_rope(d, default_theta)

        heads = d["num_attention_heads"]
        default_head_dim = 128 if arch == "Qwen3ForCausalLM" else d["hidden_size"] // heads
        attention_bias = bool(d.get("attention_bias", False)) and arch != "MistralForCausalLM"
        nope_layers = ()
        if arch == "SmolLM3ForCausalLM":
            use_rope = d.get("no_rope_layers")  # transformers' naming: 1 means the layer DOES use RoPE
            if use_rope is None:
                interval = d.get("no_rope_layer_interval", 4)
                use_rope = [int((i + 1) % interval != 0) for i in range(d["num_hidden_layers"])]
            if len(use_rope) != d["num_hidden_layers"]:
                raise ConfigError(f"no_rope_layers: has {len(use_rope)} entries for "
                                  f"{d['num_hidden_layers']} layers")
            nope_layers = tuple(i for i, r in enumerate(use_rope) if not r)
        consumed = set(REQUIRED) | {"num_key_value_heads", "head_dim", "rms_norm_eps", "max_position_embeddings",
                                    "tie_word_embeddings", "attention_bias", "mlp_bias", "bos_token_id",
                                    "eos_token_id", "pad_token_id", "no_rope_layers", "no_rope_layer_interval"}
        extra = {k: v for k, v in d.items() if k not in consumed and k not in FORMAT_KEYS}
        return cls(
            vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], num_layers=d["num_hidden_layers"],
            num_heads=heads, num_kv_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or default_head_dim, intermediate_size=d["intermediate_size"],
            architecture=arch, rms_norm_eps=d.get("rms_norm_eps", 1e-6), rope_theta=theta,
            rope_scaling=scaling, max_position_embeddings=d.get("max_position_embeddings", default_max_pos),
            tie_word_embeddings=d.get("tie_word_embeddings", default_tie),
            qkv_bias=attention_bias or arch == "Qwen2ForCausalLM",
            o_bias=attention_bias and arch != "Qwen2ForCausalLM",
            mlp_bias=bool(d.get("mlp_bias", False)) and arch in ("LlamaForCausalLM", "SmolLM3ForCausalLM"),
            qk_norm=arch == "Qwen3ForCausalLM", nope_layers=nope_layers,
            bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"),
            pad_token_id=d.get("pad_token_id"), torch_dtype=d.get("torch_dtype") or d.get("dtype"), extra=extra)

    def to_hf_dict(self) -> dict:
        """config.json in the hub dialect (top-level rope_theta / rope_scaling / torch_dtype), which
        transformers 4 and 5 and vLLM all read."""
        self._check_expressible()
        d = dict(self.extra)
        d.update({
            "architectures": [self.architecture], "model_type": self.model_type,
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads, "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim, "hidden_act": "silu", "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta, "rope_scaling": dict(self.rope_scaling) if self.rope_scaling else None,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings, "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id, "pad_token_id": self.pad_token_id,
        })
        if self.architecture in ("LlamaForCausalLM", "SmolLM3ForCausalLM", "Qwen3ForCausalLM"):
            d["attention_bias"] = self.qkv_bias
        if self.architecture in ("LlamaForCausalLM", "SmolLM3ForCausalLM"):
            d["mlp_bias"] = self.mlp_bias
        if self.architecture == "SmolLM3ForCausalLM":
            d["no_rope_layers"] = [int(i not in self.nope_layers) for i in range(self.num_layers)]
        if self.torch_dtype is not None:
            d["torch_dtype"] = self.torch_dtype
        return d

    def _check_expressible(self):
        """Refuse feature combinations the architecture's transformers class cannot represent."""
        arch = self.architecture
        wanted = {"qkv_bias": self.qkv_bias, "o_bias": self.o_bias, "mlp_bias": self.mlp_bias,
                  "qk_norm": self.qk_norm, "nope_layers": bool(self.nope_layers)}
        allowed = {"qkv_bias": arch != "MistralForCausalLM",
                   "o_bias": arch not in ("MistralForCausalLM", "Qwen2ForCausalLM"),
                   "mlp_bias": arch in ("LlamaForCausalLM", "SmolLM3ForCausalLM"),
                   "qk_norm": arch == "Qwen3ForCausalLM", "nope_layers": arch == "SmolLM3ForCausalLM"}
        for name, on in wanted.items():
            if on and not allowed[name]:
                raise ConfigError(f"{name}: {arch} cannot express this feature; pick another architecture")
        if arch == "Qwen2ForCausalLM" and not self.qkv_bias:
            raise ConfigError("qkv_bias: Qwen2ForCausalLM always has q/k/v biases; set qkv_bias=True")
        if arch == "Qwen3ForCausalLM" and not self.qk_norm:
            raise ConfigError("qk_norm: Qwen3ForCausalLM always has q/k norms; set qk_norm=True")
        if arch not in ("Qwen2ForCausalLM",) and self.qkv_bias != self.o_bias:
            raise ConfigError(f"qkv_bias/o_bias: {arch} has one attention_bias flag for both; make them equal")

    def to_dict(self) -> dict:
        return asdict(self)


def _read_rope(d: dict, default_theta: float) -> tuple[float, dict | None]:
    """rope_theta and scaling from either dialect: hub (top-level rope_theta + rope_scaling) or
    transformers 5 (rope_parameters holding rope_theta and rope_type)."""
    params = d.get("rope_parameters")
    if params is not None:
        if not isinstance(params, dict) or any(isinstance(v, dict) for v in params.values()):
            raise ConfigError(f"rope_parameters: per-layer-type RoPE ({params!r}) is not supported")
        theta = params.get("rope_theta", d.get("rope_theta", default_theta))
        scaling, where = params, "rope_parameters"
    else:
        theta = d.get("rope_theta", default_theta)
        scaling, where = d.get("rope_scaling"), "rope_scaling"
    if scaling is None:
        return float(theta), None
    if not isinstance(scaling, dict):
        raise ConfigError(f"{where}: expected an object, got {scaling!r}")
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ConfigError(f"{where}.rope_type: {rope_type!r} is not supported; supported: {', '.join(ROPE_TYPES)}")
    if scaling.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConfigError(f"{where}.partial_rotary_factor: only 1.0 is supported, "
                          f"got {scaling['partial_rotary_factor']}")
    if rope_type == "default":
        return float(theta), None
    out = {"rope_type": rope_type}
    for key in ROPE_KEYS[rope_type]:
        if key == "original_max_position_embeddings" and key not in scaling:
            out[key] = d.get("max_position_embeddings")  # transformers' fallback
        elif key not in scaling:
            raise ConfigError(f"{where}.{key}: missing (required for rope_type {rope_type!r})")
        else:
            out[key] = scaling[key]
    _check_rope_scaling(out, where)
    return float(theta), out


def _check_rope_scaling(scaling: dict | None, where: str):
    if scaling is None:
        return
    rope_type = scaling.get("rope_type")
    if rope_type not in ("linear", "llama3"):
        raise ConfigError(f"{where}.rope_type: {rope_type!r} is not supported; use None, 'linear' or 'llama3'")
    for key in ROPE_KEYS[rope_type]:
        if not isinstance(scaling.get(key), (int, float)):
            raise ConfigError(f"{where}.{key}: expected a number, got {scaling.get(key)!r}")


def _refuse_unsupported(d: dict, arch: str):
    """Config features that would change the model's outputs and that we do not implement."""
    if d.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"hidden_act: {d['hidden_act']!r} is not supported; only 'silu' (SwiGLU)")
    if d.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConfigError(f"partial_rotary_factor: only 1.0 is supported, got {d['partial_rotary_factor']}")
    if d.get("quantization_config") is not None:
        raise ConfigError("quantization_config: quantized checkpoints are not supported; use a full-precision one")
    if d.get("attention_dropout", 0.0):
        raise ConfigError(f"attention_dropout: {d['attention_dropout']} is not supported; only 0.0")
    window = d.get("sliding_window")
    if arch == "MistralForCausalLM":
        active = window is not None and window < d.get("max_position_embeddings", FAMILIES[arch][2])
    else:
        active = bool(d.get("use_sliding_window", False)) and window is not None
    if active:
        raise ConfigError(f"sliding_window: {window} is active (use_sliding_window="
                          f"{d.get('use_sliding_window')}); sliding-window attention is not supported")
    for i, kind in enumerate(d.get("layer_types") or []):
        if kind != "full_attention":
            raise ConfigError(f"layer_types[{i}]: {kind!r} is not supported; only 'full_attention'")
