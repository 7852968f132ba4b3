import pytest
import torch


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory):
    """(transformers Llama, our Decoder loaded from its save_pretrained directory), float32."""
    transformers = pytest.importorskip("transformers")
    from model import load_pretrained
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    hf = transformers.LlamaForCausalLM(config).eval()
    path = tmp_path_factory.mktemp("tiny_llama")
    hf.save_pretrained(path)
    return hf, load_pretrained(path, dtype=torch.float32)
