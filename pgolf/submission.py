"""One submission, end to end: train -> quantize -> compress -> reload -> score; or score a model file.

`train_pack_score` is that pipeline, once: `pgolf run`, a search trial (its allocation passed in as the
post-training step) and the exported standalone `train_gpt.py` all call it. The script is these modules
concatenated with the trial's CONFIG filled in, ending in `main()`: CONFIG reads every setting from an
environment variable in the challenge's style (MATRIX_LR, NUM_LAYERS, SEED, ITERATIONS, MAX_WALLCLOCK_SECONDS,
...), the trial's values its defaults; and the run's files and mode come from DATA_PATH (shard folder),
TOKENIZER_PATH, MODEL_PATH, EVAL_ONLY=1 (score an existing MODEL_PATH), DEVICE (default: cuda when available, else cpu),
PRE_QUANT_SCORE=1 (also score the float model before quantizing: a second whole evaluation, TTT included; off).
Under torchrun (RANK/WORLD_SIZE set) each rank trains on its share of every batch (DDP) and scores its
share of the validation split.
"""

import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

from pgolf.artifact import ArtifactError, pack, unpack
from pgolf.bpb import ByteLuts, TokenizerError, load_tokenizer
from pgolf.config import ConfigError, EvalConfig, ModelConfig, RunConfig, config_from_dict, eval_settings, model_settings, validate
from pgolf.evaluate import EvalResult, NonFiniteScore, Trace, evaluate_bpb
from pgolf.model import GPT, count_params, reserve_positions
from pgolf.row_order import canonical_order, similar_order
from pgolf.gptq import CalibrationError, calibration_batches, check_calibration, collect_hessians
from pgolf.storage import calibrates, dequantize_state_dict, needs_calibration, quantize_state_dict
from pgolf.shards import BatchLoader, ShardError, validation_tokens
from pgolf.train import TrainResult, TrainingDiverged, keep_freed_memory, train

# The standalone script's settings: pgolf/assemble.py writes each key here as a read of its environment variable,
# the trial's value the default (lists and tables as JSON text).
CONFIG: dict = {}
MODEL_FILE = "final_model.pgolf"
PROCESS_GROUP_TIMEOUT_S = 3600  # a collective may wait this long for the other ranks (the default is 600 s)
RESULT_SUFFIX = ".result.json"  # written beside the model file by a training run of the script
# Failures with a message that says it all: reported in one line, without a traceback.
EXPECTED_ERRORS = (ArtifactError, CalibrationError, ConfigError, NonFiniteScore, ShardError, TokenizerError, TrainingDiverged, OSError)


@dataclasses.dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class DeviceError(ValueError):
    """A device name that is not a device, or names one this machine does not have."""


def parse_device(name: str, distributed: bool = False) -> torch.device:
    """The torch device `name` means on this machine; a DeviceError if it is none or not here."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"{name!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise DeviceError(f"device {name}: this torch ({torch.__version__}) sees no CUDA device; use --device cpu")
    # Under torchrun each rank takes the GPU of its local rank; alone, the one named (cuda = cuda:0).
    index = int(os.environ.get("LOCAL_RANK", "0")) if distributed else (device.index or 0)
    if index >= torch.cuda.device_count():
        raise DeviceError(f"device {name}: cuda:{index} does not exist ({torch.cuda.device_count()} CUDA device(s) visible)")
    return torch.device("cuda", index)


def setup_runtime(device_name: str | None = None) -> Runtime:
    """Device and (under torchrun) the process group; CPU runs keep freed memory for reuse."""
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    name = device_name or os.environ.get("DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    rank = int(os.environ.get("RANK", "0")) if distributed else 0
    world_size = int(os.environ.get("WORLD_SIZE", "1")) if distributed else 1
    device = parse_device(name, distributed)
    if device.type == "cuda":  # any CUDA device, cuda:1 as much as cuda
        torch.cuda.set_device(device)
        # TF32 for the training and scoring matmuls (GPTQ and the correction SVDs switch it off: pgolf/gptq.py).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        keep_freed_memory()
    if distributed and not dist.is_initialized():
        # Bound to its device up front (NCCL connects eagerly); the long timeout because rank 0 alone calibrates,
        # quantizes, compresses (and in a trial allocates) while the others wait at the next collective.
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None,
                                timeout=datetime.timedelta(seconds=PROCESS_GROUP_TIMEOUT_S))
    return Runtime(device=device, rank=rank, world_size=world_size)


@contextlib.contextmanager
def process_group_scope(runtime: Runtime):
    """Run the body, then leave the process group (under torchrun): after a barrier when the body succeeded,
    so no rank tears down its connections while another still uses them; at once when it failed, since the
    other ranks may never reach a barrier."""
    try:
        yield
    except BaseException:
        if runtime.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()
        raise
    if runtime.world_size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def exit_process(code: int) -> None:
    """End a torchrun rank without the interpreter's finalization: even after destroy_process_group, gloo's
    threads are still joinable when C++ destructors run at exit, and one rank in ~16 then aborts ("terminate
    called without an active exception") and torchrun reports a failure. Everything is written by then."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def share_from_main(runtime: Runtime, value):
    """`value` as rank 0 has it, on every rank (small picklable values: a path, a model file's bytes)."""
    if runtime.world_size == 1:
        return value
    box = [value if runtime.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def model_meta(config: RunConfig) -> dict:
    """What the model file must carry to be rebuilt and scored without its training config."""
    meta = {"model": model_settings(config.model), "eval": eval_settings(config.resolved_eval())}
    if config.quant.row_order != "off":  # loaded with the MLP units in canonical order
        meta["row_order"] = config.quant.row_order
    return meta


def train_model(config: RunConfig, train_pattern: str, runtime: Runtime, validate_fn=None, on_val=None, log=print):
    if calibrates(config.quant):
        check_calibration(train_pattern, config.train.seq_len, config.quant.calib_tokens)
    torch.manual_seed(config.train.seed)
    model = GPT(config.model).to(runtime.device)
    # Validation during training runs at the eval length: its positions are in the rotary tables before anything
    # compiles, so validating refills nothing a compiled training graph guards on.
    reserve_positions(model, config.eval_seq_len(), runtime.device)
    loader = BatchLoader(train_pattern, config.model.vocab_size, runtime.rank, runtime.world_size, runtime.device)
    train_cfg = config.train
    if train_cfg.reserve_seconds > 0 and train_cfg.max_wallclock_seconds > 0:
        train_cfg = dataclasses.replace(train_cfg, max_wallclock_seconds=train_cfg.max_wallclock_seconds - train_cfg.reserve_seconds)
    result = train(model, train_cfg, loader, runtime.device, validate=validate_fn, on_val=on_val,
                   log=log, world_size=runtime.world_size)
    return model, result


def calibrate(model: GPT, config: RunConfig, train_pattern: str, device: torch.device, names=None) -> tuple[dict, dict] | None:
    """H = X^T X of the inputs of every matrix whose format needs it (GPTQ, AWQ, a correction), or of the matrices
    matching the globs `names`, over the first quant.calib_tokens training tokens; None when none needs it."""
    names = names or needs_calibration(model.state_dict(), config.quant)
    if not names:
        return None
    seq_len = config.train.seq_len
    batches = calibration_batches(train_pattern, config.model.vocab_size, seq_len, config.quant.calib_tokens,
                                  max(1, config.eval.batch_tokens // seq_len))
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=config.eval.autocast):
        return collect_hessians(model, batches, tuple(names), device)


def export_model(model: GPT, config: RunConfig, calibration: tuple[dict, dict] | None = None) -> tuple[bytes, dict, list]:
    """The compressed model file's bytes, its compressed bytes per tensor group, and the stored tensors."""
    stored = quantize_model(model, config, calibration)
    return (*pack_stored(stored, config), stored)


def quantize_model(model: GPT, config: RunConfig, calibration: tuple[dict, dict] | None = None) -> list:
    return quantize_state_dict(model.state_dict(), config.quant, *(calibration or (None, None)))


def pack_stored(stored: list, config: RunConfig) -> tuple[bytes, dict]:
    """The model file of stored tensors under config's compressor and level, and its bytes per tensor group."""
    alternatives = [similar_order(stored)] if config.quant.row_order == "similar" else []
    return pack(stored, model_meta(config), config.quant.compressor, config.quant.level, alternatives)


def export_trained(model: GPT, config: RunConfig, train_pattern: str, device: torch.device) -> tuple[bytes, dict, list, float]:
    """export_model after training, calibrating first where a format needs it; the last value is the
    seconds calibration and quantization took then, which count as training (they read training data),
    or 0.0 when nothing needed calibration (a plain export is not training). Packing, which reads none, is not
    counted: at 16 MB zstd-22 alone takes ~47 s on one CPU core (bench/frontier_bytes.py)."""
    started = time.perf_counter()
    calibration = calibrate(model, config, train_pattern, device)
    stored = quantize_model(model, config, calibration)
    seconds = time.perf_counter() - started if calibration is not None else 0.0
    return (*pack_stored(stored, config), stored, seconds)


def load_model(blob: bytes, device: torch.device) -> tuple[GPT, ModelConfig, EvalConfig]:
    """A fresh model holding the dequantized weights of a model file, and its eval settings."""
    meta, stored = unpack(blob)
    if meta.get("checkpoint"):
        raise ArtifactError("this is a float checkpoint, not a quantized model file")
    try:
        model_cfg = ModelConfig(**meta["model"])
        eval_cfg = EvalConfig(**meta["eval"])
        validate(RunConfig(model=model_cfg, eval=eval_cfg))
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"model file settings are malformed ({exc})") from None
    model = GPT(model_cfg)
    state = dequantize_state_dict(canonical_order(stored) if meta.get("row_order") else stored)
    expected = model.state_dict()
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in expected):
        raise ArtifactError("model file tensors do not match the model its settings describe")
    model.load_state_dict(state, strict=True)
    return model.to(device), model_cfg, eval_cfg


def load_model_file(path: str, device: torch.device) -> tuple[GPT, ModelConfig, EvalConfig]:
    try:
        with open(path, "rb") as f:
            return load_model(f.read(), device)
    except ArtifactError as exc:
        raise ArtifactError(f"{path}: {exc}") from None


def score(model: GPT, eval_cfg: EvalConfig, val_pattern: str, tokenizer_path: str, runtime: Runtime, limit: int = 0):
    vocab_size = model.cfg.vocab_size
    luts = ByteLuts(load_tokenizer(tokenizer_path, vocab_size), vocab_size)
    tokens = validation_tokens(val_pattern, eval_cfg.seq_len, vocab_size, limit)
    return score_tokens(model, eval_cfg, tokens, luts, runtime)


def score_tokens(model: GPT, eval_cfg: EvalConfig, tokens, luts, runtime: Runtime, trace=None):
    """The submission's evaluation of a token stream: every score, and the legality probe, goes through here."""
    return evaluate_bpb(model, tokens, luts, eval_cfg, runtime, trace)


def run_probe(probe_dir: str, model: GPT, eval_cfg: EvalConfig, val_pattern: str, tokenizer_path: str, runtime: Runtime) -> None:
    """The legality probe (`search verify --legality`): token streams from PROBE_DIR/streams.npz, each scored from the
    model file afresh by this script's own evaluation; writes each target's loss, the whole distribution at the
    chosen targets of the first stream, and how often each target of the validation split was scored."""
    with np.load(os.path.join(probe_dir, "streams.npz"), allow_pickle=False) as f:
        tokens, lengths, positions = f["tokens"].astype(np.int64), f["lengths"], f["positions"]
    vocab_size = model.cfg.vocab_size
    luts = ByteLuts(load_tokenizer(tokenizer_path, vocab_size), vocab_size)
    losses, dist_rows, offset = [], [], 0
    for i, length in enumerate(lengths.tolist()):
        trace = Trace(length - 1, positions.tolist() if i == 0 else ())
        score_tokens(model, eval_cfg, torch.from_numpy(tokens[offset : offset + length]), luts, runtime, trace)
        losses.append(trace.nll.numpy())
        dist_rows += [trace.dist[p].numpy() if p in trace.dist else np.full(vocab_size, np.nan) for p in positions.tolist()] if i == 0 else []
        offset += length
    split = validation_tokens(val_pattern, eval_cfg.seq_len, vocab_size)
    trace = Trace(split.numel() - 1)
    score_tokens(model, eval_cfg, split, luts, runtime, trace)
    np.save(os.path.join(probe_dir, "nll.npy"), np.concatenate(losses))
    np.save(os.path.join(probe_dir, "dist.npy"), np.stack(dist_rows) if dist_rows else np.zeros((0, vocab_size)))
    np.save(os.path.join(probe_dir, "counts.npy"), trace.count.clamp(max=255).numpy().astype(np.uint8))


@dataclasses.dataclass
class DataFiles:
    """Where a run's tokens come from (a DataPaths of pgolf/datasets.py has the same fields and serves as well)."""
    train_pattern: str
    val_pattern: str
    tokenizer: str


@dataclasses.dataclass
class Packed:
    """A trained model in its stored form: the model file's bytes and what it took to make them."""
    blob: bytes
    sizes: dict  # compressed bytes per tensor group
    seconds: float = 0.0  # calibration and quantization after training: they read training data, so they count as training
    stored: list | None = None  # the stored tensors, where the step kept them
    post: EvalResult | None = None  # the score of `blob` loaded back, where the step measured it already (to choose it)


@dataclasses.dataclass
class Outcome:
    """What the pipeline measured. On ranks other than 0 `packed` is None; so it is where the post-training step
    found nothing to store (then there is no model file and no post score)."""
    trained: TrainResult
    params: int
    pre: EvalResult | None  # None where the pipeline was asked not to score the float model
    pre_limit: int = 0  # the float model was scored on the first pre_limit validation tokens (0: all of them)
    packed: Packed | None = None
    post: EvalResult | None = None
    post_eval: EvalConfig | None = None  # the eval settings the model file carried, where the pipeline scored it

    @property
    def train_seconds(self) -> float:
        """What the training cap counts: the training and the post-training calibration and quantization."""
        return self.trained.train_seconds + (self.packed.seconds if self.packed else 0.0)


def quantize_and_pack(config: RunConfig, files, runtime: Runtime):
    """The post-training step of a run and of the script: calibrate where a format needs it, quantize, pack."""

    def step(model: GPT, trained: TrainResult, pre: EvalResult) -> Packed:
        blob, sizes, stored, seconds = export_trained(model, config, files.train_pattern, runtime.device)
        return Packed(blob, sizes, seconds, stored)

    return step


def train_pack_score(config: RunConfig, files, runtime: Runtime, model_path: str | None, *, log=print, validate_fn=None,
                     on_val=None, pre_tokens: int = 0, after_training=None, post_training=None, pre_score: bool = True) -> Outcome:
    """Train -> score the float model (on its first pre_tokens validation tokens; 0: all) -> on rank 0, the post-training
    step (`post_training(model, trained, pre)` -> Packed or None; default: quantize_and_pack) -> the model file written
    to model_path -> every rank scores the bytes read back from it. after_training(model, trained) runs first (rank 0
    writes a checkpoint there, say). Training time includes the post-training step's seconds (Outcome.train_seconds).
    pre_score=False skips the float model's score (Outcome.pre is None then; the default post-training step needs none)."""
    model, trained = train_model(config, files.train_pattern, runtime, validate_fn=validate_fn, on_val=on_val, log=log)
    log(f"trained steps:{trained.steps} train_time:{trained.train_seconds:.1f}s stopped_by:{trained.stopped_by}")
    if after_training is not None:
        after_training(model, trained)
    pre = None
    if pre_score:
        pre = score(model, config.resolved_eval(), files.val_pattern, files.tokenizer, runtime, limit=pre_tokens)
        log(f"pre_quant val_loss:{pre.loss:.8f} val_bpb:{pre.bpb:.8f}" + (f" tokens:{pre.tokens}" if pre_tokens else ""))
    outcome = Outcome(trained, count_params(model), pre, pre_tokens)
    if runtime.is_main:
        outcome.packed = (post_training or quantize_and_pack(config, files, runtime))(model, trained, pre)
    del model
    packed = outcome.packed
    if packed is not None:
        if packed.seconds:
            log(f"calibration and quantization: {packed.seconds:.1f}s (counted as training) train_time:{outcome.train_seconds:.1f}s")
        with open(model_path + ".tmp", "wb") as f:
            f.write(packed.blob)
        os.replace(model_path + ".tmp", model_path)
        log(f"model_bytes:{len(packed.blob)} by_group:{packed.sizes}")
    outcome.post = share_from_main(runtime, packed.post if packed else None)
    if outcome.post is None:
        # Every rank scores the bytes rank 0 wrote, read back from its file.
        blob = share_from_main(runtime, read_file(model_path) if packed else None)
        if blob is None:
            return outcome
        fresh, _, outcome.post_eval = load_model(blob, runtime.device)
        outcome.post = score(fresh, outcome.post_eval, files.val_pattern, files.tokenizer, runtime)
    log_final_score(outcome.post, log)
    return outcome


def read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def log_final_score(post: EvalResult, log) -> None:
    log(f"final_roundtrip val_loss:{post.loss:.8f} val_bpb:{post.bpb:.8f} eval_time:{post.seconds:.1f}s")
    log(f"final_roundtrip_exact val_loss:{post.loss!r} val_bpb:{post.bpb!r}")


def main() -> None:
    config = config_from_dict(CONFIG)
    data_path = os.environ.get("DATA_PATH", f"./data/datasets/fineweb10B_sp{config.model.vocab_size}")
    files = DataFiles(os.path.join(data_path, "fineweb_train_*.bin"), os.path.join(data_path, "fineweb_val_*.bin"),
                      os.environ.get("TOKENIZER_PATH", f"./data/tokenizers/fineweb_{config.model.vocab_size}_bpe.model"))
    model_path = os.environ.get("MODEL_PATH", MODEL_FILE)
    runtime = setup_runtime()
    with process_group_scope(runtime):
        run_script(config, files, model_path, runtime)


def run_script(config: RunConfig, files: DataFiles, model_path: str, runtime: Runtime) -> None:
    """Train, store and score (the record beside the model file ties that score to its bytes), or with EVAL_ONLY=1
    score the model file at model_path; PROBE_DIR then runs the legality probe on it instead of scoring."""
    log = print if runtime.is_main else (lambda *_: None)
    if os.environ.get("EVAL_ONLY", "0") != "1":
        code_bytes = os.path.getsize(__file__)
        # The float model's score re-runs the whole evaluation (TTT included) for a figure the submission does not
        # need: only on request.
        outcome = train_pack_score(config, files, runtime, model_path, log=log, pre_score=os.environ.get("PRE_QUANT_SCORE", "0") == "1")
        if runtime.is_main:
            log(f"code_bytes:{code_bytes} total_bytes:{len(outcome.packed.blob) + code_bytes}")
            # The score of the model file just written, tied to its bytes by their hash (what `verify` checks).
            post = outcome.post
            record = {"val_bpb": post.bpb, "val_loss": post.loss, "model_sha256": hashlib.sha256(outcome.packed.blob).hexdigest(),
                      "model_bytes": len(outcome.packed.blob), "code_bytes": code_bytes, "train_seconds": outcome.train_seconds,
                      "steps": outcome.trained.steps, "eval_seconds": post.seconds}
            with open(model_path + RESULT_SUFFIX, "w", encoding="utf-8") as f:
                json.dump(record, f, indent=2)
        return
    model, _, eval_cfg = load_model_file(model_path, runtime.device)
    if os.environ.get("PROBE_DIR"):
        run_probe(os.environ["PROBE_DIR"], model, eval_cfg, files.val_pattern, files.tokenizer, runtime)
        return
    log_final_score(score(model, eval_cfg, files.val_pattern, files.tokenizer, runtime), log)


if __name__ == "__main__":
    try:
        main()
    except EXPECTED_ERRORS as exc:
        # Under torchrun every rank meets the same error: rank 0 says it, the others only exit non-zero.
        raise SystemExit(f"error: {exc}" if os.environ.get("RANK", "0") == "0" else 1) from None
    if "RANK" in os.environ:
        exit_process(0)
