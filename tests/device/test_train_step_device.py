"""One optimizer step on the test device (`--device` / SFTKEY_TEST_DEVICE, CPU by default) as
train.py takes it: decoder with row selection, fused loss, bf16 autocast or fp32, gradient
clipping, fused AdamW; eager and compiled. The reference is independent of our code: transformers'
model on the same weights, full logits and F.cross_entropy, in fp32 on the CPU, and torch's
single-tensor AdamW. The batches come from the synthetic task through data/ (padded and packed).
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from data import build_dataset, collate, load_records, load_tokenizer
from data.batches import IGNORE_INDEX
from data.synthetic import build_task
from loss import weighted_linear_cross_entropy
from model import Decoder, load_pretrained
from model.hf_io import hf_tensors
from tests.model.conftest import build_hf

ROLE_WEIGHTS = {1: [0.0, 1.0, 1.0, 0.0], 2: [0.0, 0.0, 1.0, 0.0]}  # PROMPT, COT, KEY, PAD
OPTIMIZER = dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
INDICES = list(range(8))
MAX_LEN = 128
PACKED_ROW = 256  # about three synthetic examples per packed row


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(tokenizer, dataset, transformers Qwen2 model in fp32 on CPU, its directory)."""
    task = build_task(str(tmp_path_factory.mktemp("synthetic")), n_train=16, n_test=2, seed=0)
    tok = load_tokenizer(task["tokenizer"])
    dataset = build_dataset(load_records(task["train"], format="auto"), tok, max_len=MAX_LEN)
    hf = build_hf("qwen2_qkv_bias_tied", vocab_size=tok.vocab_size, hidden_size=64,
                  intermediate_size=96, num_hidden_layers=3)
    path = tmp_path_factory.mktemp("qwen2")
    hf.save_pretrained(path)
    return tok, dataset, hf, path


def param_groups(named):
    # train.py's split: weight decay on matrices and embeddings only
    named = list(named)
    return [{"params": [p for _, p in named if p.dim() >= 2], "weight_decay": OPTIMIZER["weight_decay"]},
            {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0}]


def by_hf_name(model, tensors):
    """{transformers tensor name: fp32 CPU copy} for tensors given in model.parameters() order."""
    shadow = Decoder(copy.deepcopy(model.config))
    for p, t in zip(shadow.parameters(), tensors):
        p.data = t.detach().float().cpu().clone()
    return hf_tensors(shadow)


def our_step(path, batch, stage, device, precision, compile):
    model = load_pretrained(path, dtype=torch.float32, device=device).train()
    if compile:
        model.compile_blocks()
    before = [p.detach().clone() for p in model.parameters()]
    role_weights = torch.tensor(ROLE_WEIGHTS[stage], device=device)
    targets, roles = batch["targets"].to(device).flatten(), batch["roles"].to(device).flatten()
    weights = role_weights[roles]
    rows = torch.nonzero((weights != 0) & (targets != IGNORE_INDEX)).squeeze(1)
    segments = batch["segment_ids"]
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        hidden = model(batch["input_ids"].to(device), positions=batch["positions"].to(device),
                       segment_ids=None if segments is None else segments.to(device),
                       return_hidden=True, rows=rows)
        loss_sum, role_nll, role_count = weighted_linear_cross_entropy(
            hidden, model.output_weight, targets[rows], weights[rows], roles[rows], compile=compile)
    loss = loss_sum / weights.sum()
    loss.backward()
    grads = [p.grad.detach().clone() for p in model.parameters()]
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    clipped = [p.grad.detach().clone() for p in model.parameters()]
    torch.optim.AdamW(param_groups(model.named_parameters()), **OPTIMIZER, fused=True).step()
    assert all(p.device.type == device.type for p in model.parameters())
    return dict(loss=loss.item(), norm=norm.item(), role_nll=role_nll.cpu(), role_count=role_count.cpu(),
                grads=by_hf_name(model, grads), before=by_hf_name(model, before),
                clipped=by_hf_name(model, clipped), after=by_hf_name(model, model.parameters()))


def reference_step(hf, batch, stage):
    hf = copy.deepcopy(hf).train()
    logits = hf(batch["input_ids"], position_ids=batch["positions"]).logits.flatten(0, 1)
    targets, roles = batch["targets"].flatten(), batch["roles"].flatten()
    weights = torch.tensor(ROLE_WEIGHTS[stage])[roles]
    nll = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="none")
    loss = (nll * weights).sum() / weights.sum()
    loss.backward()
    kept = weights != 0
    role_nll = torch.zeros(4).index_add_(0, roles[kept], nll.detach()[kept])
    role_count = torch.zeros(4, dtype=torch.long).index_add_(0, roles[kept], torch.ones_like(roles[kept]))
    grads = {name: p.grad.clone() for name, p in hf.named_parameters()}
    norm = torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
    torch.optim.AdamW(param_groups(hf.named_parameters()), **OPTIMIZER, foreach=False).step()
    return dict(loss=loss.item(), norm=norm.item(), role_nll=role_nll, role_count=role_count, grads=grads,
                after={name: p.detach().clone() for name, p in hf.named_parameters()})


def relative_error(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


CASES = [  # (precision, packed, stage, compile): eager everywhere, compiled in bf16 as trained
    # (two compiled cases: each new graph is seconds of Triton builds on CUDA)
    *[(p, packed, s, False) for p in ("fp32", "bf16") for packed in (False, True) for s in (1, 2)],
    ("bf16", False, 1, True), ("bf16", True, 2, True)]


@pytest.mark.parametrize("precision,packed,stage,compile", CASES)
def test_training_step_matches_transformers_reference(precision, packed, stage, compile, setup, device):
    tok, dataset, hf, path = setup
    batch = collate(dataset, INDICES, tok.pad_id, packed=packed, max_len=PACKED_ROW)
    if packed:
        assert batch["input_ids"].shape[0] < len(INDICES)  # several examples share a row
    got = our_step(path, batch, stage, device, precision, compile)
    # the reference sees every example in its own padded row (right padding: causal attention
    # never looks at it), so a packed batch must give the same sums over the same tokens
    expected = reference_step(hf, collate(dataset, INDICES, tok.pad_id), stage)
    assert set(got["grads"]) == set(expected["grads"])
    assert torch.equal(got["role_count"], expected["role_count"])
    if precision == "fp32":
        assert abs(got["loss"] - expected["loss"]) < 1e-5 * abs(expected["loss"])
        assert_close(got["role_nll"], expected["role_nll"], rtol=1e-5, atol=1e-4)
        assert abs(got["norm"] - expected["norm"]) < 1e-4 * expected["norm"]
        for name, grad in expected["grads"].items():
            assert_close(got["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
        for name, param in expected["after"].items():
            # AdamW's first step moves each weight by lr * g / (|g| + eps), about lr; 1% of that is
            # a real difference. Where |g| is within the gradient tolerance (1e-6) of zero that
            # ratio follows the rounding of g, so those few weights are left out.
            steady = expected["grads"][name].abs() > 1e-6
            assert steady.float().mean() > 0.9
            assert_close(got["after"][name][steady], param[steady], rtol=0, atol=1e-5,
                         msg=lambda m: f"{name}: {m}")
        return
    # bf16 autocast: within bf16 rounding of the fp32 reference, tensor by tensor
    assert abs(got["loss"] - expected["loss"]) < 1e-2 * abs(expected["loss"])
    assert relative_error(got["role_nll"], expected["role_nll"]) < 1e-2
    assert abs(got["norm"] - expected["norm"]) < 3e-2 * expected["norm"]
    # (measured on CPU: 0.6-2.6% per tensor, the k biases highest; a wrong mask or weight is O(1))
    for name, grad in expected["grads"].items():
        assert relative_error(got["grads"][name], grad) < 8e-2, name
    names = sorted(expected["grads"])
    assert relative_error(torch.cat([got["grads"][n].flatten() for n in names]),
                          torch.cat([expected["grads"][n].flatten() for n in names])) < 3e-2
    # and the fused AdamW step on the device is torch's plain AdamW applied to the same gradients
    for name, param in got["before"].items():
        param = param.clone().requires_grad_(True)
        param.grad = got["clipped"][name]
        group = dict(OPTIMIZER, weight_decay=OPTIMIZER["weight_decay"] if param.dim() >= 2 else 0.0)
        torch.optim.AdamW([param], **group, foreach=False).step()
        assert_close(got["after"][name], param.detach(), rtol=1e-5, atol=1e-7, msg=lambda m: f"{name}: {m}")
