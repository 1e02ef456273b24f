"""MLC as a Method: warm-up schedule, the Z -> C copy, optimizer groups, every parameter in the graph."""
import torch

from scaleclust.cluster.mlc import MLC
from scaleclust.cluster.settings import MLCConfig


def test_warmup_optimises_rate_only_then_copies_z_head_into_c_head():
    method = MLC(MLCConfig(hidden=16, out_dim=4, batch_size=32, steps=4, warmup_steps=2))
    head = method.head(8)
    x = torch.nn.functional.normalize(torch.randn(32, 8), dim=1)
    _, warm = method.loss(head, x, step=1)
    assert set(warm) == {"loss", "rate"}
    method.on_step(head, step=0)
    assert not torch.equal(head.c_head.weight, head.z_head.weight)
    method.on_step(head, step=1)                      # the last warm-up step has been applied
    assert torch.equal(head.c_head.weight, head.z_head.weight) and torch.equal(head.c_head.bias, head.z_head.bias)
    loss, full = method.loss(head, x, step=2)
    assert set(full) == {"loss", "rate", "compress", "pi_reg"}
    assert abs(full["loss"] - (-full["rate"] + full["compress"] + full["pi_reg"])) < 1e-4


def test_every_parameter_gets_a_gradient_during_warmup_and_c_head_has_its_own_decay():
    config = MLCConfig(hidden=16, out_dim=4, warmup_steps=10)
    method = MLC(config)
    head = method.head(8)
    loss, _ = method.loss(head, torch.nn.functional.normalize(torch.randn(32, 8), dim=1), step=0)
    loss.backward()
    assert all(p.grad is not None for p in head.parameters())  # what DistributedDataParallel requires
    groups = method.optimizer(head).param_groups
    assert [g["weight_decay"] for g in groups] == [config.weight_decay, config.weight_decay_c]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in head.c_head.parameters()}
    assert sum(len(g["params"]) for g in groups) == len(list(head.parameters()))
