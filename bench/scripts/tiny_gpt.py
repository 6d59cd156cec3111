"""A small records-style training script for benches of script mode: a real GPT trained on FineWeb shards.

Written for pgolf in the conventions of the challenge's train_gpt.py (not copied from it): every setting an
environment variable with a literal default, the challenge's shard format and byte-exact bpb, a wallclock
cap on training with a wallclock-aware warmdown, the official log lines
    step:N/M val_loss:X val_bpb:Y train_time:Tms step_avg:Sms
    final_int8_zlib_roundtrip_exact val_loss:X val_bpb:Y
and an int8 + zlib artifact (final_model.int8.ptz) whose round-tripped weights give the final score. Small
enough to train for seconds on a CPU core: its scores are far from the challenge's, its knobs behave alike.
"""

import glob
import json
import math
import os
import struct
import time
import zlib

import numpy as np
import sentencepiece as spm
import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------- hyperparameters
DATA_PATH = os.environ.get("DATA_PATH", "./data/datasets/fineweb10B_sp1024")
TOKENIZER_PATH = os.environ.get("TOKENIZER_PATH", "./data/tokenizers/fineweb_1024_bpe.model")
VOCAB_SIZE = int(os.environ.get("VOCAB_SIZE", 1024))
SEED = int(os.environ.get("SEED", 1337))
ITERATIONS = int(os.environ.get("ITERATIONS", 20000))
MAX_WALLCLOCK_SECONDS = float(os.environ.get("MAX_WALLCLOCK_SECONDS", 600.0))
VAL_LOSS_EVERY = int(os.environ.get("VAL_LOSS_EVERY", 50))
TRAIN_LOG_EVERY = int(os.environ.get("TRAIN_LOG_EVERY", 50))
VAL_TOKENS = int(os.environ.get("VAL_TOKENS", 16384))  # the first tokens of the validation split (0 = all)
NUM_THREADS = int(os.environ.get("NUM_THREADS", 0))  # torch threads (0 = torch's default)
TRAIN_SEQ_LEN = int(os.environ.get("TRAIN_SEQ_LEN", 128))
TRAIN_BATCH_TOKENS = int(os.environ.get("TRAIN_BATCH_TOKENS", 2048))
NUM_LAYERS = int(os.environ.get("NUM_LAYERS", 2))
MODEL_DIM = int(os.environ.get("MODEL_DIM", 64))
NUM_HEADS = int(os.environ.get("NUM_HEADS", 4))
MLP_MULT = int(os.environ.get("MLP_MULT", 2))
MATRIX_LR = float(os.environ.get("MATRIX_LR", 0.01))
EMBED_LR = float(os.environ.get("EMBED_LR", 0.03))
SCALAR_LR = float(os.environ.get("SCALAR_LR", 0.01))
WEIGHT_DECAY = float(os.environ.get("WEIGHT_DECAY", 0.0))
WARMUP_STEPS = int(os.environ.get("WARMUP_STEPS", 5))
WARMDOWN_ITERS = int(os.environ.get("WARMDOWN_ITERS", 30))
TIED_EMBED_INIT_STD = float(os.environ.get("TIED_EMBED_INIT_STD", 0.02))
LOGIT_SOFTCAP = float(os.environ.get("LOGIT_SOFTCAP", 30.0))
GRAD_CLIP_NORM = float(os.environ.get("GRAD_CLIP_NORM", 1.0))


# ----------------------------------------------------------------------------- data
def read_shard(path: str) -> np.ndarray:
    """Tokens of one shard: 256 int32 header values (magic 20240520, version 1, count), then uint16 tokens."""
    header = np.fromfile(path, dtype="<i4", count=256)
    if header.size != 256 or header[0] != 20240520 or header[1] != 1:
        raise ValueError(f"{path}: not a shard (bad header)")
    tokens = np.fromfile(path, dtype="<u2", offset=256 * 4)
    if tokens.size != header[2]:
        raise ValueError(f"{path}: header says {header[2]} tokens, file holds {tokens.size}")
    return tokens


class TrainStream:
    """Consecutive windows over the training shards, wrapping around; the seed picks where it starts."""

    def __init__(self, pattern: str, seed: int):
        files = sorted(glob.glob(pattern))
        if not files:
            raise FileNotFoundError(f"no training shards match {pattern}")
        self.tokens = np.concatenate([read_shard(f) for f in files]).astype(np.int64)
        self.pos = np.random.default_rng(seed).integers(0, self.tokens.size)

    def batch(self, batch_tokens: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        need = batch_tokens + 1
        idx = (self.pos + np.arange(need)) % self.tokens.size
        self.pos = (self.pos + batch_tokens) % self.tokens.size
        chunk = torch.from_numpy(self.tokens[idx])
        return chunk[:-1].view(-1, seq_len), chunk[1:].view(-1, seq_len)


def byte_lookup(sp: spm.SentencePieceProcessor, vocab_size: int):
    """Per token: its UTF-8 bytes without a leading '▁', whether it has one, whether it is a boundary token."""
    base = np.zeros(vocab_size, dtype=np.int64)
    space = np.zeros(vocab_size, dtype=bool)
    boundary = np.ones(vocab_size, dtype=bool)
    for i in range(min(sp.vocab_size(), vocab_size)):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        boundary[i] = False
        if sp.is_byte(i):
            base[i] = 1
            continue
        piece = sp.id_to_piece(i)
        space[i] = piece.startswith("▁")
        base[i] = len(piece.lstrip("▁").encode("utf-8"))
    return torch.from_numpy(base), torch.from_numpy(space), torch.from_numpy(boundary)


# ----------------------------------------------------------------------------- model
class RMSNorm(nn.Module):
    def forward(self, x):
        return F.rms_norm(x, (x.size(-1),))


def rotary(x: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding over the head dimension (x: batch, heads, time, head_dim)."""
    t, d = x.size(-2), x.size(-1)
    freqs = 1.0 / (10000 ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    angles = torch.outer(torch.arange(t, dtype=torch.float32), freqs)
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_mult: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = RMSNorm(), RMSNorm()
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.fc = nn.Linear(dim, mlp_mult * dim, bias=False)
        self.out = nn.Linear(mlp_mult * dim, dim, bias=False)
        self.attn_scale = nn.Parameter(torch.ones(dim))
        self.mlp_scale = nn.Parameter(torch.ones(dim))
        nn.init.zeros_(self.proj.weight)  # each block starts as the identity
        nn.init.zeros_(self.out.weight)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(rotary(q), rotary(k), v, is_causal=True)
        x = x + self.attn_scale * self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp_scale * self.out(F.relu(self.fc(self.norm2(x))).square())


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB_SIZE, MODEL_DIM)
        nn.init.normal_(self.embed.weight, std=TIED_EMBED_INIT_STD)
        self.blocks = nn.ModuleList(Block(MODEL_DIM, NUM_HEADS, MLP_MULT) for _ in range(NUM_LAYERS))
        self.norm = RMSNorm()

    def forward(self, inputs, targets):
        x = self.embed(inputs)
        for block in self.blocks:
            x = block(x)
        logits = F.linear(self.norm(x), self.embed.weight)  # tied head
        logits = LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), reduction="none")


@torch.no_grad()
def evaluate(model, val_tokens: torch.Tensor, lookup) -> tuple[float, float]:
    """(mean loss in nats, bits per byte) over the validation tokens, in windows of TRAIN_SEQ_LEN."""
    base, space, boundary = lookup
    model.eval()
    n = (val_tokens.numel() - 1) // TRAIN_SEQ_LEN * TRAIN_SEQ_LEN
    inputs, targets = val_tokens[:n].view(-1, TRAIN_SEQ_LEN), val_tokens[1:n + 1].view(-1, TRAIN_SEQ_LEN)
    loss_sum, count = 0.0, 0
    for i in range(0, inputs.size(0), 32):
        losses = model(inputs[i:i + 32], targets[i:i + 32])
        loss_sum += losses.double().sum().item()
        count += losses.numel()
    prev, tgt = val_tokens[:n], val_tokens[1:n + 1]
    byte_count = (base[tgt] + (space[tgt] & ~boundary[prev]).long()).sum().item()
    model.train()
    loss = loss_sum / count
    return loss, loss / math.log(2) * count / byte_count


# ----------------------------------------------------------------------------- int8 + zlib artifact
def pack_int8(state: dict) -> bytes:
    """Matrices as int8 with one scale per row, everything else as fp32; a JSON header, raw bytes, zlib level 9."""
    header, parts = [], []
    for name, tensor in state.items():
        t = tensor.detach().float().contiguous()
        if t.ndim == 2:
            scale = (t.abs().amax(dim=1) / 127).clamp_min(1e-12)
            q = torch.round(t / scale[:, None]).clamp(-127, 127).to(torch.int8)
            parts += [scale.numpy().astype("<f4").tobytes(), q.numpy().tobytes()]
            header.append([name, list(t.shape), "int8"])
        else:
            parts.append(t.numpy().astype("<f4").tobytes())
            header.append([name, list(t.shape), "fp32"])
    head = json.dumps(header).encode()
    return zlib.compress(struct.pack("<I", len(head)) + head + b"".join(parts), 9)


def unpack_int8(blob: bytes) -> dict:
    raw = zlib.decompress(blob)
    size = struct.unpack("<I", raw[:4])[0]
    offset, state = 4 + size, {}
    for name, shape, kind in json.loads(raw[4:offset]):
        count = math.prod(shape)
        if kind == "int8":
            scale = np.frombuffer(raw, "<f4", shape[0], offset)
            offset += 4 * shape[0]
            q = np.frombuffer(raw, np.int8, count, offset).reshape(shape)
            offset += count
            state[name] = torch.from_numpy(q.astype(np.float32) * scale[:, None])
        else:
            state[name] = torch.from_numpy(np.frombuffer(raw, "<f4", count, offset).reshape(shape).copy())
            offset += 4 * count
    return state


# ----------------------------------------------------------------------------- training
def main():
    if NUM_THREADS > 0:
        torch.set_num_threads(NUM_THREADS)
    if MODEL_DIM % NUM_HEADS or (MODEL_DIM // NUM_HEADS) % 2:
        raise ValueError(f"MODEL_DIM {MODEL_DIM} must split into {NUM_HEADS} heads of an even size")
    if TRAIN_BATCH_TOKENS % TRAIN_SEQ_LEN:
        raise ValueError(f"TRAIN_BATCH_TOKENS {TRAIN_BATCH_TOKENS} must be a multiple of TRAIN_SEQ_LEN {TRAIN_SEQ_LEN}")
    torch.manual_seed(SEED)
    sp = spm.SentencePieceProcessor(model_file=TOKENIZER_PATH)
    lookup = byte_lookup(sp, VOCAB_SIZE)
    stream = TrainStream(os.path.join(DATA_PATH, "fineweb_train_*.bin"), SEED)
    val_files = sorted(glob.glob(os.path.join(DATA_PATH, "fineweb_val_*.bin")))
    if not val_files:
        raise FileNotFoundError(f"no validation shards in {DATA_PATH}")
    val = torch.from_numpy(np.concatenate([read_shard(f) for f in val_files]).astype(np.int64))
    val = val[:VAL_TOKENS + 1] if VAL_TOKENS > 0 else val
    model = GPT()
    matrices = [p for n, p in model.named_parameters() if p.ndim == 2 and not n.startswith("embed")]
    scalars = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": [model.embed.weight], "lr": EMBED_LR}, {"params": matrices, "lr": MATRIX_LR},
              {"params": scalars, "lr": SCALAR_LR}]
    for group in groups:
        group["base_lr"] = group["lr"]
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.95), weight_decay=WEIGHT_DECAY)
    params = sum(p.numel() for p in model.parameters())
    print(f"model_params:{params} layers:{NUM_LAYERS} dim:{MODEL_DIM} heads:{NUM_HEADS} mlp_mult:{MLP_MULT} seed:{SEED}", flush=True)

    cap_ms = 1000 * MAX_WALLCLOCK_SECONDS if MAX_WALLCLOCK_SECONDS > 0 else math.inf
    train_ms, step = 0.0, 0
    while step < ITERATIONS:
        t0 = time.perf_counter()
        # Warmdown over the last WARMDOWN_ITERS steps, counted in time under a wallclock cap (steps left at the
        # average step time so far), so a capped run still ends at a low learning rate.
        step_ms = train_ms / step if step else 0.0
        left = min(ITERATIONS - step, (cap_ms - train_ms) / step_ms if step_ms else math.inf)
        scale = min(1.0, (step + 1) / max(WARMUP_STEPS, 1), max(left, 0.0) / max(WARMDOWN_ITERS, 1))
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * scale
        inputs, targets = stream.batch(TRAIN_BATCH_TOKENS, TRAIN_SEQ_LEN)
        loss = model(inputs, targets).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if GRAD_CLIP_NORM > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP_NORM)
        optimizer.step()
        step += 1
        took = 1000 * (time.perf_counter() - t0)
        train_ms += took  # validation time is not training time
        # Stop while the next step still fits under the cap, with room for one twice as slow (a shared machine),
        # so the measured training time stays under the cap.
        last = step == ITERATIONS or train_ms + 2 * max(took, train_ms / step) >= cap_ms
        if step % TRAIN_LOG_EVERY == 0:
            print(f"step:{step}/{ITERATIONS} train_loss:{loss.item():.4f} train_time:{train_ms:.0f}ms "
                  f"step_avg:{train_ms / step:.2f}ms", flush=True)
        if (VAL_LOSS_EVERY > 0 and step % VAL_LOSS_EVERY == 0) or last:
            val_loss, val_bpb = evaluate(model, val, lookup)
            print(f"step:{step}/{ITERATIONS} val_loss:{val_loss:.4f} val_bpb:{val_bpb:.4f} train_time:{train_ms:.0f}ms "
                  f"step_avg:{train_ms / step:.2f}ms", flush=True)
        if last and step < ITERATIONS:
            print(f"stopping_early: wallclock_cap train_time:{train_ms:.0f}ms step:{step}/{ITERATIONS}", flush=True)
            break

    blob = pack_int8(model.state_dict())
    with open("final_model.int8.ptz", "wb") as f:
        f.write(blob)
    code_bytes = os.path.getsize(__file__)
    print(f"Serialized model int8+zlib: {len(blob)} bytes")
    print(f"Code size: {code_bytes} bytes")
    print(f"Total submission size int8+zlib: {len(blob) + code_bytes} bytes", flush=True)
    t_eval = time.perf_counter()
    with open("final_model.int8.ptz", "rb") as f:
        model.load_state_dict(unpack_int8(f.read()))
    val_loss, val_bpb = evaluate(model, val, lookup)
    eval_ms = 1000 * (time.perf_counter() - t_eval)
    print(f"final_int8_zlib_roundtrip val_loss:{val_loss:.4f} val_bpb:{val_bpb:.4f} eval_time:{eval_ms:.0f}ms")
    print(f"final_int8_zlib_roundtrip_exact val_loss:{val_loss:.8f} val_bpb:{val_bpb:.8f}", flush=True)


if __name__ == "__main__":
    main()
