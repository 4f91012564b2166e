"""The neural ranker family of BERT-RS, built from small branches (paper eq. 8-12, NCF eq. 9-11).

    gmf.py        l_g = u_g (.) i_g                          NCF's GMF (eq. 9)
    mlp.py        l_m = MLP([u_m ; i_m])                     NCF's MLP (eq. 10-11)
    semantic.py   l_s (eq. 8, two readings) and l_t = cos(b_u, b_i), from fixed review profiles
    head.py       y_hat = sigmoid(w^T [l_s ; l_t ; l_g ; l_m] + b) (eq. 12) over the branches a variant switches on
"""

from pipeline.ranking.models.fusion.head import BRANCHES, FusionRanker

__all__ = ["BRANCHES", "FusionRanker"]
