"""Running models so that autograd can differentiate them twice, and saying so when it cannot."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from attrcert import NonSmoothModelWarning, certify, find_nonsmooth
from attrcert.attributions import NotDifferentiableError, differentiable_forward, get_method
from attrcert.attributions.differentiable import failing_node, remedy
from attrcert.spectral import spectrum_iterative


def test_differentiable_forward_restores_the_flags():
    torch.backends.mha.set_fastpath_enabled(True)
    flash = torch.backends.cuda.flash_sdp_enabled()
    with differentiable_forward():
        assert not torch.backends.mha.get_fastpath_enabled()
        assert torch.backends.cuda.math_sdp_enabled()
        assert not torch.backends.cuda.flash_sdp_enabled()
    assert torch.backends.mha.get_fastpath_enabled()
    assert torch.backends.cuda.flash_sdp_enabled() == flash


class Attention(nn.Module):
    """Self-attention through ``F.scaled_dot_product_attention`` (fused by default)."""

    def __init__(self, fused_op: bool = False) -> None:
        super().__init__()
        self.qkv, self.out, self.fused_op = nn.Linear(4, 12), nn.Linear(4 * 4, 3), fused_op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x.reshape(x.shape[0], 1, 4, 4)).chunk(3, dim=-1)
        if self.fused_op:  # the fused kernel called by name, as a lowered graph may hold it
            a = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)[0]
        else:
            a = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.out(a.flatten(1))


def test_scaled_dot_product_attention_is_differentiated_twice():
    torch.manual_seed(0)
    model, x = Attention().eval(), torch.rand(1, 1, 4, 4)
    s = spectrum_iterative(get_method("saliency"), model, x, torch.tensor([0]))
    assert float(s.xi_max[0]) > 0
    leaf = x.clone().requires_grad_(True)  # what fails without the math kernel
    (grad,) = torch.autograd.grad(model(leaf)[:, 0].sum(), leaf, create_graph=True)
    with pytest.raises(RuntimeError, match="flash_attention_for_cpu_backward"):
        torch.autograd.grad(grad.sum(), leaf)


def test_a_fused_kernel_called_by_name_is_refused_before_any_second_order_pass():
    torch.manual_seed(0)
    with pytest.raises(NotDifferentiableError,
                       match=r"fused attention kernel aten\._scaled_dot_product_flash_"
                             r"attention_for_cpu, whose backward"):
        certify(Attention(fused_op=True).eval(), torch.rand(1, 1, 4, 4), eps=0.01,
                method="saliency")


class Once(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.tanh()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (1 - x.tanh() ** 2)


class OnceNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(Once.apply(x.flatten(1)))


def test_a_once_differentiable_function_is_refused_not_given_a_zero_jacobian():
    """Its first backward leaves an error node whose edges lead to a detached copy of the
    input: a second pass to x would silently find no path and return zeros."""
    x = torch.rand(1, 1, 4, 4)
    with pytest.raises(NotDifferentiableError, match="once_differentiable"):
        certify(OnceNet().eval(), x, eps=0.01, method="integrated_gradients", steps=2)


class ParameterOnlyNoDerivative(nn.Module):
    """A scale computed from the parameters by an op without a derivative (the MHA fast
    path's fused op): the gradient in x needs no derivative of it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 3)
        self.p = nn.Parameter(torch.rand(1, 2, 4))
        self.mha = nn.MultiheadAttention(4, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.mha
        scale = torch.ops.aten._native_multi_head_attention(
            self.p, self.p, self.p, 4, 2, m.in_proj_weight, m.in_proj_bias,
            m.out_proj.weight, m.out_proj.bias, need_weights=False)[0].sum()
        return torch.tanh(self.lin(x.flatten(1))) * scale


def test_an_op_without_derivative_off_the_path_to_x_is_not_refused():
    torch.manual_seed(0)
    model, x = ParameterOnlyNoDerivative().eval(), torch.rand(1, 1, 4, 4)
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(leaf)[:, 0].sum(), leaf, create_graph=True)
    assert "NotImplemented" in repr(_names(grad))  # the node is there, on the parameters' path
    assert failing_node(grad, leaf) is None
    (second,) = torch.autograd.grad(grad.sum(), leaf)  # and the second pass works
    assert torch.isfinite(second).all()
    with pytest.warns(NonSmoothModelWarning, match="MultiheadAttention fast path"):
        records = certify(model, x, eps=0.01, method="saliency")
    assert records[0]["xi_max"] > 0


def _names(t: torch.Tensor) -> set[str]:
    names, stack, seen = set(), [t.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(node.name())
        stack.extend(nxt for nxt, _ in node.next_functions)
    return names


def test_remedies_name_the_op():
    assert "torch.export" in remedy("aten::_transformer_encoder_layer_fwd", twice=False)
    assert "nn.MultiheadAttention" in remedy("aten::_native_multi_head_attention", twice=False)
    line = remedy("aten::hardsigmoid_backward", twice=True)
    assert line.startswith("the model calls aten.hardsigmoid,") and "twice" in line


def test_scripted_encoder_layer_is_inspected_on_its_differentiable_path():
    """A scripted nn.TransformerEncoderLayer takes its fused fast path whenever no input
    needs a gradient, which would hide its ReLU; attrcert looks at the path it runs."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.TransformerEncoderLayer(4, 2, 8, dropout=0.0, activation="relu",
                                                    batch_first=True)
            self.head = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.layer(x.reshape(x.shape[0], 4, 4)).flatten(1))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(Net().eval())
    assert find_nonsmooth(scripted, torch.rand(1, 1, 4, 4)) == ["ReLU (aten.relu)"]


def test_torchscript_prim_ops_are_not_taken_for_aten_ones():
    class IntMax(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            k = max(x.shape[0], 1)  # prim::max of two ints
            return torch.tanh(self.lin(x.flatten(1))) * k

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(IntMax().eval())
    assert "prim::max" in str(scripted.inlined_graph)
    assert find_nonsmooth(scripted, torch.rand(1, 1, 4, 4)) == []
