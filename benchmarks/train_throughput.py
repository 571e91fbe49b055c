"""Causal student training: our SFT loop vs TRL's SFTTrainer, and the memory of one token-KD step.

    python benchmarks/train_throughput.py [--quick] [--data DIR] [--work DIR] [--device cpu|cuda] [--precision ...]

Side by side in one run, on a small Llama built here (byte-level BPE trained on the rows,
vocab ~8k, hidden 256, 4 layers) and the 1,000 Alpaca rows of ../shared/data/alpaca:
- throughput: `stillhouse train` (objective sft) and TRL's SFTTrainer, in alternating rounds (prompt-completion
  rows, loss on the completion, as ours) with the same rows, chat template, batch, maximum
  length, learning rate, threads and number of steps. Tokens/s = steps x batch x mean
  example length / the wall time of the steps (model loading and data preparation excluded
  on both sides).
- memory: the peak RSS of a fresh process that runs one optimizer step at vocab 32,000,
  once for SFT and once for token KD on k=20 stored top-k logprobs (same rows, batch, length).

Ends with one line:
RESULT sft_tokens_per_s=... trl_tokens_per_s=... ratio_vs_trl=... kd_step_mb=... sft_step_mb=... kd_vs_sft_memory=...
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BATCH, MAX_LENGTH, LR, TOP_K = 8, 256, 1e-4, 20
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def load_rows(data: Path) -> list[dict]:
    path = data / "alpaca" / "alpaca_plus_validation_unseen_1000_alpaca.json"
    if not path.is_file():
        raise SystemExit(f"{path} not found (pass --data DIR, the folder that holds alpaca/)")
    return json.loads(path.read_text())


def build_model(directory: Path, rows: list[dict], vocab_size: int, model_vocab: int) -> Path:
    """A random Llama (hidden 256, 4 layers) with a BPE tokenizer trained on the rows."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tokenizer.train_from_iterator([f"{r['instruction']} {r['input']} {r['output']}" for r in rows], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", padding_side="right")  # fmt: skip
    fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=max(model_vocab, len(fast)), hidden_size=256, intermediate_size=688, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024, bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory


def publish(store_root: Path, rows: list[dict], model_dir: Path, with_top_k: bool) -> None:
    """The rows as a dataset version; with_top_k adds a teacher sample with k=20 synthetic top-k logprobs."""
    import numpy as np
    import polars as pl
    from transformers import AutoTokenizer

    from curation.store import DatasetStore
    from factory.schema import record_id
    from factory.teachers.tokenizers import tokenizer_hash

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    rng = np.random.default_rng(0)
    vocab = model_vocab_size(model_dir)
    records, seen = [], set()
    for row in rows:
        rid = record_id(row["instruction"] + "\n" + row["input"])
        if rid in seen:
            continue
        seen.add(rid)
        record = {"id": rid, "instruction": row["instruction"], "input": row["input"], "origin": "seed",
                  "response": row["output"]}  # fmt: skip
        if with_top_k:
            tokens = tokenizer(row["output"], add_special_tokens=False)["input_ids"][:MAX_LENGTH] or [0]
            top_ids = rng.integers(0, vocab, size=(len(tokens), TOP_K), dtype=np.int64)
            top_ids[:, 0] = tokens
            logprobs = np.sort(np.log(rng.dirichlet(np.ones(TOP_K + 1), size=len(tokens))[:, :TOP_K]), axis=1)[:, ::-1]
            record["samples"] = [{"text": row["output"], "finish_reason": "stop", "token_ids": tokens,
                                  "logprobs": logprobs[:, 0].tolist(), "top_ids": top_ids.tolist(),
                                  "top_logprobs": logprobs.tolist()}]  # fmt: skip
            record["teacher"] = {"backend": "transformers", "model": "synthetic", "params": "{}",
                                 "tokenizer": "bench", "tokenizer_hash": tokenizer_hash(tokenizer)}  # fmt: skip
        records.append(record)
    DatasetStore(store_root).publish("bench", pl.DataFrame(records))


def model_vocab_size(model_dir: Path) -> int:
    return json.loads((model_dir / "config.json").read_text())["vocab_size"]


def run_ours(store_root: Path, model_dir: Path, out: Path, steps: int, threads: int, device: str,
             precision: str) -> tuple[float, float]:  # fmt: skip
    from transformers import AutoTokenizer

    from curation.store import DatasetStore
    from trainer.causal import build_table
    from trainer.config import CausalLMStudent, TrainConfig
    from trainer.training import PROVENANCE_FILE, train

    version = DatasetStore(store_root).resolve("bench")
    rows = version.manifest["rows"]["kept"]
    config = TrainConfig(dataset="bench@v1", store_root=store_root, objective="sft", output_dir=out, lr=LR,
                         student=CausalLMStudent(path=str(model_dir), max_length=MAX_LENGTH), batch_size=BATCH,
                         epochs=steps * BATCH / rows, threads=threads, device=device, precision=precision)  # fmt: skip
    result = train(config)
    assert result.steps == steps, result.steps
    seconds = json.loads((result.model_dir / PROVENANCE_FILE).read_text())["train_seconds"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    table, _ = build_table(config, version, tokenizer, config.student)
    return steps * BATCH * float(table.lengths.mean()) / seconds, seconds


def run_trl(store_root: Path, model_dir: Path, out: Path, steps: int, threads: int, device: str,
            precision: str) -> tuple[float, float]:  # fmt: skip
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from curation.store import DatasetStore
    from trainer.export import user_content

    torch.set_num_threads(threads)
    frame = DatasetStore(store_root).resolve("bench").read()
    dataset = Dataset.from_list(
        [
            {"prompt": [{"role": "user", "content": user_content(i, x)}],
             "completion": [{"role": "assistant", "content": r}]}
            for i, x, r in zip(frame["instruction"], frame["input"], frame["response"])
        ]
    )  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    args = SFTConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=BATCH, learning_rate=LR,
                     lr_scheduler_type="linear", warmup_steps=0, max_length=MAX_LENGTH, packing=False,
                     report_to=[], save_strategy="no", logging_steps=10_000, dataloader_num_workers=0,
                     use_cpu=device == "cpu", bf16=precision == "bf16", fp16=precision == "fp16",
                     max_grad_norm=1.0, weight_decay=0.0, seed=0)  # fmt: skip
    trainer = SFTTrainer(model=str(model_dir), args=args, train_dataset=dataset, processing_class=tokenizer)
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    return steps * BATCH * sum(lengths) / len(lengths) / seconds, seconds


def memory_step(objective: str, store_root: Path, model_dir: Path, out: Path, threads: int) -> None:
    """Child process: one optimizer step, then print the peak RSS in MB."""
    from curation.store import DatasetStore
    from trainer.config import CausalLMStudent, TrainConfig
    from trainer.training import train

    rows = len(DatasetStore(store_root).resolve("bench").read(columns=["id"]))
    config = TrainConfig(dataset="bench@v1", store_root=store_root, objective=objective, output_dir=out, lr=LR,
                         student=CausalLMStudent(path=str(model_dir), max_length=MAX_LENGTH), batch_size=BATCH,
                         epochs=BATCH / rows, threads=threads)  # fmt: skip
    result = train(config)
    assert result.steps == 1
    print(f"PEAK_MB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}")


def peak_mb(objective: str, store_root: Path, model_dir: Path, out: Path, threads: int) -> float:
    command = [sys.executable, __file__, "--memory-step", objective, "--store", str(store_root),
               "--model", str(model_dir), "--out", str(out), "--threads", str(threads)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1200)
    if done.returncode != 0:
        raise SystemExit(f"memory step {objective} failed:\n{done.stderr[-3000:]}")
    return float(next(line for line in done.stdout.splitlines() if line.startswith("PEAK_MB")).split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 steps instead of one epoch")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="shared data root")
    parser.add_argument("--work", type=Path, default=None, help="scratch directory [default: a temp dir]")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--memory-step", choices=["sft", "token_kd"], help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.memory_step:
        memory_step(args.memory_step, args.store, args.model, args.out, args.threads)
        return

    rows = load_rows(args.data)
    work = Path(args.work or tempfile.mkdtemp(prefix="train_throughput-"))
    small = build_model(work / "llama-8k", rows, vocab_size=8000, model_vocab=0)
    big = build_model(work / "llama-32k", rows, vocab_size=8000, model_vocab=32_000)
    publish(work / "store-sft", rows, small, with_top_k=False)
    publish(work / "store-kd", rows, big, with_top_k=True)
    from curation.store import DatasetStore

    count = len(DatasetStore(work / "store-sft").resolve("bench").read(columns=["id"]))
    steps = 20 if args.quick else count // BATCH // 4 * 4
    print(f"{count} rows, batch {BATCH}, max length {MAX_LENGTH}, {steps} steps, {args.threads} threads, "
          f"{args.device} {args.precision}", flush=True)  # fmt: skip

    sft_mb = peak_mb("sft", work / "store-kd", big, work / "mem-sft", args.threads)
    kd_mb = peak_mb("token_kd", work / "store-kd", big, work / "mem-kd", args.threads)
    print(f"one step at vocab 32,000: SFT {sft_mb:,.0f} MB peak RSS, token KD (k={TOP_K}) {kd_mb:,.0f} MB")

    # rounds alternate TRL and ours, so a change in the machine's load hits both alike
    rounds = 2 if args.quick else 4
    timed = {"ours": [0.0, 0.0], "trl": [0.0, 0.0]}  # tokens, seconds
    for r in range(rounds):
        for name, run in [("trl", run_trl), ("ours", run_ours)][:: 1 if r % 2 == 0 else -1]:
            tps, seconds = run(work / "store-sft", small, work / f"{name}-{r}", steps // rounds, args.threads,
                               args.device, args.precision)  # fmt: skip
            timed[name][0] += tps * seconds
            timed[name][1] += seconds
            print(f"round {r + 1}/{rounds} {name}: {tps:,.0f} tokens/s ({seconds:.1f} s)", flush=True)
        so_far = (timed[n][0] / timed[n][1] for n in ("ours", "trl"))
        print("after round {}: ours {:,.0f} tokens/s, TRL {:,.0f} tokens/s".format(r + 1, *so_far), flush=True)
    ours_tps, trl_tps = (timed[n][0] / timed[n][1] for n in ("ours", "trl"))
    print(f"ours: {ours_tps:,.0f} tokens/s   TRL SFTTrainer: {trl_tps:,.0f} tokens/s   ratio {ours_tps / trl_tps:.3f}")

    print(
        f"RESULT sft_tokens_per_s={ours_tps:.0f} trl_tokens_per_s={trl_tps:.0f} ratio_vs_trl={ours_tps / trl_tps:.3f} "
        f"kd_step_mb={kd_mb:.0f} sft_step_mb={sft_mb:.0f} kd_vs_sft_memory={kd_mb / sft_mb:.3f}"
    )


if __name__ == "__main__":
    main()
