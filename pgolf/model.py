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

Record modules, each a [model] key that is off by default (off: parameters, state dict and outputs are
the baseline's): parallel residuals, XSA, SmearGate, leaky-ReLU^2, partial RoPE, layer-wise norm
scaling, attention output gates, asymmetric logit rescale, per-repeat low-rank deltas of the shared
blocks, a norm between repeats, and a factored tied embedding. Their gains and gates are control
tensors (Adam, stored in fp32); their matrices are stored and allocated like the others.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from pgolf.fused import FP32_EPS, FusedReluSquare, FusedRMSNorm, FusedRotary, SoftcapCrossEntropy, use_fused_ops

CONTROL_TENSOR_PATTERNS = ("attn_scale", "mlp_scale", "resid_mix", "q_gain", "skip_weights", "attn_gate", "smear_gate", "logit_rescale")
EMBEDDING_PREFIXES = ("tok_emb.", "lm_head.", "embed_proj.")  # the token-side matrices (their own storage widths)


def rms_norm(x: Tensor) -> Tensor:
    """In evaluation, bitwise the result of F.rms_norm(x, (x.size(-1),)) (fp32 math, fp32 eps), but
    vectorized for bf16: on CPU the library kernel is about 6x slower on bf16 input than this composition.
    Eager training takes the fused op (same function, hand-written backward)."""
    if use_fused_ops(x):
        return FusedRMSNorm.apply(x)
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + FP32_EPS)).to(x.dtype)


class CastedLinear(nn.Linear):
    # fp32 master weights for the optimizer; cast to the activation dtype for bf16 matmuls.
    def forward(self, x: Tensor, repeat: int = 0) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype))


class LoopLinear(CastedLinear):
    """A matrix of a shared block with a low-rank delta per repeat: W_r = W + B_r A_r, A random (nn.Linear's init),
    B zero, so training starts as without deltas. An eval unroll beyond the training count reuses the last
    repeat's delta. A and B are linear layers of their own, so GPTQ's hooks see their inputs."""

    def __init__(self, in_features: int, out_features: int, repeats: int, rank: int):
        super().__init__(in_features, out_features, bias=False)
        self.lora_a = nn.ModuleList(CastedLinear(in_features, rank, bias=False) for _ in range(repeats))
        self.lora_b = nn.ModuleList(CastedLinear(rank, out_features, bias=False) for _ in range(repeats))
        for b in self.lora_b:
            b._zero_init = True

    def forward(self, x: Tensor, repeat: int = 0) -> Tensor:
        r = min(repeat, len(self.lora_a) - 1)
        return super().forward(x) + self.lora_b[r](self.lora_a[r](x))


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

    def reserve(self, seq_len: int, device: torch.device) -> None:
        """Fill the tables for positions 0..seq_len-1 unless they cover that much already. The tables only grow:
        a compiled graph guards on them, so filled once for the longest length a run uses (its training stages
        and its eval length) before compiling, no later length rebuilds them and nothing recompiles."""
        cached = self._cache
        if cached is not None and cached[0][1:] == (device, self.table_dtype) and cached[0][0] >= seq_len:
            return
        with torch.inference_mode(False):  # filled during a scoring pass, the tables must still serve TTT's backward
            inv_freq = self.inv_freq.float().to(device).to(self.table_dtype)
            t = torch.arange(seq_len, device=device, dtype=self.table_dtype)  # each position's value whatever the length
            freqs = torch.outer(t, inv_freq)
            self._cache = ((seq_len, device, self.table_dtype), freqs.cos()[None, None], freqs.sin()[None, None])

    def forward(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        self.reserve(seq_len, device)
        return self._cache[1][:, :, :seq_len].to(dtype), self._cache[2][:, :, :seq_len].to(dtype)


_CAUSAL_BIAS: dict = {}
FLASH_DTYPES = (torch.float16, torch.bfloat16)


def attention_kernel(q: Tensor) -> SDPBackend:
    """The SDPA kernel a CUDA attention call is pinned to: flash, as the official script allows only it; where flash
    cannot run (fp32 scoring, a head width flash rejects), the memory-efficient kernel. Never the math kernel that
    SDPA otherwise falls back to silently, whose memory grows with the square of the sequence."""
    flash = q.dtype in FLASH_DTYPES and q.size(-1) % 8 == 0 and q.size(-1) <= 256
    return SDPBackend.FLASH_ATTENTION if flash else SDPBackend.EFFICIENT_ATTENTION


def cuda_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    kernel = attention_kernel(q)
    group = q.size(1) // k.size(1)
    if kernel != SDPBackend.FLASH_ATTENTION and group > 1:  # the efficient kernel takes no grouped heads: expand them
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    with sdpa_kernel(kernel):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.size(1) != q.size(1))


def causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal attention with grouped KV heads: q (B, H, T, D), k and v (B, KV, T, D).

    On CPU, eager training (with the fast paths on) uses plain bf16 batched matmuls (the mask and 1/sqrt(D)
    folded into one baddbmm): its backward is several times faster there than the SDPA kernel's.
    Everything else, and all evaluation, uses SDPA, which is what the official script runs (on CUDA pinned to a kernel).
    """
    if q.device.type == "cuda":
        return cuda_attention(q, k, v)
    if not use_fused_ops(q):  # compiled too: the cached mask below would be a guard that fails after the first trace
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.size(1) != q.size(1))
    bsz, heads, seqlen, dim = q.shape
    kv_heads = k.size(1)
    group = heads // kv_heads
    key = (seqlen, group, q.dtype)
    if key not in _CAUSAL_BIAS:
        with torch.inference_mode(False):  # a mask made while scoring must serve a later backward (TTT) too
            bias = torch.full((seqlen, seqlen), float("-inf")).triu(1).repeat(group, 1)
            _CAUSAL_BIAS[key] = bias.to(q.dtype)[None]
    # The query heads sharing one KV head are stacked along the time axis: one matmul per KV head.
    qg = q.reshape(bsz * kv_heads, group * seqlen, dim)
    kt = k.reshape(bsz * kv_heads, seqlen, dim).transpose(1, 2)
    scores = torch.baddbmm(_CAUSAL_BIAS[key], qg, kt, alpha=dim**-0.5)
    probs = torch.softmax(scores, dim=-1)
    return torch.bmm(probs, v.reshape(bsz * kv_heads, seqlen, dim)).view(bsz, heads, seqlen, dim)


def exclude_self_value(y: Tensor, v: Tensor) -> Tensor:
    """XSA: each head's output y (B, H, T, D) minus its projection on the token's own value vector (of the head's
    KV group, v is (B, KV, T, D)), so attention carries only what the token does not hold already."""
    bsz, heads, seqlen, dim = y.shape
    grouped = y.reshape(bsz, v.size(1), heads // v.size(1), seqlen, dim)
    unit = F.normalize(v, dim=-1).unsqueeze(2)
    return (grouped - (grouped * unit).sum(-1, keepdim=True) * unit).reshape(bsz, heads, seqlen, dim)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    rotated = 2 * cos.size(-1)
    if rotated < x.size(-1):  # partial RoPE: the remaining dims pass unrotated (position-free)
        return torch.cat((apply_rotary(x[..., :rotated], cos, sin), x[..., rotated:]), dim=-1)
    if use_fused_ops(x):
        return FusedRotary.apply(x, cos, sin)
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos + x2 * sin, x1 * (-sin) + x2 * cos), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg, linear, xsa: bool = False):
        super().__init__()
        dim = cfg.model_dim
        self.num_heads = cfg.num_heads
        self.num_kv_heads = cfg.num_kv_heads
        self.head_dim = dim // cfg.num_heads
        kv_dim = self.num_kv_heads * self.head_dim
        self.c_q = linear(dim, dim)
        self.c_k = linear(dim, kv_dim)
        self.c_v = linear(dim, kv_dim)
        self.proj = linear(dim, dim)
        self.proj._zero_init = True
        self.q_gain = nn.Parameter(torch.full((cfg.num_heads,), cfg.qk_gain_init, dtype=torch.float32))
        self.rotary = Rotary(cfg.rotary_dims(), cfg.rope_base)
        self.xsa = xsa
        # Output gate: head h's output times 2 sigmoid(w_h . u), u = the input's first `gate_width` channels; w = 0 is
        # the identity at the start.
        self.gate_width = {"full": dim, "sparse": cfg.attn_gate_window}.get(cfg.attn_gate, 0)
        if self.gate_width:
            self.attn_gate = nn.Parameter(torch.zeros(cfg.num_heads, self.gate_width))

    def forward(self, x: Tensor, repeat: int = 0) -> Tensor:
        bsz, seqlen, dim = x.shape
        q = self.c_q(x, repeat).reshape(bsz, seqlen, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.c_k(x, repeat).reshape(bsz, seqlen, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.c_v(x, repeat).reshape(bsz, seqlen, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q = rms_norm(q)
        k = rms_norm(k)
        cos, sin = self.rotary(seqlen, x.device, q.dtype)
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin)
        q = q * self.q_gain.to(dtype=q.dtype)[None, :, None, None]
        y = causal_attention(q, k, v)
        if self.xsa:
            y = exclude_self_value(y, v)
        if self.gate_width:
            gate = 2 * torch.sigmoid(F.linear(x[..., : self.gate_width], self.attn_gate.to(x.dtype)))
            y = y * gate.transpose(1, 2)[..., None]
        return self.proj(y.transpose(1, 2).contiguous().reshape(bsz, seqlen, dim), repeat)


class MLP(nn.Module):
    # relu^2 MLP of the modded-nanogpt lineage; with a slope, leaky_relu(x, slope)^2 (negative inputs keep a gradient).
    def __init__(self, cfg, linear):
        super().__init__()
        hidden = int(round(cfg.mlp_mult * cfg.model_dim))
        self.fc = linear(cfg.model_dim, hidden)
        self.proj = linear(hidden, cfg.model_dim)
        self.proj._zero_init = True
        self.slope = cfg.mlp_leaky_slope

    def forward(self, x: Tensor, repeat: int = 0) -> Tensor:
        hidden = self.fc(x, repeat)
        if self.slope:
            return self.proj(F.leaky_relu(hidden, self.slope).square(), repeat)
        return self.proj(FusedReluSquare.apply(hidden) if use_fused_ops(hidden) else torch.relu(hidden).square(), repeat)


class Block(nn.Module):
    def __init__(self, cfg, index: int):
        super().__init__()
        dim, from_end = cfg.model_dim, cfg.num_layers - index  # from_end: 1 for the last block
        looped = cfg.loop_lora_rank > 0 and cfg.loop_start <= index < cfg.loop_start + cfg.loop_len

        def linear(i: int, o: int) -> CastedLinear:
            return LoopLinear(i, o, cfg.loop_repeats, cfg.loop_lora_rank) if looped else CastedLinear(i, o, bias=False)

        self.attn = CausalSelfAttention(cfg, linear, xsa=from_end <= cfg.xsa_last)
        self.mlp = MLP(cfg, linear)
        self.attn_scale = nn.Parameter(torch.ones(dim, dtype=torch.float32))
        self.mlp_scale = nn.Parameter(torch.ones(dim, dtype=torch.float32))
        # Mixes the running residual with the embedding output x0 before each block.
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(dim), torch.zeros(dim))).float())
        self.parallel = from_end <= cfg.parallel_last
        self.ln_factor = (index + 1) ** -0.5 if cfg.ln_scale else 1.0  # layer-wise norm scaling

    def norm(self, x: Tensor) -> Tensor:
        return rms_norm(x) if self.ln_factor == 1.0 else rms_norm(x) * self.ln_factor

    def forward(self, x: Tensor, x0: Tensor, repeat: int = 0) -> Tensor:
        mix = self.resid_mix.to(dtype=x.dtype)
        x = mix[0][None, None, :] * x + mix[1][None, None, :] * x0
        normed = self.norm(x)
        out = x + self.attn_scale.to(dtype=x.dtype)[None, None, :] * self.attn(normed, repeat)
        # Parallel residual: the MLP reads the attention's input, not the residual the attention updated.
        return out + self.mlp_scale.to(dtype=x.dtype)[None, None, :] * self.mlp(normed if self.parallel else self.norm(out), repeat)


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
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.embed_rank or dim)
        skips = num_skips(cfg.num_layers, cfg.loop_start, cfg.loop_len)
        # A segment covering every block leaves no skips: the empty tensor keeps the state dict's layout but
        # needs no gradient (DDP would otherwise wait for one that never comes and stop at the second step).
        self.skip_weights = nn.Parameter(torch.ones(skips, dim, dtype=torch.float32), requires_grad=skips > 0)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.lm_head = None if cfg.tie_embeddings else CastedLinear(dim, cfg.vocab_size, bias=False)
        if self.lm_head is not None:
            self.lm_head._zero_init = True
        # Factored tied embedding: token rows of width r, mapped up to the model width on the way in; the final
        # hidden state is mapped down by the transpose of the same matrix on the way out.
        self.embed_proj = CastedLinear(cfg.embed_rank, dim, bias=False) if cfg.embed_rank else None
        self.smear_gate = nn.Parameter(torch.zeros(dim)) if cfg.smear_gate else None  # sigmoid(0) = 0.5, as the records
        self.logit_rescale = nn.Parameter(torch.ones(2)) if cfg.logit_rescale else None  # positive, negative logits
        self.head_adapter = None  # test-time training's delta on the output layer (pgolf/ttt.py); not a weight
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
        if reduction == "mean" and use_fused_ops(input_ids) and self.logit_rescale is None:
            x = self.projection_input(input_ids, repeats)
            weight = self.tok_emb.weight if self.lm_head is None else self.lm_head.weight
            return SoftcapCrossEntropy.apply(x, weight.to(x.dtype), target_ids.reshape(-1), self.cfg.logit_softcap)
        return F.cross_entropy(self.logits(input_ids, repeats).float(), target_ids.reshape(-1), reduction=reduction)

    def logits(self, input_ids: Tensor, repeats: int | None = None) -> Tensor:
        softcap = self.cfg.logit_softcap
        z = self.projection(input_ids, repeats)
        if self.logit_rescale is not None:  # asymmetric: the positive and the negative logits get scales of their own
            scale = self.logit_rescale.to(z.dtype)
            z = z * torch.where(z > 0, scale[0], scale[1])
        return softcap * torch.tanh(z / softcap)

    def embed(self, input_ids: Tensor) -> Tensor:
        weight = self.tok_emb.weight
        if not torch.is_grad_enabled() or weight.dtype == torch.float32:
            return F.embedding(input_ids, weight)
        # Same values as a bf16 lookup, but the backward sums each row's gradient in fp32: summed in bf16,
        # the many small contributions to frequent tokens are lost, and more so the larger the batch.
        return F.embedding(input_ids, weight.float()).to(weight.dtype)

    def embed_input(self, input_ids: Tensor) -> Tensor:
        """x0, where the residual stream starts: the token embedding (mapped up if factored), normalized, smeared."""
        x = self.embed(input_ids)
        if self.embed_proj is not None:
            x = self.embed_proj(x)
        x = rms_norm(x)
        if self.smear_gate is None:
            return x
        # SmearGate, x_t <- lerp(x_t, x_{t-1}, sigmoid(g)), after the norm (two unit-rms rows mixed, and x0 carries it
        # to every block); none at position 0 or at BOS, so no document sees the previous one through it.
        weight = torch.sigmoid(self.smear_gate.to(x.dtype)) * (input_ids[:, 1:, None] != self.cfg.bos_id).to(x.dtype)
        return torch.cat((x[:, :1], torch.lerp(x[:, 1:], x[:, :-1], weight)), dim=1)

    def projection(self, input_ids: Tensor, repeats: int | None = None) -> Tensor:
        """Output-layer activations before the logit softcap, one row per token."""
        x = self.projection_input(input_ids, repeats)
        z = F.linear(x, self.tok_emb.weight) if self.lm_head is None else self.lm_head(x)
        return z if self.head_adapter is None else z + self.head_adapter(x)

    def projection_input(self, input_ids: Tensor, repeats: int | None = None) -> Tensor:
        """The final normalized hidden state, one row per token: what the output layer multiplies (with a factored
        embedding, mapped down to the embedding's width)."""
        cfg = self.cfg
        encoder, middle, decoder = layer_plan(
            cfg.num_layers, cfg.loop_start, cfg.loop_len, cfg.loop_repeats if repeats is None else repeats
        )
        x = x0 = self.embed_input(input_ids)
        skips: list[Tensor] = []
        for i in encoder:
            x = self.blocks[i](x, x0)
            skips.append(x)
        for j, i in enumerate(middle):
            repeat = j // cfg.loop_len
            if cfg.loop_boundary_norm and repeat and j % cfg.loop_len == 0:
                x = rms_norm(x)  # the residual renormalized between two repeats of the segment
            x = self.blocks[i](x, x0, repeat)
        for j, i in enumerate(decoder):
            if skips:
                x = x + self.skip_weights[j].to(dtype=x.dtype)[None, None, :] * skips.pop()
            x = self.blocks[i](x, x0)
        x = rms_norm(x).reshape(-1, x.size(-1))
        return x if self.embed_proj is None else F.linear(x, self.embed_proj.weight.t().to(x.dtype))


def token_losses(model: "GPT", x: Tensor, y: Tensor, repeats: int | None = None) -> tuple[Tensor, Tensor]:
    """(per-token cross-entropy [rows, T], logits [rows * T, vocab]): model(x, y, reduction="none") with its logits."""
    logits = model.logits(x, repeats)
    return F.cross_entropy(logits.float(), y.reshape(-1), reduction="none").reshape(x.shape), logits


def reserve_positions(model: nn.Module, seq_len: int, device: torch.device) -> None:
    """Every rotary table of `model` filled for seq_len positions (see Rotary.reserve)."""
    for module in model.modules():
        if isinstance(module, Rotary):
            module.reserve(seq_len, device)


def full_precision(model: "GPT") -> "GPT":
    """The model with every weight and rotary table in fp32 (for scoring without bf16 anywhere)."""
    model = model.float()
    for module in model.modules():
        if isinstance(module, Rotary):
            module.table_dtype = torch.float32
    return model


def is_control_tensor(name: str) -> bool:
    return any(pattern in name for pattern in CONTROL_TENSOR_PATTERNS)


class Role(NamedTuple):
    """What a state-dict tensor is, from its name alone: the one place its optimizer, storage and allocation unit
    are decided from. kind: "gain" (control tensors: gains, mixes, gates; fp32, Adam), "embedding" (the token-side
    matrices: embedding, untied head, factored up-projection), "block" (any other tensor of a block: its
    matrices and LoRA deltas) or "other" (any other top-level tensor). block: the block's index (gains of a
    block too), else None. part: the block's submodule ("attn", "mlp"), "" when the tensor sits on the block."""
    kind: str
    block: int | None = None
    part: str = ""


def tensor_role(name: str) -> Role:
    parts = name.split(".")
    block = int(parts[1]) if parts[0] == "blocks" and len(parts) > 2 and parts[1].isdigit() else None
    part = parts[2] if block is not None and len(parts) > 3 else ""
    if is_control_tensor(name):
        return Role("gain", block, part)
    if name.startswith(EMBEDDING_PREFIXES):
        return Role("embedding")
    return Role("other" if block is None else "block", block, part)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
