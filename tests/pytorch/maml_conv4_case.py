"""Writes a conv4 MAML case and PyTorch's meta-gradients for it, for tests/pytorch_reference.rs.

Usage: python maml_conv4_case.py OUT.safetensors INNER_STEPS

The parameters are bench/maml_conv4_torch.py's (PyTorch's default initialisation of the conv4
nn.Sequential, 16 filters to stay quick), the tasks random 5-way 1-shot episodes of 28x28
binary images with 2 queries per class. The meta-gradients are computed the usual way, per
task with torch.autograd.grad(create_graph=True) through bench/maml_conv4_torch.py's own
forward and inner loop, and summed over tasks: `second.NAME` for MAML, `first.NAME` for
first-order MAML.
"""
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
import maml_conv4_torch as reference  # noqa: E402

TASKS, WAYS, SHOTS, QUERIES, SIZE, FILTERS, INNER_LR = 4, 5, 1, 2, 28, 16, 0.4


def main():
    out_path, inner_steps = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(0)
    torch.set_num_threads(1)
    names, params = reference.init_params(FILTERS, SIZE, WAYS)
    images = lambda n: (torch.rand(TASKS, n, 1, SIZE, SIZE) > 0.8).float()
    labels = lambda per_class: torch.arange(WAYS).repeat_interleave(per_class).repeat(TASKS, 1)
    xs, xq = images(WAYS * SHOTS), images(WAYS * QUERIES)
    ys, yq = labels(SHOTS), labels(QUERIES)
    case = {name: p.detach().clone() for name, p in zip(names, params)}
    case.update(xs=xs, ys=ys, xq=xq, yq=yq)
    for order in ("second", "first"):
        total = 0.0
        for t in range(TASKS):
            fast = reference.adapt(params, xs[t], ys[t], inner_steps, INNER_LR,
                                   create_graph=order == "second")
            total = total + torch.nn.functional.cross_entropy(reference.forward(fast, xq[t]), yq[t])
        for name, g in zip(names, torch.autograd.grad(total, params)):
            case[f"{order}.{name}"] = g
    save_file({k: v.contiguous() for k, v in case.items()}, out_path)


if __name__ == "__main__":
    main()
