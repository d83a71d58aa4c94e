"""The training loop's optimizer: fused AdamW on the CPU too, with the for-loop AdamW's update."""

from __future__ import annotations

import torch

from ctxvec.config import TrainConfig
from ctxvec.train.optim import adamw, param_groups


def _model():
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    return BertForMaskedLM(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2,
                                      num_attention_heads=2, intermediate_size=32,
                                      max_position_embeddings=16))


def _steps(model, opt, lr: float, n: int = 3) -> None:
    gen = torch.Generator().manual_seed(1)
    for step in range(n):
        for group in opt.param_groups:  # the loop's schedule: lr x the group's scale
            group["lr"] = lr * (step + 1) / n * group["lr_scale"]
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
        opt.zero_grad(set_to_none=True)


def test_the_cpu_optimizer_is_fused_adamw():
    model = _model()
    opt = adamw(param_groups(model, [], TrainConfig()), 1e-3, torch.device("cpu"))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"]


def test_fused_adamw_makes_the_for_loop_update_and_the_same_state():
    cfg = TrainConfig(weight_decay=0.01, llrd=0.8)  # several groups, decay on some only
    fused, plain = _model(), _model()
    opt = adamw(param_groups(fused, [], cfg), 1e-2, torch.device("cpu"))
    ref = torch.optim.AdamW(param_groups(plain, [], cfg), lr=1e-2, foreach=False)
    _steps(fused, opt, 1e-2)
    _steps(plain, ref, 1e-2)
    for (name, a), b in zip(fused.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    # a checkpoint of either loads into the other (resume across the change)
    assert opt.state_dict()["state"].keys() == ref.state_dict()["state"].keys()
    back = adamw(param_groups(_model(), [], cfg), 1e-2, torch.device("cpu"))
    back.load_state_dict(ref.state_dict())
