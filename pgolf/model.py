"""GPT with shared depth, in the official baseline's parameter layout.

Parameter names and dtypes match the challenge's `train_gpt.py` one to one (`tok_emb.weight`,
`blocks.N.attn.c_q.weight`, `blocks.N.mlp.fc.weight`, `skip_weights`, ...), so an official checkpoint
loads with `load_state_dict` and a baseline-shaped config reproduces the baseline.

Shared depth: `num_layers` unique blocks are stored; blocks [loop_start, loop_start + loop_len) form a
segment that runs `repeats` times. Training uses `loop_repeats`; evaluation may unroll the segment a
different number of times (the eval unroll count) because no parameter depends on the count.
U-Net skips: without a segment, the first half of the blocks feed the second half in reverse (as in the
baseline). With a segment, the blocks before it (prelude) feed the blocks after it (coda) in reverse, so
the skip structure is independent of the unroll count.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pgolf.fused import FP32_EPS, FusedReluSquare, FusedRMSNorm, FusedRotary, SoftcapCrossEntropy, fused_ops_enabled, use_fused_ops

CONTROL_TENSOR_PATTERNS = ("attn_scale", "mlp_scale", "resid_mix", "q_gain", "skip_weights")


def rms_norm(x: Tensor) -> Tensor:
    """In evaluation, bitwise the result of F.rms_norm(x, (x.size(-1),)) (fp32 math, fp32 eps), but
    vectorized for bf16: on CPU the library kernel is about 6x slower on bf16 input than this composition.
    Eager training takes the fused op (same function, hand-written backward)."""
    if use_fused_ops():
        return FusedRMSNorm.apply(x)
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + FP32_EPS)).to(x.dtype)


class CastedLinear(nn.Linear):
    # fp32 master weights for the optimizer; cast to the activation dtype for bf16 matmuls.
    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype))


class Rotary(nn.Module):
    """cos/sin tables of rotary position embeddings.

    As in the official script, whose model.bfloat16() also converts this buffer, the tables are built
    from bf16 frequencies and bf16 positions (coarse beyond position 256). Checkpoints trained that
    way depend on it; full_precision() switches a model to exact fp32 tables.
    """

    def __init__(self, dim: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.table_dtype = torch.bfloat16
        self._cache: tuple | None = None

    def forward(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        key = (seq_len, device, self.table_dtype)
        if self._cache is None or self._cache[0] != key:
            inv_freq = self.inv_freq.float().to(device).to(self.table_dtype)
            t = torch.arange(seq_len, device=device, dtype=self.table_dtype)
            freqs = torch.outer(t, inv_freq)
            self._cache = (key, freqs.cos()[None, None], freqs.sin()[None, None])
        return self._cache[1].to(dtype), self._cache[2].to(dtype)


_CAUSAL_BIAS: dict = {}


def causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal attention with grouped KV heads: q (B, H, T, D), k and v (B, KV, T, D).

    On CPU, training (with the fast paths on) uses plain bf16 batched matmuls (the mask and 1/sqrt(D)
    folded into one baddbmm): its backward is several times faster there than the SDPA kernel's.
    Everything else, and all evaluation, uses SDPA, which is what the official script runs.
    """
    if q.device.type != "cpu" or not (fused_ops_enabled() and torch.is_grad_enabled()):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.size(1) != q.size(1))
    bsz, heads, seqlen, dim = q.shape
    kv_heads = k.size(1)
    group = heads // kv_heads
    key = (seqlen, group, q.dtype)
    if key not in _CAUSAL_BIAS:
        bias = torch.full((seqlen, seqlen), float("-inf")).triu(1).repeat(group, 1)
        _CAUSAL_BIAS[key] = bias.to(q.dtype)[None]
    # The query heads sharing one KV head are stacked along the time axis: one matmul per KV head.
    qg = q.reshape(bsz * kv_heads, group * seqlen, dim)
    kt = k.reshape(bsz * kv_heads, seqlen, dim).transpose(1, 2)
    scores = torch.baddbmm(_CAUSAL_BIAS[key], qg, kt, alpha=dim**-0.5)
    probs = torch.softmax(scores, dim=-1)
    return torch.bmm(probs, v.reshape(bsz * kv_heads, seqlen, dim)).view(bsz, heads, seqlen, dim)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    if use_fused_ops():
        return FusedRotary.apply(x, cos, sin)
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos + x2 * sin, x1 * (-sin) + x2 * cos), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, num_kv_heads: int, rope_base: float, qk_gain_init: float):
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = dim // num_heads
        kv_dim = num_kv_heads * self.head_dim
        self.c_q = CastedLinear(dim, dim, bias=False)
        self.c_k = CastedLinear(dim, kv_dim, bias=False)
        self.c_v = CastedLinear(dim, kv_dim, bias=False)
        self.proj = CastedLinear(dim, dim, bias=False)
        self.proj._zero_init = True
        self.q_gain = nn.Parameter(torch.full((num_heads,), qk_gain_init, dtype=torch.float32))
        self.rotary = Rotary(self.head_dim, rope_base)

    def forward(self, x: Tensor) -> Tensor:
        bsz, seqlen, dim = x.shape
        q = self.c_q(x).reshape(bsz, seqlen, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.c_k(x).reshape(bsz, seqlen, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.c_v(x).reshape(bsz, seqlen, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q = rms_norm(q)
        k = rms_norm(k)
        cos, sin = self.rotary(seqlen, x.device, q.dtype)
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin)
        q = q * self.q_gain.to(dtype=q.dtype)[None, :, None, None]
        y = causal_attention(q, k, v)
        return self.proj(y.transpose(1, 2).contiguous().reshape(bsz, seqlen, dim))


class MLP(nn.Module):
    # relu^2 MLP of the modded-nanogpt lineage.
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc = CastedLinear(dim, hidden, bias=False)
        self.proj = CastedLinear(hidden, dim, bias=False)
        self.proj._zero_init = True

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.fc(x)
        return self.proj(FusedReluSquare.apply(hidden) if use_fused_ops() else torch.relu(hidden).square())


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, num_kv_heads: int, mlp_hidden: int, rope_base: float, qk_gain_init: float):
        super().__init__()
        self.attn = CausalSelfAttention(dim, num_heads, num_kv_heads, rope_base, qk_gain_init)
        self.mlp = MLP(dim, mlp_hidden)
        self.attn_scale = nn.Parameter(torch.ones(dim, dtype=torch.float32))
        self.mlp_scale = nn.Parameter(torch.ones(dim, dtype=torch.float32))
        # Mixes the running residual with the embedding output x0 before each block.
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(dim), torch.zeros(dim))).float())

    def forward(self, x: Tensor, x0: Tensor) -> Tensor:
        mix = self.resid_mix.to(dtype=x.dtype)
        x = mix[0][None, None, :] * x + mix[1][None, None, :] * x0
        x = x + self.attn_scale.to(dtype=x.dtype)[None, None, :] * self.attn(rms_norm(x))
        x = x + self.mlp_scale.to(dtype=x.dtype)[None, None, :] * self.mlp(rms_norm(x))
        return x


def layer_plan(num_layers: int, loop_start: int, loop_len: int, repeats: int) -> tuple[list, list, list]:
    """(encoder, middle, decoder) lists of block indices for one forward pass.

    Encoder outputs are pushed as skips and popped, weighted, into the decoder in reverse order.
    """
    if loop_len == 0:
        half = num_layers // 2
        return list(range(half)), [], list(range(half, num_layers))
    segment = list(range(loop_start, loop_start + loop_len))
    return list(range(loop_start)), segment * repeats, list(range(loop_start + loop_len, num_layers))


def num_skips(num_layers: int, loop_start: int, loop_len: int) -> int:
    encoder, _, decoder = layer_plan(num_layers, loop_start, loop_len, 1)
    return min(len(encoder), len(decoder))


class GPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        dim = cfg.model_dim
        mlp_hidden = int(round(cfg.mlp_mult * dim))
        self.tok_emb = nn.Embedding(cfg.vocab_size, dim)
        skips = num_skips(cfg.num_layers, cfg.loop_start, cfg.loop_len)
        # A segment covering every block leaves no skips: the empty tensor keeps the state dict's layout but
        # needs no gradient (DDP would otherwise wait for one that never comes and stop at the second step).
        self.skip_weights = nn.Parameter(torch.ones(skips, dim, dtype=torch.float32), requires_grad=skips > 0)
        self.blocks = nn.ModuleList(
            Block(dim, cfg.num_heads, cfg.num_kv_heads, mlp_hidden, cfg.rope_base, cfg.qk_gain_init)
            for _ in range(cfg.num_layers)
        )
        self.lm_head = None if cfg.tie_embeddings else CastedLinear(dim, cfg.vocab_size, bias=False)
        if self.lm_head is not None:
            self.lm_head._zero_init = True
        self._init_weights()
        self._set_official_dtypes()

    def _init_weights(self) -> None:
        if self.cfg.tie_embeddings:
            nn.init.normal_(self.tok_emb.weight, mean=0.0, std=self.cfg.tied_embed_init_std)
        for module in self.modules():
            if isinstance(module, nn.Linear) and getattr(module, "_zero_init", False):
                nn.init.zeros_(module.weight)

    def _set_official_dtypes(self) -> None:
        # As the baseline: the embedding lives in bf16; linear and control weights in fp32, starting from
        # bf16-rounded values (the official script casts the whole model to bf16 and back).
        for p in self.parameters():
            p.data = p.data.bfloat16() if p is self.tok_emb.weight else p.data.bfloat16().float()

    def forward(self, input_ids: Tensor, target_ids: Tensor, repeats: int | None = None, reduction: str = "mean") -> Tensor:
        """Cross-entropy (nats) of target_ids given input_ids; per token with reduction="none"."""
        if reduction == "mean" and use_fused_ops():
            x = self.projection_input(input_ids, repeats)
            weight = self.tok_emb.weight if self.lm_head is None else self.lm_head.weight
            return SoftcapCrossEntropy.apply(x, weight.to(x.dtype), target_ids.reshape(-1), self.cfg.logit_softcap)
        return F.cross_entropy(self.logits(input_ids, repeats).float(), target_ids.reshape(-1), reduction=reduction)

    def logits(self, input_ids: Tensor, repeats: int | None = None) -> Tensor:
        softcap = self.cfg.logit_softcap
        return softcap * torch.tanh(self.projection(input_ids, repeats) / softcap)

    def embed(self, input_ids: Tensor) -> Tensor:
        weight = self.tok_emb.weight
        if not torch.is_grad_enabled() or weight.dtype == torch.float32:
            return F.embedding(input_ids, weight)
        # Same values as a bf16 lookup, but the backward sums each row's gradient in fp32: summed in bf16,
        # the many small contributions to frequent tokens are lost, and more so the larger the batch.
        return F.embedding(input_ids, weight.float()).to(weight.dtype)

    def projection(self, input_ids: Tensor, repeats: int | None = None) -> Tensor:
        """Output-layer activations before the logit softcap, one row per token."""
        x = self.projection_input(input_ids, repeats)
        return F.linear(x, self.tok_emb.weight) if self.lm_head is None else self.lm_head(x)

    def projection_input(self, input_ids: Tensor, repeats: int | None = None) -> Tensor:
        """The final normalized hidden state, one row per token: what the output layer multiplies."""
        cfg = self.cfg
        encoder, middle, decoder = layer_plan(
            cfg.num_layers, cfg.loop_start, cfg.loop_len, cfg.loop_repeats if repeats is None else repeats
        )
        x = self.embed(input_ids)
        x = rms_norm(x)
        x0 = x
        skips: list[Tensor] = []
        for i in encoder:
            x = self.blocks[i](x, x0)
            skips.append(x)
        for i in middle:
            x = self.blocks[i](x, x0)
        for j, i in enumerate(decoder):
            if skips:
                x = x + self.skip_weights[j].to(dtype=x.dtype)[None, None, :] * skips.pop()
            x = self.blocks[i](x, x0)
        return rms_norm(x).reshape(-1, x.size(-1))


def full_precision(model: "GPT") -> "GPT":
    """The model with every weight and rotary table in fp32 (for scoring without bf16 anywhere)."""
    model = model.float()
    for module in model.modules():
        if isinstance(module, Rotary):
            module.table_dtype = torch.float32
    return model


def is_control_tensor(name: str) -> bool:
    return any(pattern in name for pattern in CONTROL_TENSOR_PATTERNS)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
