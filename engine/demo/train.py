"""Trains the built-in demo DiffusionGemma on the synthetic corpus, reproducibly from a seed.

    python -m engine.demo.train --out resources/demo-model --minutes 40 --seed 0 --threads 1
    python -m engine.demo.train --init resources/demo-model --out /tmp/demo-ft --minutes 19 \
        --seed 1 --threads 2 --lr 3e-4 --warmup-steps 50      # fine-tune the shipped weights

The training forward uses only the model's public arguments and mirrors what `generate()` does
at inference: the causal encoder runs once over prompt + clean answer (its KV cache, plus an
autoregressive loss on the answer); every noised canvas then goes through the decoder at once,
with a block mask in which each canvas sees the clean prefix before it and itself.
`check_matches_generate` verifies that against the step-by-step inference path.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from engine.demo.corpus import (
    MULTI_TURN_RATE,
    SKILLS,
    held_out_chats,
    held_out_examples,
    tokenizer_texts,
    training_chats,
)
from engine.demo.tokenizer import (
    BOI_TOKEN_ID,
    BOS_ID,
    END_OF_TURN_ID,
    EOI_TOKEN_ID,
    EOS_ID,
    IMAGE_TOKEN_ID,
    PAD_ID,
    build_tokenizer,
)

CANVAS_LENGTH = 16
VOCAB_SIZE = 768
# The sliding layers' window: a six-turn chat of long self-descriptions is ~400 tokens, so 256
# (the first models' window) would cut the chats the demo is trained on. The window is only a
# mask bound (no weight depends on it), so a fine-tune may raise it; RoPE positions go to 4096.
SLIDING_WINDOW = 1024


@dataclass(frozen=True)
class Recipe:
    hidden_size: int = 128
    num_layers: int = 4
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    ar_loss_weight: float = 0.5
    self_conditioning_rate: float = 0.5
    t_min: float = 0.4
    t_max: float = 0.8


def small_diffusion_gemma_config(
    vocab_size: int,
    *,
    hidden_size: int,
    layer_types: list[str],
    head_dim: int,
    global_head_dim: int,
    sliding_window: int,
    canvas_length: int,
):
    """A DiffusionGemma config at toy size with the Gemma-4-style special token ids.

    Shared by the demo model and the tests' tiny models so both load exactly like the real one.
    """
    from transformers import DiffusionGemmaConfig

    text_config = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=len(layer_types),
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=head_dim,
        global_head_dim=global_head_dim,
        num_global_key_value_heads=1,
        layer_types=layer_types,
        sliding_window=sliding_window,
        num_experts=4,
        top_k_experts=2,
        moe_intermediate_size=hidden_size,
        enable_moe_block=True,
        max_position_embeddings=4096,
        pad_token_id=PAD_ID,
        eos_token_id=[EOS_ID, END_OF_TURN_ID],
        bos_token_id=BOS_ID,
    )
    # The encoder always builds a vision tower; keep it minimal (text only).
    vision_config = dict(
        model_type="gemma4_vision",
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
    )
    return DiffusionGemmaConfig(
        text_config=text_config,
        vision_config=vision_config,
        canvas_length=canvas_length,
        image_token_id=IMAGE_TOKEN_ID,
        boi_token_id=BOI_TOKEN_ID,
        eoi_token_id=EOI_TOKEN_ID,
        pad_token_id=PAD_ID,
        eos_token_id=[EOS_ID, END_OF_TURN_ID],
        bos_token_id=BOS_ID,
    )


def demo_config(vocab_size: int, recipe: Recipe):
    hidden = recipe.hidden_size
    return small_diffusion_gemma_config(
        vocab_size,
        hidden_size=hidden,
        layer_types=["sliding_attention", "full_attention"] * (recipe.num_layers // 2),
        head_dim=hidden // 4,
        global_head_dim=hidden // 4,
        # Longer than any training chat, so training and inference see the same attention.
        sliding_window=SLIDING_WINDOW,
        canvas_length=CANVAS_LENGTH,
    )


def demo_generation_config(max_denoising_steps: int = 16, entropy_bound: float = 0.1):
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
        DiffusionGemmaGenerationConfig,
        EntropyBoundSamplerConfig,
    )

    return DiffusionGemmaGenerationConfig(
        max_new_tokens=4 * CANVAS_LENGTH,
        max_denoising_steps=max_denoising_steps,
        sampler_config=EntropyBoundSamplerConfig(entropy_bound=entropy_bound),
        t_min=0.4,
        t_max=0.8,
        stability_threshold=1,
        confidence_threshold=0.005,
        eos_token_id=[EOS_ID, END_OF_TURN_ID],
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
    )


def prompt_ids(tokenizer, example) -> list[int]:
    """The prompt exactly as the engine renders it: the whole chat through the chat template
    with the generation prompt (earlier model turns without the empty thought channel)."""
    from engine.generation import encode_prompt

    return encode_prompt(tokenizer, example.messages())


def answer_ids(tokenizer, answer: str) -> list[int]:
    return tokenizer(answer, add_special_tokens=False)["input_ids"] + [END_OF_TURN_ID]


# --- the training forward ------------------------------------------------------------------


@dataclass
class Batch:
    encoder_ids: "torch.Tensor"  # (B, P + N*C): left-padded prompt, then the clean canvases
    encoder_positions: "torch.Tensor"
    encoder_mask: "torch.Tensor"  # (B, 1, L, L) additive
    targets: "torch.Tensor"  # (B, N*C): answer, <turn|>, then <pad>
    target_weight: "torch.Tensor"  # (B, N*C): 1 on canvases the reply really has
    ar_weight: "torch.Tensor"  # (B, N*C): 1 on answer tokens up to <turn|>
    decoder_positions: "torch.Tensor"
    decoder_mask: "torch.Tensor"  # (B, 1, N*C, L + N*C) additive


def make_batch(pairs: list[tuple[list[int], list[int]]]) -> Batch:
    import torch

    C = CANVAS_LENGTH
    P = max(len(p) for p, _ in pairs)
    N = max(math.ceil(len(a) / C) for _, a in pairs)
    B, L, D = len(pairs), P + N * C, N * C
    encoder_ids = torch.full((B, L), PAD_ID, dtype=torch.long)
    encoder_positions = torch.zeros((B, L), dtype=torch.long)
    key_valid = torch.zeros((B, L), dtype=torch.bool)
    targets = torch.full((B, D), PAD_ID, dtype=torch.long)
    target_weight = torch.zeros((B, D))
    ar_weight = torch.zeros((B, D))
    decoder_positions = torch.zeros((B, D), dtype=torch.long)
    for i, (p, a) in enumerate(pairs):
        n = math.ceil(len(a) / C)
        encoder_ids[i, P - len(p) : P] = torch.tensor(p)
        encoder_ids[i, P : P + len(a)] = torch.tensor(a)
        encoder_positions[i, P - len(p) :] = torch.arange(L - (P - len(p)))
        key_valid[i, P - len(p) :] = True
        targets[i, : len(a)] = torch.tensor(a)
        target_weight[i, : n * C] = 1.0
        ar_weight[i, : len(a)] = 1.0
        decoder_positions[i] = len(p) + torch.arange(D)
    idx = torch.arange(L)
    causal = idx[None, :] <= idx[:, None]
    enc_allowed = causal[None] & key_valid[:, None, :]
    enc_allowed |= torch.eye(L, dtype=torch.bool)[None]  # pad rows see themselves, never NaN
    # Decoder: canvas k sees the encoded prefix before it (prompt + canvases < k) and itself.
    canvas_of = torch.arange(D) // C
    prefix_end = P + canvas_of * C  # first encoder column canvas k may not see
    sees_prefix = (idx[None, :] < prefix_end[:, None])[None] & key_valid[:, None, :]
    sees_self = (canvas_of[:, None] == canvas_of[None, :]).expand(B, D, D)
    dec_allowed = torch.cat([sees_prefix, sees_self], dim=-1)

    def additive(allowed):
        mask = torch.zeros(allowed.shape, dtype=torch.float32)
        mask.masked_fill_(~allowed, torch.finfo(torch.float32).min)
        return mask[:, None]

    return Batch(
        encoder_ids, encoder_positions, additive(enc_allowed), targets, target_weight, ar_weight,
        decoder_positions, additive(dec_allowed),
    )


def encode(model, batch: Batch):
    """Causal encoder over prompt + clean answer: returns its hidden states and KV cache."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config.get_text_config(decoder=True))
    masks = {"full_attention": batch.encoder_mask, "sliding_attention": batch.encoder_mask}
    out = model.model.encoder(
        input_ids=batch.encoder_ids,
        attention_mask=masks,
        position_ids=batch.encoder_positions,
        past_key_values=cache,
    )
    return out.last_hidden_state, out.past_key_values


def decode(model, batch: Batch, cache, canvases, self_conditioning_logits=None):
    masks = {"full_attention": batch.decoder_mask, "sliding_attention": batch.decoder_mask}
    return model(
        past_key_values=cache,
        decoder_input_ids=canvases,
        decoder_attention_mask=masks,
        decoder_position_ids=batch.decoder_positions,
        self_conditioning_logits=self_conditioning_logits,
    ).logits


def lm_logits(model, hidden):
    """The LM head with the model's final-logit softcapping, for the encoder's AR loss."""
    import torch

    cap = model.final_logit_softcapping
    logits = model.lm_head(hidden).float()
    return torch.tanh(logits / cap) * cap if cap else logits


def noise_canvases(targets, vocab_size: int, generator):
    """Uniform-token noise: each canvas gets t ~ U(1e-3, 1); each position is replaced by a
    random vocabulary token with probability t (generate() starts from all-random canvases)."""
    import torch

    B, D = targets.shape
    t = torch.empty((B, D // CANVAS_LENGTH)).uniform_(1e-3, 1.0, generator=generator)
    t = t.repeat_interleave(CANVAS_LENGTH, dim=1)
    replace = torch.rand((B, D), generator=generator) < t
    noise = torch.randint(0, vocab_size, (B, D), generator=generator)
    return torch.where(replace, noise, targets)


def training_loss(model, batch: Batch, recipe: Recipe, generator, vocab_size: int):
    import torch
    import torch.nn.functional as F

    hidden, cache = encode(model, batch)
    P = batch.encoder_ids.shape[1] - batch.targets.shape[1]
    # Encoder AR loss: the position before each answer token predicts it.
    ar_logits = lm_logits(model, hidden[:, P - 1 : -1])
    ar_ce = F.cross_entropy(ar_logits.transpose(1, 2), batch.targets, reduction="none")
    ar_loss = (ar_ce * batch.ar_weight).sum() / batch.ar_weight.sum()

    canvases = noise_canvases(batch.targets, vocab_size, generator)
    self_conditioning = None
    if torch.rand((), generator=generator).item() < recipe.self_conditioning_rate:
        with torch.no_grad():
            first = decode(model, batch, cache, canvases)
        # generate() feeds back temperature-scaled logits; train on the same range.
        temperature = recipe.t_min + (recipe.t_max - recipe.t_min) * torch.rand((), generator=generator)
        self_conditioning = (first / temperature).detach()
    logits = decode(model, batch, cache, canvases, self_conditioning)
    ce = F.cross_entropy(logits.transpose(1, 2), batch.targets, reduction="none")
    diffusion_loss = (ce * batch.target_weight).sum() / batch.target_weight.sum()
    return diffusion_loss + recipe.ar_loss_weight * ar_loss, diffusion_loss.item(), ar_loss.item()


def check_matches_generate(model, tokenizer, examples, vocab_size: int, seed: int = 0) -> float:
    """Max |logit difference| between the batched training forward and generate()'s path
    (encoder prefill, decoder per canvas, encoder over each finished canvas)."""
    import torch
    from transformers import DynamicCache

    pairs = [(prompt_ids(tokenizer, e), answer_ids(tokenizer, e.answer)) for e in examples]
    batch = make_batch(pairs)
    generator = torch.Generator().manual_seed(seed)
    canvases = noise_canvases(batch.targets, vocab_size, generator)
    model.eval()
    worst = 0.0
    with torch.no_grad():
        _, cache = encode(model, batch)
        batched = decode(model, batch, cache, canvases)
        for i, (p, a) in enumerate(pairs):
            cache = DynamicCache(config=model.config.get_text_config(decoder=True))
            model.model.encoder(input_ids=torch.tensor([p]), past_key_values=cache)
            position = len(p)
            for k in range(math.ceil(len(a) / CANVAS_LENGTH)):
                cols = slice(k * CANVAS_LENGTH, (k + 1) * CANVAS_LENGTH)
                positions = torch.arange(position, position + CANVAS_LENGTH)[None]
                step = model(
                    past_key_values=cache, decoder_input_ids=canvases[i : i + 1, cols],
                    decoder_position_ids=positions,
                ).logits
                worst = max(worst, (step[0] - batched[i, cols]).abs().max().item())
                model.model.encoder(
                    input_ids=batch.targets[i : i + 1, cols], past_key_values=cache, position_ids=positions
                )
                position += CANVAS_LENGTH
    return worst


def forward_check_examples():
    """Two questions per skill, the longest reply included: prompts of different lengths and
    replies of one to three canvases in one padded batch."""
    by_skill = {}
    for example in held_out_examples():
        by_skill.setdefault(example.skill, []).append(example)
    picked = [e for examples in by_skill.values() for e in examples[:2]]
    longest_chat = max(held_out_chats(6), key=lambda e: sum(len(q) + len(a) for q, a in e.history))
    return picked + [max(held_out_examples(), key=lambda e: len(e.answer)), longest_chat]


# --- the loop ------------------------------------------------------------------------------


def batches(tokenizer, seed: int, batch_size: int, multi_turn_rate: float, sliding_window: int):
    """Endless batches; each draws a pool and groups replies of equal canvas count and similar
    prompt length, so a long self-description does not pad a batch of one-canvas answers to
    three canvases, nor a six-turn chat a batch of single questions."""
    stream = training_chats(seed, multi_turn_rate)
    rng = random.Random(seed + 1)
    while True:
        pool = [next(stream) for _ in range(batch_size * 8)]
        pairs = [(prompt_ids(tokenizer, e), answer_ids(tokenizer, e.answer)) for e in pool]
        # The training mask is plain causal: it equals the sliding layers' mask only while a chat
        # fits in the window (inference on a longer chat would see less than training did).
        pairs = [pa for pa in pairs if len(pa[0]) + len(pa[1]) <= sliding_window]
        pairs.sort(key=lambda pa: (math.ceil(len(pa[1]) / CANVAS_LENGTH), len(pa[0])))
        chunks = [pairs[i : i + batch_size] for i in range(0, len(pairs), batch_size)]
        rng.shuffle(chunks)
        for chunk in chunks:
            yield make_batch(chunk)


def lr_at(progress: float, step: int, recipe: Recipe) -> float:
    """Linear warm-up, then cosine decay to 5% as `progress` goes from 0 to 1."""
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    return recipe.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train(args) -> Path:
    import torch
    from transformers import DiffusionGemmaForBlockDiffusion

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    if args.init:
        # Fine-tuning: the folder's own tokenizer (a rebuilt BPE could differ from the one its
        # weights were trained with) and its weights, loaded in fp32 even when shipped in bf16.
        from transformers import AutoTokenizer

        from transformers import AutoConfig

        tokenizer = AutoTokenizer.from_pretrained(args.init)
        config = AutoConfig.from_pretrained(args.init)
        text_config = config.get_text_config(decoder=True)
        if text_config.sliding_window < SLIDING_WINDOW:
            log(f"raising the sliding window from {text_config.sliding_window} to {SLIDING_WINDOW}")
            text_config.sliding_window = SLIDING_WINDOW
        model = DiffusionGemmaForBlockDiffusion.from_pretrained(args.init, config=config, dtype=torch.float32)
        recipe = Recipe(
            hidden_size=text_config.hidden_size, num_layers=text_config.num_hidden_layers,
            batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
        )
        log(f"fine-tuning from {args.init}")
    else:
        recipe = Recipe(
            hidden_size=args.hidden, num_layers=args.layers, batch_size=args.batch_size, lr=args.lr,
            warmup_steps=args.warmup_steps,
        )
        tokenizer = build_tokenizer(tokenizer_texts(), VOCAB_SIZE)
        config = demo_config(len(tokenizer), recipe)
        model = DiffusionGemmaForBlockDiffusion(config)
    vocab_size = len(tokenizer)
    # grouped_mm was erratic for training on CPU (1.5-10 s per step); eager is steady.
    model.set_experts_implementation("eager")
    n_params = sum(p.numel() for p in model.parameters())
    log(f"parameters: {n_params:,} ({n_params / 1e6:.2f} M), vocab {vocab_size}")

    model.train(False)
    diff = check_matches_generate(model, tokenizer, forward_check_examples(), vocab_size)
    log(f"training forward vs generate() path at init: max |dlogit| = {diff:.2e}")
    if diff > 1e-4:
        raise SystemExit("training forward does not match generate(); refusing to train")

    optimizer = torch.optim.AdamW(
        model.parameters(), lr=recipe.lr, betas=(0.9, 0.98), weight_decay=recipe.weight_decay
    )
    generator = torch.Generator().manual_seed(args.seed)
    sliding_window = model.config.get_text_config(decoder=True).sliding_window
    stream = batches(tokenizer, args.seed, recipe.batch_size, args.multi_turn_rate, sliding_window)
    budget_s = args.minutes * 60 if args.minutes else None
    started = time.monotonic()
    step = 0
    model.train()
    while True:
        # With --steps the schedule follows the step count and the run is exactly reproducible;
        # with --minutes it follows the clock, so a busy shared CPU shortens the run, not the
        # schedule (the manifest records the steps it reached).
        elapsed = time.monotonic() - started
        progress = elapsed / budget_s if budget_s else step / args.steps
        if progress >= 1.0:
            break
        for group in optimizer.param_groups:
            group["lr"] = lr_at(progress, step, recipe)
        loss, diffusion_loss, ar_loss = training_loss(model, next(stream), recipe, generator, vocab_size)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % 50 == 0:
            log(f"step {step} progress {progress:.2f} loss {diffusion_loss:.4f} ar {ar_loss:.4f} "
                f"{elapsed / 60:.1f} min")
    minutes = (time.monotonic() - started) / 60
    model.eval()
    diff = check_matches_generate(model, tokenizer, forward_check_examples(), vocab_size)
    log(f"training forward vs generate() path after training: max |dlogit| = {diff:.2e}")
    return save(model, tokenizer, args, recipe, step, minutes, diff)


def save(model, tokenizer, args, recipe: Recipe, steps: int, minutes: float, forward_diff: float) -> Path:
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Inference uses the library default again; eager was only the CPU training choice.
    model.set_experts_implementation("grouped_mm")
    model.config._experts_implementation = None
    model.generation_config = demo_generation_config(args.denoising_steps)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    model.to(dtype).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    manifest = {
        "name": "Canvas Chat demo model",
        "description": (
            "A tiny DiffusionGemma trained on a synthetic chat corpus. It knows only toy skills; "
            "the real model is DiffusionGemma 26B-A4B, downloaded from the Model setup screen."
        ),
        "architecture": "DiffusionGemmaForBlockDiffusion",
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": args.dtype,
        "skills": list(SKILLS),
        "training": {
            "seed": args.seed,
            "steps": steps,
            "minutes": round(minutes, 1),
            "threads": args.threads,
            "recipe": recipe.__dict__,
            "command": " ".join(["python -m engine.demo.train"] + sys.argv[1:]),
            "init": args.init,
            "multi_turn_rate": args.multi_turn_rate,
            "forward_vs_generate_max_abs_logit_diff": forward_diff,
        },
    }
    (out / "demo.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"saved to {out}")
    return out


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--minutes", type=float, help="wall-clock budget; the schedule follows the clock")
    budget.add_argument("--steps", type=int, help="exact step count (reproduces a run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=Recipe.batch_size)
    parser.add_argument("--lr", type=float, default=Recipe.lr)
    parser.add_argument("--warmup-steps", type=int, default=Recipe.warmup_steps)
    parser.add_argument("--init", metavar="FOLDER",
                        help="fine-tune from a saved demo model (its weights and tokenizer)")
    parser.add_argument("--multi-turn-rate", type=float, default=MULTI_TURN_RATE,
                        help="share of training examples that are chats of 1-6 earlier turns")
    parser.add_argument("--hidden", type=int, default=Recipe.hidden_size)
    parser.add_argument("--layers", type=int, default=Recipe.num_layers)
    parser.add_argument("--denoising-steps", type=int, default=16)
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    args = parser.parse_args(argv)
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
