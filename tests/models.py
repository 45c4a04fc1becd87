"""Test models: closed-form quadratic classifiers and tiny smooth / non-smooth CNNs."""

from __future__ import annotations

import torch
from torch import nn


class Quadratic(nn.Module):
    """``f_k(x) = 1/2 z^T A_k z + b_k^T z`` with ``z`` the flattened ``x``, ``A_k`` symmetric.

    ``grad f_y = A_y z + b_y`` and ``Hess f_y = A_y``, so every attribution Jacobian is
    known in closed form (see :meth:`jacobian`).
    """

    def __init__(self, a: torch.Tensor, b: torch.Tensor, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.a = nn.Parameter(0.5 * (a + a.transpose(1, 2)), requires_grad=False)
        self.b = nn.Parameter(b, requires_grad=False)
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1)
        return 0.5 * torch.einsum("nd,kde,ne->nk", z, self.a, z) + z @ self.b.T

    def jacobian(self, x: torch.Tensor, y: int, method: str, steps: int = 50) -> torch.Tensor:
        """``J = dg/dx`` of one sample ``x`` (``(C, H, W)``) for ``method``, in closed form."""
        z = x.flatten()
        a, b = self.a[y], self.b[y]
        if method == "saliency":
            return a.clone()
        if method == "input_x_gradient":
            return torch.diag(a @ z + b) + torch.diag(z) @ a
        k = (steps + 1) / (2 * steps)  # (1/m) sum_a a/m
        return torch.diag(k * (a @ z) + b) + k * torch.diag(z) @ a

    def attribution(self, x: torch.Tensor, y: int, method: str, steps: int = 50) -> torch.Tensor:
        """``g`` of one sample in closed form (IG: ``z * (k A z + b)``, exact for quadratics)."""
        z = x.flatten()
        a, b = self.a[y], self.b[y]
        if method == "saliency":
            return a @ z + b
        if method == "input_x_gradient":
            return z * (a @ z + b)
        k = (steps + 1) / (2 * steps)
        return z * (k * (a @ z) + b)


def make_quadratic(k: int = 4, shape: tuple[int, ...] = (1, 3, 3), seed: int = 0,
                   rank: int | None = None) -> Quadratic:
    gen = torch.Generator().manual_seed(seed)
    d = int(torch.tensor(shape).prod())
    if rank is None:
        a = torch.randn(k, d, d, generator=gen, dtype=torch.float64)
    else:
        u = torch.randn(k, d, rank, generator=gen, dtype=torch.float64)
        a = u @ u.transpose(1, 2)
    b = torch.randn(k, d, generator=gen, dtype=torch.float64)
    return Quadratic(a, b, shape).eval()


def make_cnn(smooth: bool = True, seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    """A tiny CNN on (1, 6, 6) inputs with 3 classes; Softplus + AvgPool or ReLU + MaxPool."""
    torch.manual_seed(seed)
    act = nn.Softplus if smooth else nn.ReLU
    pool = nn.AvgPool2d if smooth else nn.MaxPool2d
    net = nn.Sequential(nn.Conv2d(1, 3, 3), act(), pool(2), nn.Flatten(), nn.Linear(12, 6),
                        act(), nn.Linear(6, 3))
    return net.to(dtype).eval()
