"""`FactoredMatrix`: a low-rank matrix kept as the product of its two factors, as TransformerLens's.

M = A @ B with A [..., ldim, mdim] and B [..., mdim, rdim] (leading dimensions broadcast, for
instance [layer, head]); `model.OV` = W_V @ W_O and `model.QK` = W_Q @ W_K^T are such matrices of
shape [layer, head, d_model, d_model] with mdim = d_head. Everything below is computed from the
factors, never from the ldim x rdim product unless asked (`.AB`):

- `.norm()`: Frobenius norm, from the mdim x mdim Gram matrices: ||AB||^2 = sum((A^T A) * (B B^T));
- `.svd()`: (U [..., ldim, mdim], S [..., mdim], V [..., rdim, mdim]) with M = U @ diag(S) @ V^T, from the
  QR decompositions of A and B^T and the SVD of an mdim x mdim matrix (V, not V^T, as TransformerLens
  returns it; `.Vh` is V^T);
- `.eigenvalues`: the eigenvalues of BA [..., mdim, mdim] (AB's non-zero eigenvalues, complex);
- indexing: `OV[layer]`, `OV[layer, head]`, and slices of rows / columns after the leading dimensions;
- `@` with tensors (a vector gives a tensor, a matrix a FactoredMatrix) and other factored matrices.
"""

from __future__ import annotations

from typing import Any

import torch

from circuitry.errors import UsageError


class FactoredMatrix:
    """M = A @ B, kept as A [..., ldim, mdim] and B [..., mdim, rdim]."""

    def __init__(self, A: torch.Tensor, B: torch.Tensor) -> None:
        if A.ndim < 2 or B.ndim < 2 or A.shape[-1] != B.shape[-2]:
            raise UsageError(f"FactoredMatrix needs A [..., ldim, mdim] and B [..., mdim, rdim], got "
                             f"{tuple(A.shape)} and {tuple(B.shape)}")
        try:
            lead = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
        except RuntimeError:
            raise UsageError(f"FactoredMatrix: leading dimensions {tuple(A.shape[:-2])} and {tuple(B.shape[:-2])} "
                             f"do not broadcast") from None
        self.A = A.expand(*lead, *A.shape[-2:]) if A.shape[:-2] != lead else A
        self.B = B.expand(*lead, *B.shape[-2:]) if B.shape[:-2] != lead else B
        self.ldim, self.mdim, self.rdim = A.shape[-2], A.shape[-1], B.shape[-1]
        self.shape = torch.Size((*lead, self.ldim, self.rdim))
        self._svd: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def AB(self) -> torch.Tensor:
        """The product [..., ldim, rdim], materialised."""
        return self.A @ self.B

    @property
    def BA(self) -> torch.Tensor:
        """B @ A [..., mdim, mdim] (needs a square matrix: ldim == rdim)."""
        if self.ldim != self.rdim:
            raise UsageError(f"BA needs a square matrix; this one is {self.ldim} x {self.rdim}")
        return self.B @ self.A

    @property
    def T(self) -> FactoredMatrix:
        return FactoredMatrix(self.B.transpose(-1, -2), self.A.transpose(-1, -2))

    # ------------------------------------------------------------------ algebra
    def __matmul__(self, other: Any) -> Any:
        if isinstance(other, FactoredMatrix):
            return FactoredMatrix(self.A, (self.B @ other.A) @ other.B)
        other = _tensor(other)
        if other.ndim < 2:  # a vector: the product, as a tensor [..., ldim]
            return (self.A @ (self.B @ other.unsqueeze(-1))).squeeze(-1)
        if other.shape[-2] != self.rdim:
            raise UsageError(f"cannot multiply a FactoredMatrix {tuple(self.shape)} by {tuple(other.shape)}")
        return FactoredMatrix(self.A, self.B @ other)

    def __rmatmul__(self, other: Any) -> Any:
        other = _tensor(other)
        if other.ndim < 2:  # a row vector: [..., rdim]
            return ((other.unsqueeze(-2) @ self.A) @ self.B).squeeze(-2)
        if other.shape[-1] != self.ldim:
            raise UsageError(f"cannot multiply {tuple(other.shape)} by a FactoredMatrix {tuple(self.shape)}")
        return FactoredMatrix(other @ self.A, self.B)

    def __mul__(self, scalar: float | torch.Tensor) -> FactoredMatrix:
        """Times a number (or a tensor over the leading dimensions, broadcast as [..., 1, 1])."""
        s = scalar[..., None, None] if isinstance(scalar, torch.Tensor) and scalar.ndim else scalar
        return FactoredMatrix(self.A * s, self.B)

    __rmul__ = __mul__

    # ------------------------------------------------------------------ analysis
    def norm(self) -> torch.Tensor:
        """Frobenius norm [...], from the mdim x mdim Gram matrices of the factors (float32 for half-precision
        factors)."""
        A, B = _wide(self.A), _wide(self.B)
        gram_a = A.transpose(-1, -2) @ A  # [..., mdim, mdim]
        gram_b = B @ B.transpose(-1, -2)  # [..., mdim, mdim]
        return (gram_a * gram_b).sum((-1, -2)).clamp(min=0).sqrt()

    def svd(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(U [..., ldim, k], S [..., k], V [..., rdim, k]), k = mdim, with AB = U @ diag(S) @ V^T (V as
        TransformerLens returns it); from QR of A and B^T: AB = Qa (Ra Rb^T) Qb^T."""
        if self._svd is None:
            A, Bt = _wide(self.A), _wide(self.B.transpose(-1, -2))
            qa, ra = torch.linalg.qr(A)  # [..., ldim, k], [..., k, k]
            qb, rb = torch.linalg.qr(Bt)  # [..., rdim, k], [..., k, k]
            u, s, vh = torch.linalg.svd(ra @ rb.transpose(-1, -2))  # k x k
            dtype = self.A.dtype
            self._svd = ((qa @ u).to(dtype), s.to(dtype), (qb @ vh.transpose(-1, -2)).to(dtype))
        return self._svd

    @property
    def U(self) -> torch.Tensor:
        return self.svd()[0]

    @property
    def S(self) -> torch.Tensor:
        return self.svd()[1]

    @property
    def V(self) -> torch.Tensor:
        return self.svd()[2]

    @property
    def Vh(self) -> torch.Tensor:
        """V^T [..., k, rdim]: AB = U @ diag(S) @ Vh."""
        return self.svd()[2].transpose(-1, -2)

    @property
    def eigenvalues(self) -> torch.Tensor:
        """Eigenvalues [..., mdim] (complex) of BA: the non-zero eigenvalues of AB (if BAv = kv then AB(Av) = kAv)."""
        return torch.linalg.eigvals(_wide(self.BA))

    # ------------------------------------------------------------------ indexing
    def __getitem__(self, idx: Any) -> FactoredMatrix:
        """Index the leading dimensions; one or two more entries slice the rows (of A) and columns (of B)
        (an integer there keeps its dimension, as in TransformerLens)."""
        idx = idx if isinstance(idx, tuple) else (idx,)
        if any(i is Ellipsis or i is None for i in idx):
            raise UsageError("FactoredMatrix indices are integers and slices (no ... or None)")
        n_lead = self.ndim - 2
        lead, rest = idx[:n_lead], [_as_slice(i) for i in idx[n_lead:]]
        if len(rest) > 2:
            raise UsageError(f"index {idx!r} is too long for a FactoredMatrix of shape {tuple(self.shape)}")
        rows = rest[0] if rest else slice(None)
        cols = rest[1] if len(rest) > 1 else slice(None)
        pad = (slice(None),) * (n_lead - len(lead))
        return FactoredMatrix(self.A[lead + pad + (rows,)], self.B[lead + pad + (slice(None), cols)])

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"FactoredMatrix(shape {tuple(self.shape)}, hidden dim {self.mdim})"


def _as_slice(i: Any) -> slice:
    if isinstance(i, slice):
        return i
    if isinstance(i, int) and not isinstance(i, bool):
        return slice(i, i + 1 if i != -1 else None)
    raise UsageError(f"rows and columns of a FactoredMatrix are indexed by integers or slices, got {i!r}")


def _tensor(x: Any) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise UsageError(f"a FactoredMatrix multiplies tensors and factored matrices, not {type(x).__name__}")
    return x


def _wide(x: torch.Tensor) -> torch.Tensor:
    """Half-precision factors in float32 (QR, SVD and eig are not implemented for them)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
