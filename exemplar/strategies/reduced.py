"""`reconstruct`'s screening: the relevance ratio of many subsets of one candidate pool at once,
in the pool's own coordinates (``ReducedScorer``), agreeing with ``selection_relevance`` to
rounding (tested against it); ``reconstruct`` lets ``selection_relevance`` itself decide
among the near-best it screens.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from exemplar.relevance import EPS
from exemplar.simplex import KKT_RTOL, exact_simplex_weights, project_onto_simplex, simplex_weights_gram
from exemplar.threads import PRODUCT_BLOCK_ROWS, products, row_blocks

RECONSTRUCT_BATCH_MAX_CONDITION = 1e7
"""``reconstruct`` screens a whole step's candidates at once from Gram matrices (the normal
equations) only where the directions it solves in are certified better conditioned than this
(relative rounding of their weights then ~1e-8 at worst); any other candidate is screened alone."""


def project_rows_onto_simplex(v: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """``project_onto_simplex`` of every row of ``v: (n, k)`` at once, and which rows it handled.

    The same sort-based threshold, evaluated the same way; a row whose clipped weights sum
    to 0 (entries so large that rounding wiped them out) is flagged False for the caller to
    score one at a time.
    """
    n, k = v.shape
    u = -np.sort(-v, axis=1)  # (n, k) descending
    j = np.arange(1, k + 1, dtype=np.float64)
    mean_top = np.cumsum(u, axis=1) / j  # (n, k)
    hit = (u - mean_top) + 1 / j > 0  # (n, k), True for j = 1..rho
    rho = k - np.argmax(hit[:, ::-1], axis=1)  # (n,)
    t = np.maximum((v - mean_top[np.arange(n), rho - 1][:, None]) + 1 / rho[:, None], 0.0)
    total = t.sum(axis=1)
    ok = total > 0
    return t / np.where(ok, total, 1.0)[:, None], ok


class ReducedScorer:
    """The relevance ratio of any subset of a pool, in the pool's own coordinates.

    With ``M = [P.T, g, 1]: (d, m + 2)`` and its thin QR ``M = Q R`` (``Q`` orthonormal
    columns), every pool row, the test gradient and the all-ones vector are exact
    combinations of ``Q``'s columns (the columns of ``R``), so for a subset ``T`` and
    weights ``t`` the residual is ``r = Q e`` with ``e = h - C_T.T t``, its mean
    ``c1.e / d`` and ``d Var(r) = ||e - mean c1||^2`` (as ``1 = Q c1``). Both solvers
    only see ``A A^T`` and ``A g`` ("exact") or the singular values and vectors of ``A.T``
    ("paper"), which ``C_T`` shares with the rows of ``P``: the same weights at
    ``O(m k^2)`` per subset instead of ``O(d k^2)``.
    """

    def __init__(self, pool_grads: npt.NDArray[np.float64], g: npt.NDArray[np.float64], solver: str) -> None:
        m, d = pool_grads.shape
        stacked = np.column_stack([pool_grads.T, g, np.ones(d)])  # (d, m + 2)
        r = np.asarray(np.linalg.qr(stacked, mode="r"), dtype=np.float64)  # (min(d, m + 2), m + 2)
        self.coords = np.ascontiguousarray(r[:, :m].T)  # (m, K), row j = coordinates of pool row j
        self.h = r[:, m]  # (K,) coordinates of g
        self.ones = r[:, m + 1]  # (K,) coordinates of the all-ones vector
        self.d = d
        self.var_g = float(np.var(g))
        self.solver = solver
        self.gram = products(self.coords)  # (m, m) = P P^T, in steps (exemplar.threads.products)
        self.dots = self.coords @ self.h  # (m,) = P g
        self.sq = np.diag(self.gram).copy()  # (m,) squared row norms

    def ratio(self, subset: list[int]) -> float:
        """The ratio of one subset (pool positions)."""
        c_t = self.coords[subset]  # (k, K)
        if self.solver == "paper":
            rtol = max(len(subset), self.d) * float(np.finfo(np.float32).eps)
            weights = project_onto_simplex(np.linalg.pinv(c_t.T, rtol=rtol) @ self.h)
        else:
            weights = exact_simplex_weights(self.h, c_t)
        e = self.h - c_t.T @ weights  # (K,)
        mean = float(self.ones @ e) / self.d
        var_r = float(np.sum((e - mean * self.ones) ** 2)) / self.d
        return self.var_g / (var_r + EPS)

    def extensions(self, base: list[int], cands: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """``ratio(base + [j])`` for every pool position ``j`` in ``cands: (n,)`` (none in ``base``).

        All candidates at once in the Gram form, from ``base``'s own solution: one bordered
        solve per candidate, ``O(|base|^2)`` each, or for the paper solver where its
        pseudo-inverse truncates, one batched eigendecomposition (``_paper_extensions``,
        ``_paper_eigen_solves``, ``_exact_extensions``). A candidate whose batched weights
        those cannot certify is scored alone by ``ratio``, so every value is ``ratio``'s up
        to rounding. Many candidates are screened in blocks of rows (`exemplar.threads.row_blocks`).
        """
        if cands.shape[0] > PRODUCT_BLOCK_ROWS:
            return np.concatenate([self.extensions(base, cands[rows]) for rows in row_blocks(cands.shape[0])])
        n = cands.shape[0]
        if not base:  # one example: weight 1 under either solver
            weights, ok = np.ones((n, 1)), np.ones(n, dtype=bool)
        elif self.solver == "paper":
            weights, ok = self._paper_extensions(base, cands)
        else:
            weights, ok = self._exact_extensions(base, cands)
        weights = np.where(ok[:, None], weights, 0.0)  # (n, s + 1): the base rows, then the candidate
        e = self.h[None, :] - weights[:, :-1] @ self.coords[base] - weights[:, -1:] * self.coords[cands]  # (n, K)
        mean = (e @ self.ones) / self.d  # (n,)
        var_r = np.sum((e - mean[:, None] * self.ones[None, :]) ** 2, axis=1) / self.d
        out = self.var_g / (var_r + EPS)
        for i in np.flatnonzero(~ok):
            out[i] = self.ratio([*base, int(cands[i])])
        return out

    def _paper_extensions(
        self, base: list[int], cands: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
        """Paper-solver weights of ``base + [j]`` (``base`` not empty) for each candidate, and which are certified.

        With ``M`` the Gram matrix of ``base + [j]`` (base block ``Q``, border ``q``, corner
        ``c``), ``pinv(A.T) g = M^{-1} A g`` when the pseudo-inverse drops no singular value,
        and ``M^{-1}`` follows from ``W = Q^{-1}``: ``u = W q``, ``sigma = c - q.u``. Certified
        when ``1 / ||M^{-1}||_F`` (a lower bound on ``M``'s smallest eigenvalue, from the
        block inverse) exceeds ``trace(M)`` (an upper bound on its largest) times both
        ``4 rtol^2`` (so the pseudo-inverse's cutoff at ``rtol`` times the largest singular
        value drops nothing) and ``1 / RECONSTRUCT_BATCH_MAX_CONDITION``.
        """
        s = len(base)
        idx = np.asarray(base, dtype=np.int64)
        rtol = max(s + 1, self.d) * float(np.finfo(np.float32).eps)
        floor = max(4.0 * rtol * rtol, 1.0 / RECONSTRUCT_BATCH_MAX_CONDITION)
        q_bb = self.gram[np.ix_(idx, idx)]  # (s, s)
        lam, vec = np.linalg.eigh(q_bb)
        if not lam[0] > floor * lam[-1]:  # the base alone is (nearly) truncated
            return self._project(*self._paper_eigen_solves(idx, cands, rtol))
        w = (vec / lam) @ vec.T  # (s, s) = Q^{-1}
        q = self.gram[np.ix_(idx, cands)]  # (s, n)
        u = w @ q  # (s, n)
        c = self.sq[cands]  # (n,)
        sigma = c - np.sum(q * u, axis=0)  # (n,) Schur complements
        t_base = w @ self.dots[base]  # (s,) the base's own least-squares weights
        uu = np.sum(u * u, axis=0)  # (n,)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            t_j = (self.dots[cands] - q.T @ t_base) / sigma  # (n,)
            frob2 = (
                float(np.sum(w * w)) + 2.0 * np.sum(u * (w @ u), axis=0) / sigma + (uu * uu + 2.0 * uu + 1.0) / sigma**2
            )  # (n,) ||M^{-1}||_F^2
            ok = (sigma > 0) & np.isfinite(frob2) & (frob2 > 0)
            ok &= 1.0 / np.sqrt(np.where(ok, frob2, 1.0)) > floor * (np.trace(q_bb) + c)
            t_ls = np.column_stack([(t_base[:, None] - u * t_j).T, t_j])  # (n, s + 1)
        rest = np.flatnonzero(~ok)
        t_ls[rest], ok[rest] = self._paper_eigen_solves(idx, cands[rest], rtol)
        return self._project(t_ls, ok)

    @staticmethod
    def _project(
        t_ls: npt.NDArray[np.float64], ok: npt.NDArray[np.bool_]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
        """The simplex projections of the certified rows of ``t_ls: (n, s + 1)``, and which are usable."""
        weights, projected = project_rows_onto_simplex(np.where(ok[:, None], t_ls, 0.0))
        return weights, ok & projected

    def _paper_eigen_solves(
        self, idx: npt.NDArray[np.int64], cands: npt.NDArray[np.int64], rtol: float
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
        """``pinv(A.T) g`` for ``A`` = the rows ``idx + [j]``, each candidate ``j``, and which are certified.

        From a batched eigendecomposition of the Gram matrices ``M = V diag(lam) V^T``:
        ``pinv(A.T) g = V diag(1/lam) V^T A g`` over the eigenvalues the pseudo-inverse keeps
        (``lam > rtol^2 lam_max``, singular values above ``rtol`` times the largest).
        Certified when no eigenvalue lies within 0.1% of that cutoff (or within 1000 times
        the Gram form's rounding, ``(s + 1) eps lam_max``) and every kept one is above
        ``lam_max / RECONSTRUCT_BATCH_MAX_CONDITION``: rounding in the Gram form then
        neither flips a cutoff decision nor blurs a kept direction.
        """
        rows = np.concatenate([np.broadcast_to(idx, (cands.shape[0], idx.shape[0])), cands[:, None]], axis=1)
        gram = self.gram[rows[:, :, None], rows[:, None, :]]  # (n, s + 1, s + 1)
        lam, vec = np.linalg.eigh(gram)  # ascending
        top = lam[:, -1:]  # (n, 1)
        cutoff = rtol * rtol * top
        keep = lam > cutoff
        band = np.maximum(1e-3 * cutoff, 1e3 * float(np.finfo(np.float64).eps) * lam.shape[1] * top)  # (n, 1)
        clear = (lam < cutoff - band) | ((lam > cutoff + band) & (lam > top / RECONSTRUCT_BATCH_MAX_CONDITION))
        ok = np.all(clear, axis=1) & (top[:, 0] > 0)
        inverse = np.divide(1.0, lam, out=np.zeros_like(lam), where=keep & ok[:, None])  # (n, s + 1)
        coef = np.einsum("nij,ni->nj", vec, self.dots[rows]) * inverse  # (n, s + 1) = diag(1/lam) V^T A g
        return np.einsum("nij,nj->ni", vec, coef), ok

    def _exact_extensions(
        self, base: list[int], cands: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
        """Exact-solver weights of ``base + [j]`` (``base`` not empty) for each candidate, and which are certified.

        From the base's optimum ``t`` (support ``F``): a candidate whose reduced gradient is
        not below ``-tol`` (the exact solver's KKT test) leaves ``t`` optimal. Otherwise the
        face ``F + [j]`` is solved by a bordered solve of ``F``'s KKT system (with ``Q``
        scaled to unit largest diagonal, as the solver does), and the result is certified a
        posteriori, however well conditioned the face: its weights are positive, its KKT
        residual is within ``tol`` and no other base row has a reduced gradient below
        ``-tol``, so it satisfies the exact solver's own optimality test.
        """
        n, s = cands.shape[0], len(base)
        idx = np.asarray(base, dtype=np.int64)
        weights = np.zeros((n, s + 1))
        ok = np.zeros(n, dtype=bool)
        q_bb = self.gram[np.ix_(idx, idx)]
        b_base = self.dots[idx]  # (s,)
        t = simplex_weights_gram(q_bb, b_base)  # (s,)
        c = self.sq[cands]  # (n,)
        dots = self.dots[cands]  # (n,)
        unit = float(np.max(np.diag(q_bb)))  # the base's largest diagonal; the solver scales by the largest
        tol = KKT_RTOL * np.maximum(np.maximum(unit, c), np.maximum(float(np.max(np.abs(b_base))), np.abs(dots)))
        grad_base = q_bb @ t - b_base  # (s,) half the objective's gradient
        mu = float(t @ grad_base)
        reduced = self.gram[np.ix_(cands, idx)] @ t - dots - mu  # (n,)
        same = reduced >= -tol
        weights[same, :s] = t
        ok[same] = True
        todo = np.flatnonzero(~same)
        face = np.flatnonzero(t > 0)
        f = face.shape[0]
        if todo.size == 0:
            return weights, ok
        if not unit > 0:  # the KKT system below is solved with Q / unit
            return weights, ok
        kkt = np.zeros((f + 1, f + 1))
        kkt[:f, :f] = q_bb[np.ix_(face, face)] / unit
        kkt[:f, f] = kkt[f, :f] = 1.0
        try:
            kkt_inv = np.linalg.inv(kkt)
        except np.linalg.LinAlgError:
            return weights, ok
        face_rows = idx[face]
        cand = cands[todo]
        border = np.vstack([self.gram[np.ix_(face_rows, cand)] / unit, np.ones((1, todo.size))])  # (f + 1, nt)
        rhs = np.append(self.dots[face_rows] / unit, 1.0)  # (f + 1,)
        x0 = kkt_inv @ rhs  # (f + 1,)
        u = kkt_inv @ border  # (f + 1, nt)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            sigma = c[todo] / unit - np.sum(border * u, axis=0)  # (nt,)
            z_j = (dots[todo] / unit - border.T @ x0) / sigma  # (nt,)
            x = x0[:, None] - u * z_j  # (f + 1, nt): face weights, then the multiplier nu / unit
            z_face, nu = x[:f], x[f] * unit
            grad_all = self.gram[np.ix_(idx, face_rows)] @ z_face + self.gram[np.ix_(idx, cand)] * z_j
            grad_all -= b_base[:, None]  # (s, nt) at the new point, for every base row
            grad_j = np.sum(self.gram[np.ix_(face_rows, cand)] * z_face, axis=0) + c[todo] * z_j - dots[todo]
            residual = np.maximum(np.max(np.abs(grad_all[face] + nu), axis=0), np.abs(grad_j + nu))  # (nt,)
            off = np.setdiff1d(np.arange(s), face)
            off_ok = np.all(grad_all[off] + nu >= -tol[todo], axis=0) if off.size else np.ones(todo.size, dtype=bool)
            good = (
                (sigma > 0)
                & np.all(z_face > 0, axis=0)
                & (z_j > 0)
                & (residual <= tol[todo])
                & off_ok
                & (np.abs(np.sum(z_face, axis=0) + z_j - 1.0) <= 1e-9)
            )
        rows = todo[good]
        total = np.sum(z_face[:, good], axis=0) + z_j[good]
        weights[np.ix_(rows, face)] = (z_face[:, good] / total).T
        weights[rows, s] = z_j[good] / total
        ok[rows] = True
        return weights, ok
