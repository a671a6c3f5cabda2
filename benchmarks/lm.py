"""Language-model benchmark: graftune against TRL's SFTTrainer and a plain PyTorch loop, in one run.

    .venv/bin/python -m benchmarks.lm [--quick] [--tools graftune,trl,plain] [--out DIR]
    .venv/bin/python -m benchmarks.lm --summaries [--quick] [--out DIR]

Every tool fine-tunes `smollm2-135m` (SmolLM2-135M-Instruct, dequantized from its GGUF file) with LoRA r16,
alpha 32, dropout 0.05 on every linear layer of the decoder blocks, for one epoch of 256-token blocks of the
Debian fortunes corpus (`apt-get install fortunes`), batch 8, AdamW at 1e-3 with weight decay 0.01, cosine
schedule with 10% warmup, gradients clipped at 1.0, fp32 (this CPU has no native bf16; on a machine with it,
pass --bf16 to every tool). The fortunes are shuffled with seed 0; the first ones fill the train split
(`TRAIN_BLOCKS` blocks), the next the validation and test splits. Each tool runs in its own process.

Every final model is scored by the same function: held-out perplexity of each test fortune on its own,
with its end-of-text (no fortune is context for another: they are independent documents). Tokens
per second count training tokens over the training passes alone (no loading, no evaluation). Printed:
perplexity before and after, tokens per second, that throughput as a fraction of this machine's measured
matmul peak (fp32 and bf16, 2048x2048, measured in the same run; FLOPs per token taken as 6 x parameters),
peak RSS, and the issue's targets with PASS/FAIL. Everything goes to OUT/lm.json.

`--summaries` is the summarization figure: graftune alone, LoRA on smollm2-135m, prompt/completion pairs built
from BBC News (the article's body is the prompt, its first line, the headline, the completion; bodies cut to
their first 120 words), 160 train / 20 val / 40 test pairs in 3 epochs, with ROUGE-1/2/L of greedy 24-token
completions against the real headlines, before and after.

Peers: `trl` is SFTTrainer as its documentation teaches for a text corpus (a `text` dataset,
`packing=True` with the `wrapped` strategy, since `bfd` packing needs FlashAttention), evaluation off
during training; `plain` is a hand-written loop over the same 256-token blocks.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import close, print_aligned, print_checks, run_worker, write_report, write_row

FORTUNES = Path("/usr/share/games/fortunes")
BLOCK = 256
TRAIN_BLOCKS, VAL_BLOCKS, TEST_BLOCKS = 96, 8, 16
QUICK_BLOCKS = (8, 2, 4)
COMMON = {"r": 16, "alpha": 32, "dropout": 0.05, "lr": 1e-3, "batch_size": 8, "weight_decay": 0.01,
          "warmup_ratio": 0.1, "grad_clip": 1.0, "seed": 0}
TARGETS = ("ppl drop >= 25%", "ppl within 2% of best peer", "tokens/s >= 1.5x best peer")


# --- data ---------------------------------------------------------------------------------------------------


def read_fortunes() -> list[str]:
    """Every fortune of the Debian corpus (the text files, `%` between entries), in file order."""
    if not FORTUNES.is_dir():
        raise SystemExit(f"{FORTUNES}: not installed. Run: apt-get install fortunes")
    texts = []
    for path in sorted(p for p in FORTUNES.iterdir() if p.is_file() and not p.suffix):
        text = path.read_bytes().decode("utf-8", errors="replace")
        texts += [entry.strip() for entry in text.split("\n%\n") if entry.strip()]
    return texts


def build(root: Path, quick: bool) -> dict[str, int]:
    """Write train.txt, val.txt, test.txt (fortunes separated by `%` lines), sized in 256-token blocks."""
    from graftune.backbones.presets import load_smollm2

    tokenizer = load_smollm2().preprocess.tokenizer  # type: ignore[union-attr]
    fortunes = read_fortunes()
    random.Random(0).shuffle(fortunes)
    sizes = dict(zip(("train", "val", "test"), QUICK_BLOCKS if quick else (TRAIN_BLOCKS, VAL_BLOCKS, TEST_BLOCKS),
                     strict=True))
    root.mkdir(parents=True, exist_ok=True)
    counts, start = {}, 0
    for split, blocks in sizes.items():
        taken, tokens = [], 0
        while tokens < blocks * BLOCK and start < len(fortunes):
            taken.append(fortunes[start])
            tokens += len(tokenizer(fortunes[start], add_special_tokens=False)["input_ids"]) + 1
            start += 1
        (root / f"{split}.txt").write_text("\n%\n".join(taken) + "\n")
        counts[split] = len(taken)
    return counts


def documents(root: Path, split: str) -> list[str]:
    return [d.strip() for d in (root / f"{split}.txt").read_text().split("\n%\n") if d.strip()]


def blocks_of(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Texts with end-of-text after each, concatenated and cut into 256-token blocks (the last partial one
    dropped), as the peers pack them."""
    ids = [token for text in texts for token in [*tokenizer(text, add_special_tokens=False)["input_ids"],
                                                 tokenizer.eos_token_id]]
    return [ids[i:i + BLOCK] for i in range(0, len(ids) - BLOCK + 1, BLOCK)]


def perplexity(model: Any, tokenizer: Any, texts: list[str]) -> float:
    """The one scoring function for every tool: held-out perplexity of each test fortune on its own (with its
    end-of-text), as independent documents are read; no fortune is seen as context for another."""
    import torch

    model.eval()
    total, count = 0.0, 0
    documents = [[*tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id][:BLOCK]
                 for text in texts]
    with torch.inference_mode():
        for start in range(0, len(documents), 16):
            batch = documents[start:start + 16]
            width = max(len(d) for d in batch)
            ids = torch.tensor([d + [tokenizer.pad_token_id] * (width - len(d)) for d in batch])
            mask = torch.tensor([[1] * len(d) + [0] * (width - len(d)) for d in batch])
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            total += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(),
                                                             ignore_index=-100, reduction="sum"))
            count += int((targets != -100).sum())
    return math.exp(total / count)


def lora_targets() -> list[str]:
    return ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# --- tools (each in its own process) -------------------------------------------------------------------------


def run_graftune(root: Path, out: Path, bf16: bool) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from graftune.api import train  # imported before the clock starts: `import graftune` is lazy

    config = {"task": "causal-lm", "model": {"source": "smollm2-135m"},
              "data": {"train": str(root / "train.txt"), "val": str(root / "val.txt"), "test": str(root / "test.txt"),
                       "document_separator": "%", "block_size": BLOCK},
              "strategy": {"name": "lora", "lora": {"r": COMMON["r"], "alpha": COMMON["alpha"],
                                                    "dropout": COMMON["dropout"], "targets": lora_targets()}},
              "optim": {"lr": COMMON["lr"], "weight_decay": COMMON["weight_decay"], "schedule": "cosine",
                        "warmup_ratio": COMMON["warmup_ratio"], "grad_clip": COMMON["grad_clip"]},
              "train": {"epochs": 1, "batch_size": COMMON["batch_size"], "seed": COMMON["seed"], "progress": False,
                        "mixed_precision": "bf16" if bf16 else "no"},
              "generation": {"samples": 0}}
    result = train(config, out=out / "run", overwrite=True)
    rows = [json.loads(line) for line in (result.dir / "metrics.jsonl").read_text().splitlines()]
    model = AutoModelForCausalLM.from_pretrained(result.dir / "model")
    tokenizer = AutoTokenizer.from_pretrained(result.dir / "model")
    # graftune packs every token of the train split (each fortune and its end-of-text) into blocks
    tokens = sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1 for text in documents(root, "train"))
    return {"ppl_after": perplexity(model, tokenizer, documents(root, "test")),
            "train_seconds": sum(r["train_seconds"] for r in rows), "train_tokens": tokens,
            "own_test_perplexity": result.test["perplexity"]}


def run_plain(root: Path, out: Path, bf16: bool) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import get_cosine_schedule_with_warmup

    from graftune.backbones.presets import load_smollm2

    torch.manual_seed(COMMON["seed"])
    backbone = load_smollm2()
    tokenizer, model = backbone.preprocess.tokenizer, backbone.body.model  # type: ignore[union-attr]
    model = get_peft_model(model, LoraConfig(r=COMMON["r"], lora_alpha=COMMON["alpha"],
                                             lora_dropout=COMMON["dropout"], target_modules=lora_targets()))
    blocks = blocks_of(tokenizer, documents(root, "train"))
    random.Random(COMMON["seed"]).shuffle(blocks)
    batches = [blocks[i:i + COMMON["batch_size"]] for i in range(0, len(blocks), COMMON["batch_size"])]
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=COMMON["lr"], weight_decay=COMMON["weight_decay"])
    schedule = get_cosine_schedule_with_warmup(optimizer, round(len(batches) * COMMON["warmup_ratio"]), len(batches))
    model.train()
    started = time.perf_counter()
    for batch in batches:
        ids = torch.tensor(batch)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, COMMON["grad_clip"])
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - started
    return {"ppl_after": perplexity(model, tokenizer, documents(root, "test")), "train_seconds": seconds,
            "train_tokens": sum(len(b) for b in blocks)}


def run_trl(root: Path, out: Path, bf16: bool) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from graftune.backbones.presets import load_smollm2

    torch.manual_seed(COMMON["seed"])
    backbone = load_smollm2()
    tokenizer, model = backbone.preprocess.tokenizer, backbone.body.model  # type: ignore[union-attr]
    dataset = Dataset.from_dict({"text": documents(root, "train")})
    args = SFTConfig(output_dir=str(out / "trl"), num_train_epochs=1, per_device_train_batch_size=COMMON["batch_size"],
                     learning_rate=COMMON["lr"], weight_decay=COMMON["weight_decay"], lr_scheduler_type="cosine",
                     warmup_steps=COMMON["warmup_ratio"], max_grad_norm=COMMON["grad_clip"], seed=COMMON["seed"],
                     max_length=BLOCK, packing=True, packing_strategy="wrapped", eval_strategy="no",
                     save_strategy="no", logging_steps=1, report_to=[], bf16=bf16, use_cpu=True,
                     dataloader_num_workers=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=LoraConfig(r=COMMON["r"], lora_alpha=COMMON["alpha"],
                                                lora_dropout=COMMON["dropout"], target_modules=lora_targets()))
    tokens = sum(len(row["input_ids"]) for row in trainer.train_dataset)
    metrics = trainer.train().metrics
    return {"ppl_after": perplexity(trainer.model, tokenizer, documents(root, "test")),
            "train_seconds": float(metrics["train_runtime"]), "train_tokens": tokens}


TOOLS = {"graftune": run_graftune, "trl": run_trl, "plain": run_plain}


def baseline(root: Path) -> float:
    from graftune.backbones.presets import load_smollm2

    backbone = load_smollm2()
    return perplexity(backbone.body.model, backbone.preprocess.tokenizer,  # type: ignore[union-attr]
                      documents(root, "test"))


def matmul_peaks() -> dict[str, float]:
    """GFLOP/s of a square matmul in fp32 and bf16 on this machine, now (best of three): 2048 wide, or 1024
    where bf16 is emulated and a 2048 one would take half a minute."""
    import torch

    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        size = 2048
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        if _timed(lambda a=a, b=b: a[:256] @ b) > 0.5:  # slow (emulated): measure a smaller product
            size = 1024
            a, b = a[:size, :size].contiguous(), b[:size, :size].contiguous()
        best = min(_timed(lambda a=a, b=b: a @ b) for _ in range(3))
        peaks[name] = 2 * size ** 3 / best / 1e9
    return peaks


def _timed(work: Any) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


# --- the parent ---------------------------------------------------------------------------------------------


def targets(rows: list[dict[str, Any]], before: float) -> list[dict[str, Any]]:
    ours = next((r for r in rows if r["tool"] == "graftune"), None)
    peers = [r for r in rows if r["tool"] != "graftune"]
    if ours is None or not peers:
        return []
    best_ppl = min(r["ppl_after"] for r in peers)
    best_speed = max(r["tokens_per_second"] for r in peers)
    drop = 1 - ours["ppl_after"] / before
    return [{"target": TARGETS[0], "value": drop, "bound": ">= 0.25", "passed": drop >= 0.25},
            {"target": TARGETS[1], "value": ours["ppl_after"] / best_ppl - 1, "bound": "<= 0.02",
             "passed": ours["ppl_after"] <= best_ppl * 1.02},
            {"target": TARGETS[2], "value": ours["tokens_per_second"] / best_speed, "bound": ">= 1.5",
             "passed": ours["tokens_per_second"] >= 1.5 * best_speed}]


def summaries(out: Path, quick: bool) -> int:
    """The summarization figure (see the module docstring): ROUGE before and after on BBC News pairs."""
    from graftune.api import train
    from graftune.datasets import bbc_news_root

    files = sorted(p for p in bbc_news_root().rglob("*.txt"))
    random.Random(0).shuffle(files)
    pairs = []
    for path in files:
        lines = [line.strip() for line in path.read_bytes().decode("utf-8", errors="replace").splitlines()]
        headline, body = lines[0], " ".join(line for line in lines[1:] if line)
        if headline and body:
            pairs.append({"prompt": "Write a headline for this article: " + " ".join(body.split()[:120]),
                          "completion": headline})
    sizes = (16, 4, 8) if quick else (160, 20, 40)
    splits, start = {}, 0
    for name, count in zip(("train", "val", "test"), sizes, strict=True):
        splits[name] = out / "summaries" / f"{name}.jsonl"
        splits[name].parent.mkdir(parents=True, exist_ok=True)
        splits[name].write_text("".join(json.dumps(p) + "\n" for p in pairs[start:start + count]))
        start += count
    started = time.perf_counter()
    result = train({"task": "causal-lm", "model": {"source": "smollm2-135m"},
                    "data": {"train": str(splits["train"]), "val": str(splits["val"]), "test": str(splits["test"]),
                             "block_size": 256},
                    "strategy": {"name": "lora", "lora": {"r": COMMON["r"], "alpha": COMMON["alpha"],
                                                          "dropout": COMMON["dropout"], "targets": lora_targets()}},
                    "optim": {"lr": COMMON["lr"]}, "train": {"epochs": 1 if quick else 3, "batch_size": 8,
                                                             "progress": False},
                    "generation": {"samples": 3, "max_new_tokens": 24}}, out=out / "summaries" / "run",
                   overwrite=True)
    saved = json.loads((result.dir / "results.json").read_text())
    figure = {"pairs": dict(zip(("train", "val", "test"), sizes, strict=True)),
              "seconds": time.perf_counter() - started,
              "rouge_before": saved["before"]["rouge"], "rouge_after": saved["test"]["rouge"],
              "perplexity_before": saved["before"]["perplexity"], "perplexity_after": saved["test"]["perplexity"],
              "samples_after": saved["test"]["samples"]}
    (out / "summaries.json").write_text(json.dumps(figure, indent=2))
    print_aligned([("", "ROUGE-1", "ROUGE-2", "ROUGE-L", "perplexity")] +
                  [(when, *(f"{figure[f'rouge_{when}'][k]:.4f}" for k in ("rouge1", "rouge2", "rougeL")),
                    f"{figure[f'perplexity_{when}']:.2f}") for when in ("before", "after")])
    print(f"\nwritten to {out / 'summaries.json'} ({figure['seconds']:.0f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lm", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"tiny splits ({QUICK_BLOCKS} blocks): a smoke check")
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated: " + ", ".join(TOOLS))
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast in every tool (native bf16 machines)")
    parser.add_argument("--out", type=Path, default=Path("bench-out/lm"))
    parser.add_argument("--summaries", action="store_true", help="the summarization figure instead")
    parser.add_argument("--worker", metavar="TOOL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.summaries:
        return summaries(out, args.quick)
    root = out / "data"
    if args.worker:
        row = TOOLS[args.worker](root, out / "runs", args.bf16)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        write_row(out, args.worker, {"tool": args.worker, **row, "peak_rss_mib": round(peak, 1)})
        return 0
    started = time.perf_counter()
    counts = build(root, args.quick)
    before = baseline(root)
    peaks = matmul_peaks()
    print(f"fortunes train/val/test: {counts}; perplexity before fine-tuning {before:.2f}; matmul peak "
          f"{peaks['fp32']:.0f} GFLOP/s fp32, {peaks['bf16']:.0f} bf16", flush=True)
    rows, failed = [], []
    parameters = 134_515_008  # SmolLM2-135M
    for tool in args.tools.split(","):
        print(f"== {tool}", flush=True)
        row = run_worker("benchmarks.lm", [tool], out, tool, args.quick, options=["--bf16"] * args.bf16)
        if row is None:
            failed.append(tool)
            continue
        row["tokens_per_second"] = row["train_tokens"] / row["train_seconds"]
        flops = 6 * parameters * row["tokens_per_second"]
        row["fraction_of_fp32_peak"] = flops / (peaks["fp32"] * 1e9)
        row["fraction_of_bf16_peak"] = flops / (peaks["bf16"] * 1e9)
        rows.append(row)
        print(f"   perplexity {row['ppl_after']:.2f}, {row['tokens_per_second']:.0f} tokens/s", flush=True)
    checks = [] if args.quick else targets(rows, before)
    report = write_report(out, "lm", argv or sys.argv[1:], started, rows, failed, quick=args.quick,
                          before=before, peaks=peaks, splits=counts, targets=checks)
    print()
    print_aligned([("tool", "ppl before", "ppl after", "tokens/s", "x fp32 peak", "x bf16 peak", "peak RSS")] +
                  [(r["tool"], f"{before:.2f}", f"{r['ppl_after']:.2f}", f"{r['tokens_per_second']:.0f}",
                    f"{r['fraction_of_fp32_peak']:.3f}", f"{r['fraction_of_bf16_peak']:.3f}",
                    f"{r['peak_rss_mib']:.0f} MiB") for r in rows])
    print_checks(checks)
    return close(report, out)


if __name__ == "__main__":
    sys.exit(main())
