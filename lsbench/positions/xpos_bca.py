"""xPos with blockwise causal attention (BCA) at evaluation, as the xPos paper scores long inputs.

Sun et al. 2023, "A Length-Extrapolatable Transformer", https://arxiv.org/abs/2212.10554, §3.3:
"if the pre-training length is l, we divide the query as blocks with l/2 length, and each query
interacts with its own block and the last block" (training uses plain causal attention). So a
query at i in block b = i // (L/2) sees the keys j <= i of blocks b - 1 and b: every distance it
sees is below L, the range xPos was trained on, and information from further back arrives only
through the previous block's keys and values, one block per layer.

The weights are xPos's (no parameters of its own): `lsbench extrapolate --positions xpos,xpos+bca`
rescores the trained xpos checkpoint. For windows N <= L the block mask allows every earlier key,
so the plain fused causal path runs (the same numbers as `xpos`); past L, attention is computed
per block against 2 blocks of keys, O(N·L) score memory, never an (N, N) tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lsbench.positions.xpos import XPos


def blockwise_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int,
                               max_elems: int = 2**24) -> torch.Tensor:
    """Causal softmax attention in which query i sees only keys j <= i with
    j // block >= i // block - 1 (its own block and the previous one), 1/√Dh scaling.

    q, k, v (B, H, N, Dh) -> (B, H, N, Dh). Blocks become a batch dimension of one SDPA call
    (split into groups only when B·H·blocks·block·2block exceeds max_elems).
    """
    B, H, N, Dh = q.shape
    nb = -(-N // block)  # blocks; the last one padded at the end (later than every real query,
    pad = nb * block - N  # so the causal mask hides the padded keys from them)
    q, k, v = (F.pad(t, (0, 0, 0, pad)).view(B, H, nb, block, Dh) for t in (q, k, v))
    # keys/values of the previous block beside the current one: (B, H, nb, 2·block, Dh)
    k, v = (torch.cat((torch.cat((torch.zeros_like(t[:, :, :1]), t[:, :, :-1]), dim=2), t),
                      dim=3) for t in (k, v))
    i = torch.arange(block, device=q.device)
    causal = i[:, None] >= i[None, :]  # (block, block)
    mask = torch.cat((torch.ones_like(causal), causal), dim=1).repeat(nb, 1, 1)  # (nb, blk, 2blk)
    mask[0, :, :block] = False  # block 0 has no previous block (those keys are zeros)
    per_group = max(1, max_elems // (B * H * block * 2 * block))
    y = torch.cat([
        F.scaled_dot_product_attention(q[:, :, s:s + per_group], k[:, :, s:s + per_group],
                                       v[:, :, s:s + per_group], attn_mask=mask[s:s + per_group])
        for s in range(0, nb, per_group)
    ], dim=2)  # (B, H, nb, block, Dh)
    return y.view(B, H, nb * block, Dh)[:, :, :N]


class XPosBCA(XPos):
    name = "xpos_bca"
    method = "xpos scored with blockwise causal attention past L: blocks of L/2, each query " \
             "sees its own block and the previous one (eval-time; rows xpos+bca)"
    paper = "Sun et al. 2023, https://arxiv.org/abs/2212.10554 (§3.3)"
    defaults = {"base": 10000, "scale_base": 512, "train_len": 512}

    def attention_block(self, n: int) -> int | None:
        train_len = self.params["train_len"]
        return max(1, train_len // 2) if n > train_len else None
