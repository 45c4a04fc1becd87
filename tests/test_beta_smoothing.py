"""Beta-smoothing (``--beta-smooth``, :mod:`attrcert.loading.smoothing`): each replacement's
formula, its convergence to the original operation as beta grows, second derivatives by
autograd, and the graph rewrite on every model kind attrcert loads (nn.Module traced with
torch.fx, torch.export programs, traced TorchScript, normalisation in front)."""

from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attrcert.errors import InputError
from attrcert.loading import smooth_ops as ops
from attrcert.loading import with_normalization
from attrcert.loading.smoothing import beta_smooth, differentiable_hard
from attrcert.smoothness import find_nonsmooth

torch.set_num_threads(1)
F64 = torch.float64


def sp(x: torch.Tensor, beta: float) -> torch.Tensor:
    """softplus_beta written out (no threshold), as the reference."""
    return torch.logaddexp(torch.zeros_like(x), beta * x) / beta


@pytest.fixture
def grid() -> torch.Tensor:
    return torch.linspace(-8, 8, 1601, dtype=F64)


# --- the formulas ---------------------------------------------------------------------------

def test_each_replacement_is_its_relu_identity_with_relu_smoothed(grid):
    b, x, y = 3.0, grid, grid.flip(0) * 0.7 + 0.3
    cases = {
        "relu": (ops.smooth_relu(x, b), sp(x, b)),
        "leaky": (ops.smooth_leaky_relu(x, 0.1, b), 0.1 * x + 0.9 * sp(x, b)),
        "clamp": (ops.smooth_clamp(x, -1.0, 2.0, b), -1.0 + sp(x + 1.0, b) - sp(x - 2.0, b)),
        "clamp_min": (ops.smooth_clamp(x, 0.5, None, b), 0.5 + sp(x - 0.5, b)),
        "clamp_max": (ops.smooth_clamp(x, None, 0.5, b), 0.5 - sp(0.5 - x, b)),
        "maximum": (ops.smooth_maximum(x, y, b), y + sp(x - y, b)),
        "minimum": (ops.smooth_minimum(x, y, b), x - sp(x - y, b)),
        "hardsigmoid": (ops.smooth_hardsigmoid(x, b), (sp(x + 3, b) - sp(x - 3, b)) / 6),
        "hardswish": (ops.smooth_hardswish(x, b), x * (sp(x + 3, b) - sp(x - 3, b)) / 6),
    }
    for name, (got, want) in cases.items():
        # torch's softplus is the identity above beta x = 20: 2e-9 / beta at most
        assert torch.allclose(got, want, rtol=0, atol=1e-9), name
    w = torch.tensor([0.1, 0.3], dtype=F64)
    x4 = grid[:1600].reshape(2, 2, 20, 20)
    want = w.view(1, 2, 1, 1) * x4 + (1 - w.view(1, 2, 1, 1)) * sp(x4, b)
    assert torch.allclose(ops.smooth_prelu(x4, w, b), want, rtol=0, atol=1e-9)


def test_replacements_converge_to_the_original_operation(grid):
    x, y = grid, grid.flip(0) * 0.7 + 0.3
    originals = {
        "relu": (lambda b: ops.smooth_relu(x, b), F.relu(x), 1),
        "leaky": (lambda b: ops.smooth_leaky_relu(x, 0.1, b), F.leaky_relu(x, 0.1), 1),
        "relu6": (lambda b: ops.smooth_clamp(x, 0.0, 6.0, b), F.relu6(x), 2),
        "hardtanh": (lambda b: ops.smooth_clamp(x, -1.0, 1.0, b), F.hardtanh(x), 2),
        "maximum": (lambda b: ops.smooth_maximum(x, y, b), torch.maximum(x, y), 1),
        "minimum": (lambda b: ops.smooth_minimum(x, y, b), torch.minimum(x, y), 1),
        "hardsigmoid": (lambda b: ops.smooth_hardsigmoid(x, b), F.hardsigmoid(x), 2 / 6),
        "hardswish": (lambda b: ops.smooth_hardswish(x, b), F.hardswish(x), 8 * 2 / 6),
    }
    for name, (smooth, exact, relus) in originals.items():
        errors = []
        for b in (1.0, 10.0, 100.0, 1e4):
            err = float((smooth(b) - exact).abs().max())
            # each smoothed ReLU is within log 2 / beta of the ReLU
            assert err <= relus * math.log(2) / b * (1 + 1e-9) + 1e-12, (name, b, err)
            errors.append(err)
        assert errors == sorted(errors, reverse=True), name


def lse_windows(x, beta, k, s, p, d, ceil_mode):
    """LSE_beta over each max-pooling window's elements inside the image (brute force)."""
    ref = F.max_pool2d(x, k, s, p, d, ceil_mode)
    out = torch.empty_like(ref)
    for oh, ow in itertools.product(range(ref.shape[2]), range(ref.shape[3])):
        vals = [x[:, :, oh * s - p + i * d, ow * s - p + j * d]
                for i, j in itertools.product(range(k), range(k))
                if 0 <= oh * s - p + i * d < x.shape[2] and 0 <= ow * s - p + j * d < x.shape[3]]
        out[:, :, oh, ow] = torch.logsumexp(beta * torch.stack(vals, -1), -1) / beta
    return out, ref


@pytest.mark.parametrize("k,s,p,d,ceil_mode", [(2, 2, 0, 1, False), (3, 2, 1, 1, False),
                                               (3, 1, 1, 1, False), (2, 2, 1, 1, False),
                                               (3, 2, 1, 2, False), (3, 2, 0, 1, True),
                                               (2, 3, 1, 1, True)])
def test_smooth_max_pooling_is_the_window_log_sum_exp(k, s, p, d, ceil_mode):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 8, dtype=F64)
    want, ref = lse_windows(x, 2.0, k, s, p, d, ceil_mode)
    got = ops.smooth_max_pool2d(x, 2.0, k, s, p, d, ceil_mode)
    assert got.shape == ref.shape
    assert torch.allclose(got, want, rtol=0, atol=1e-12)
    # max <= LSE_beta <= max + log(k^2) / beta, and it converges
    assert (got >= ref - 1e-12).all() and (got <= ref + math.log(k * k) / 2.0 + 1e-12).all()
    assert torch.allclose(ops.smooth_max_pool2d(x, 1e8, k, s, p, d, ceil_mode), ref,
                          rtol=0, atol=1e-7)


@pytest.mark.parametrize("size", [1, 2, (3, 4), (None, 2)])
def test_smooth_adaptive_max_pooling_converges(size):
    x = torch.randn(1, 2, 6, 9, dtype=F64, generator=torch.Generator().manual_seed(1))
    ref = F.adaptive_max_pool2d(x, size)
    got = ops.smooth_adaptive_max_pool2d(x, 1e8, size)
    assert got.shape == ref.shape and torch.allclose(got, ref, rtol=0, atol=1e-7)
    assert (ops.smooth_adaptive_max_pool2d(x, 1.0, size) >= ref).all()


def second_derivative(fn, x):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(x).sum(), x, create_graph=True)
    if not g.requires_grad:  # a constant slope
        return g.detach(), torch.zeros_like(x)
    (h,) = torch.autograd.grad(g.sum(), x, materialize_grads=True)
    return g.detach(), h


def test_hardsigmoid_twice_differentiable_with_torchs_values_and_slopes():
    x = torch.cat([torch.linspace(-5, 5, 1001), torch.tensor([-3.0, 3.0, 0.0])])
    for dtype in (torch.float32, F64):
        xd = x.to(dtype)
        assert torch.equal(ops.hardsigmoid_twice(xd), F.hardsigmoid(xd))
        a = xd.clone().requires_grad_(True)
        (want,) = torch.autograd.grad(F.hardsigmoid(a).sum(), a)
        got, h = second_derivative(ops.hardsigmoid_twice, xd)
        # torch's float64 slope is 1/6 rounded to float32; boundaries +-3 included
        assert torch.allclose(got, want, rtol=0, atol=1e-8)
        assert (h == 0).all()
    with pytest.raises(RuntimeError, match="hardsigmoid_backward"):
        second_derivative(F.hardsigmoid, x.to(F64))


def test_smoothed_second_derivatives_match_the_closed_form(grid):
    b = 4.0
    _, h = second_derivative(lambda t: ops.smooth_relu(t, b), grid)
    sig = torch.sigmoid(b * grid)
    below = b * grid < 20  # torch's threshold: the identity above, second derivative 0
    assert torch.allclose(h[below], (b * sig * (1 - sig))[below], rtol=1e-9, atol=1e-15)
    assert (h[~below] == 0).all() and float(h.max()) <= b / 4 + 1e-12


# --- the graph rewrite ----------------------------------------------------------------------

class Relatives(nn.Module):
    """Every smoothable operation, as modules, functions and methods, in place and not."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        for conv in (self.conv, self.conv2):
            conv.weight.data = torch.randn(conv.weight.shape, generator=g) * 0.5
        self.act = nn.ReLU(inplace=True)
        self.leaky = nn.LeakyReLU(0.2)
        self.prelu = nn.PReLU(4, init=0.3)
        self.relu6 = nn.ReLU6()
        self.hswish = nn.Hardswish()
        self.hsig = nn.Hardsigmoid()
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.gpool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        z = self.act(y)  # in place: y now holds relu(y)
        t = z + y + F.relu(y) + y.clamp(min=0.1) + torch.clamp(y, -0.5, 0.5)
        t = self.leaky(t) + self.prelu(t) + self.relu6(t) + F.hardtanh(t, -2.0, 2.0)
        t = self.pool(self.hswish(t) * self.hsig(t))
        u = self.conv2(t)
        u = torch.maximum(u, t) + torch.minimum(u, 0.5 * t) + F.leaky_relu(u, 0.05)
        v = F.max_pool2d(u, 3, 2, ceil_mode=True)  # 4 x 4 -> 2 x 2 (1 x 1 without ceil)
        u.relu_()  # the result unused: u itself is overwritten
        return self.head(self.gpool(u).flatten(1) + self.gpool(v).flatten(1))


def reference(model: Relatives, x: torch.Tensor, b: float) -> torch.Tensor:
    """:class:`Relatives` with every operation written as its smoothed formula by hand."""
    def s(t):
        return F.softplus(t, beta=b)

    def clamp(t, lo, hi):
        return (lo + s(t - lo) if hi is None else lo + s(t - lo) - s(t - hi))

    y = model.conv(x)
    y = s(y)  # relu_ overwrote y
    t = y + y + s(y) + clamp(y, 0.1, None) + clamp(y, -0.5, 0.5)
    w = model.prelu.weight.view(1, -1, 1, 1)
    t = (0.2 * t + 0.8 * s(t)) + (w * t + (1 - w) * s(t)) + clamp(t, 0.0, 6.0) \
        + clamp(t, -2.0, 2.0)
    hs = (s(t + 3) - s(t - 3)) / 6
    t = lse_windows(t * hs * hs, b, 3, 2, 1, 1, False)[0]
    u = model.conv2(t)
    u = (t + s(u - t)) + (u - s(u - 0.5 * t)) + (0.05 * u + 0.95 * s(u))
    v = lse_windows(u, b, 3, 2, 0, 1, True)[0]
    u = s(u)
    return model.head(torch.logsumexp(b * u.flatten(2), -1) / b
                      + torch.logsumexp(b * v.flatten(2), -1) / b)


@pytest.fixture(scope="module")
def relatives():
    model = Relatives().double().eval()
    x = torch.randn(3, 2, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(2))
    return model, x


def exported(model, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim.AUTO},)
                                   ).module()


def test_beta_smooth_traced_module_equals_the_hand_written_network(relatives):
    model, x = relatives
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        out = model(x)
    for b in (0.5, 3.0):
        smooth = beta_smooth(model, b, x)
        with torch.no_grad():
            assert torch.allclose(smooth(x), reference(model, x, b), rtol=1e-10, atol=1e-10)
    with torch.no_grad():  # the original model is left as it was
        assert torch.equal(model(x), out)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert find_nonsmooth(model, x) and not find_nonsmooth(smooth, x)


@pytest.mark.parametrize("kind", ["module", "export", "torchscript", "normalized"])
def test_beta_smooth_every_model_kind_converges_and_differentiates_twice(relatives, kind):
    model, x = relatives
    if kind == "export":
        model = exported(model, x)
    elif kind == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = torch.jit.trace(model, x[:1])
    elif kind == "normalized":
        model = with_normalization(model, [0.1, 0.2], [0.5, 2.0])
    with torch.no_grad():
        out = model(x)
    errors = []
    for b in (10.0, 1e3, 1e5):
        smooth = beta_smooth(model, b, x)
        with torch.no_grad():
            errors.append(float((smooth(x) - out).abs().max()))
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-3, errors
    if kind == "module":
        with torch.no_grad():  # same graph rewrite whatever the kind
            assert torch.allclose(smooth(x), reference(relatives[0], x, 1e5), atol=1e-9)
    smooth = beta_smooth(model, 2.0, x)
    assert not find_nonsmooth(smooth, x)
    leaf = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(smooth(leaf)[:, 0].sum(), leaf, create_graph=True)
    (hv,) = torch.autograd.grad((g * torch.ones_like(g)).sum(), leaf)
    assert torch.isfinite(hv).all() and hv.abs().sum() > 0
    smooth_f32 = beta_smooth(model, 2.0, x).float() if kind != "export" else None
    if smooth_f32 is not None:
        with torch.no_grad():
            assert torch.allclose(smooth_f32(x.float()).double(), smooth(x), atol=1e-4)


def test_beta_smooth_refuses_what_it_cannot_smooth_by_name():
    cases = {"abs": lambda x: x.abs().sum((2, 3)), "sign": lambda x: torch.sign(x).mean((2, 3)),
             "ELU": lambda x: F.elu(x).mean((2, 3)),
             "max": lambda x: x.amax((2, 3)),
             "floor": lambda x: torch.floor(x).mean((2, 3))}

    class Wrap(nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def forward(self, x):
            return self.fn(F.relu(x))

    x = torch.randn(2, 3, 4, 4)
    for name, fn in cases.items():
        with pytest.raises(InputError, match=rf"--beta-smooth cannot smooth {name}"):
            beta_smooth(Wrap(fn), 5.0, x)

    class Indices(nn.Module):
        def forward(self, x):
            y, i = F.max_pool2d(x, 2, return_indices=True)
            return (y + i.float()).flatten(1)

    with pytest.raises(InputError, match="indices"):
        beta_smooth(Indices(), 5.0, x)
    with pytest.raises(InputError, match="positive"):
        beta_smooth(Wrap(lambda t: t.mean((2, 3))), -1.0, x)


def test_differentiable_hard_keeps_values_and_flags_the_operations():
    class Mobile(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.act = nn.Hardswish(inplace=True)
            self.gate = nn.Hardsigmoid()
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            y = self.act(self.conv(x) * 3)
            return self.head((y * self.gate(y)).mean((2, 3)))

    torch.manual_seed(0)
    model = Mobile().double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=F64)
    for m in (model, exported(model, x)):
        fixed = differentiable_hard(m, x)
        with torch.no_grad():
            assert torch.equal(fixed(x), m(x))
        names = find_nonsmooth(fixed, x)
        assert any(n.startswith("Hardswish") for n in names)  # twice differentiable by
        assert any(n.startswith("Hardsigmoid") for n in names)  # autograd, still flagged
        # saliency's Jacobian (the Hessian) exists and matches finite differences
        leaf = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(fixed(leaf)[:, 0].sum(), leaf, create_graph=True)
        v = torch.randn_like(x)
        (hv,) = torch.autograd.grad((g * v).sum(), leaf)
        h = 1e-6

        def grad_at(z, m=m):
            z = z.clone().requires_grad_(True)
            return torch.autograd.grad(m(z)[:, 0].sum(), z)[0]
        fd = (grad_at(x + h * v) - grad_at(x - h * v)) / (2 * h)
        assert torch.allclose(hv, fd, rtol=1e-4, atol=1e-6)


def test_beta_smooth_leaves_a_smooth_model_as_it_is_and_names_what_it_cannot_read():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Softplus()).eval()
    x = torch.rand(2, 1, 2, 2)
    assert beta_smooth(net, 3.0, x) is net

    class Branchy(nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                x = torch.relu(x)
            return x.flatten(1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(Branchy())
    with pytest.raises(InputError, match=r"--beta-smooth cannot read the TorchScript "
                                         r"operation prim::If"):
        beta_smooth(scripted, 3.0, x)
