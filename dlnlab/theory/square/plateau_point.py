"""The critical point of the plateau S = {1..r} nearest a checkpoint (docs/theory.md §6): one
construction for the trajectory's `near_label` (`trajectory.project_to_critical`) and for the pivot
test of approximately critical points in Theorem 7's classifier (`theorem7`), so that the two labels
are decided on the same point. Float64, batched over the ensemble dim E.
"""
from __future__ import annotations

import torch

from dlnlab.theory.square.data import LandscapeData
from dlnlab.theory.square.lanczos import SquareLossHVP

__all__ = ["PROJECTION_GRAD_RTOL", "POLISH_ITERS", "snap", "snap_plateaus", "grad_rel"]

# the projected point is critical to this relative gradient (float64 rounding leaves ~1e-14)
PROJECTION_GRAD_RTOL = 1e-10
# re-projections at most until PROJECTION_GRAD_RTOL holds
POLISH_ITERS = 3


def snap(ws: list[torch.Tensor], data: LandscapeData, r: int) -> list[torch.Tensor]:
    """Keep r directions per layer and make the product exactly U_S U_S^T A (S = {1..r}).

    V_0 = an orthonormal basis of the row space of U_S^T A, V_H = U_S (the exact end subspaces of a
    critical point of S: docs/theory.md §2, Prop. 9 with Z = 0); V_h = orth(W_h V_{h-1}) carries the
    product's learned modes through the layers. Cores C_h = V_h^T W_h V_{h-1} are the kept parts;
    the top core is re-solved so that C_H..C_1 = U_S^T A V_0 exactly. Then L' = value(S) and every
    gradient vanishes: Suf_h^T G has the factor U_S^T U_Q = 0 (h < H), and G Pre_{H-1}^T has
    U_Q^T Syx V_0 = U_Q^T Sigma U_S (...) = 0.
    """
    E, H = ws[0].shape[0], len(ws)
    if r == 0:
        return [torch.zeros_like(w) for w in ws]
    US = data.U[:, :r]
    V0 = torch.linalg.qr(data.A.T @ US).Q                      # (d_x, r)
    K = US.T @ data.A @ V0                                     # (r, r): the target core product
    Vs, cores = [V0.expand(E, -1, -1)], []
    for h in range(1, H):
        img = ws[h - 1] @ Vs[-1]                               # (E, d_h, r)
        Q, R = torch.linalg.qr(img)
        Vs.append(Q)
        cores.append(R)                                        # = Q^T W_h V_{h-1}
    low = cores[0]
    for C in cores[1:]:
        low = C @ low                                          # C_{H-1}..C_1
    # C_H low = K  <=>  low^T C_H^T = K^T; a singular core (a layer that lost a learned mode) gives
    # non-finite entries, which the gradient test below reports
    CH = torch.linalg.solve_ex(low.transpose(-1, -2), K.T.expand(E, -1, -1))[0].transpose(-1, -2)
    out = [Vs[h] @ cores[h - 1] @ Vs[h - 1].transpose(-1, -2) for h in range(1, H)]
    out.append(US @ CH @ Vs[H - 1].transpose(-1, -2))
    return out


def snap_plateaus(ws: list[torch.Tensor], data: LandscapeData, r: torch.Tensor,
                  grad_rtol: float = PROJECTION_GRAD_RTOL,
                  polish_iters: int = POLISH_ITERS) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(projected weights, (E,) ||grad L||_F / tr(Syy) there): member e snapped onto the critical
    point of S = {1..r_e}, re-snapped up to polish_iters times while it misses grad_rtol. A member's
    point never depends on the others. Members that stay above grad_rtol (NaN included) are the
    caller's to report."""
    E = ws[0].shape[0]
    proj = [torch.empty_like(w) for w in ws]
    g_all = torch.empty(E, dtype=ws[0].dtype)
    for rv in sorted(set(r.tolist())):                         # a few distinct r, not a loop over members
        idx = (r == rv).nonzero().squeeze(1)
        sub = snap([w[idx] for w in ws], data, rv)
        g = grad_rel(sub, data)
        for _ in range(polish_iters):                          # re-snapping removes rounding residue
            bad = (~(g <= grad_rtol)).nonzero().squeeze(1)
            if not bad.numel():
                break
            again = snap([s[bad] for s in sub], data, rv)
            for s, a in zip(sub, again):
                s[bad] = a
            g[bad] = grad_rel(again, data)
        for h in range(len(ws)):
            proj[h][idx] = sub[h]
        g_all[idx] = g
    return proj, g_all


def grad_rel(ws: list[torch.Tensor], d: LandscapeData) -> torch.Tensor:
    """(E,) ||grad L||_F / tr(Syy), closed form."""
    g = SquareLossHVP(ws, d.A, d.Sxx).grad()
    return sum((x * x).sum((-2, -1)) for x in g).sqrt() / max(d.tr_syy, 1e-300)
