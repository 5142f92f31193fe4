"""Seconds per GRPO step on this CPU: TRL's GRPOTrainer vs reasonrec.align.trainer.GRPO.

Same model (SmolLM2-135M float32 + LoRA, same targets/rank), same prompts (the bench sub-slice's
RL prompts, rendered identically), same group size, completion length, sampling, beta and reward
(the frozen-judge LC + format reward). Only the trainer differs. The judge runs on a separate
copy of the base weights for both, so its cost is the same.

    python benchmarks/expctr/measure_trl_step.py --steps 3 --out benchmarks/expctr/trl_vs_ours.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="artifacts/data/ml-100k-bench")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--targets", default="all-linear")
    ap.add_argument("--out", default="benchmarks/expctr/trl_vs_ours.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from reasonrec.align.judge import YesNoJudge
    from reasonrec.align.loop import AlignConfig, AlignRun, batch_for_step
    from reasonrec.align.policy import LoraSettings, build_policy, load_base
    from reasonrec.align.rewards import AlignmentReward, RewardWeights, TrainLabels, format_check
    from reasonrec.align.trainer import GRPO, GRPOSettings

    run = AlignRun(AlignConfig(dataset=args.dataset, out="/tmp/reasonrec-trl-measure", bench_dir=None),
                   echo=lambda *a: None, progress=False)
    pool = run._pool()
    prompts = [p for s in range(args.steps) for p in batch_for_step(pool, s, args.prompts, seed=99)]
    by_key = {(p.sample_id, p.task): p for p in prompts}
    judge_backend = load_base(threads=args.threads)
    judge = YesNoJudge(judge_backend.model, judge_backend.tokenizer)
    reward = AlignmentReward(judge, RewardWeights(lc=1.0, fmt=0.5), TrainLabels(run.sub.samples))
    settings = GRPOSettings(group_size=args.group, prompts_per_step=args.prompts, max_new_tokens=args.max_new_tokens,
                            lr=2e-4)
    lora = LoraSettings(targets=args.targets)
    results = {}

    # --- ours ------------------------------------------------------------------------------
    backend = load_base(threads=args.threads)
    policy = build_policy(backend.model, lora)
    ours = GRPO(policy, backend, reward, settings)
    times = []
    for s in range(args.steps):
        t0 = time.perf_counter()
        stats = ours.step(prompts[s * args.prompts:(s + 1) * args.prompts])
        times.append(time.perf_counter() - t0)
        print("ours", s, round(times[-1], 1), {k: stats[k] for k in ("rollout_s", "reward_s", "reference_s", "update_s",
                                                                      "completion_tokens")}, flush=True)
    results["ours"] = {"seconds_per_step": times, "median": float(np.median(times))}
    del ours, policy, backend

    # --- TRL ---------------------------------------------------------------------------------
    backend = load_base(threads=args.threads)
    texts = [backend.render(p.prompt) for p in prompts]
    ds = Dataset.from_dict({"prompt": texts, "sample_id": [p.sample_id for p in prompts],
                            "task": [p.task for p in prompts]})

    def trl_reward(prompts, completions, sample_id, task, **kwargs):
        rl = [by_key[(int(s), t)] for s, t in zip(sample_id, task)]
        cleaned = [format_check(p.prompt.prefix, c) for p, c in zip(rl, completions)]
        return [float(x) for x in reward(rl, cleaned)["total"]]

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.t0 = [], None

        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.t0)
            print("trl", len(self.times) - 1, round(self.times[-1], 1), flush=True)

    timer = Timer()
    cfg = GRPOConfig(output_dir="/tmp/reasonrec-trl-measure/trl", use_cpu=True, bf16=False,
                     per_device_train_batch_size=args.prompts * args.group, num_generations=args.group,
                     max_completion_length=args.max_new_tokens, temperature=0.8, top_p=0.95, beta=0.04,
                     learning_rate=2e-4, max_steps=args.steps, logging_steps=1, save_strategy="no",
                     report_to="none", shuffle_dataset=False, seed=0, dataloader_num_workers=0)
    trainer = GRPOTrainer(model=backend.model, reward_funcs=trl_reward, args=cfg, train_dataset=ds,
                          processing_class=backend.tokenizer, peft_config=lora.peft_config(), callbacks=[timer])
    trainer.train()
    results["trl_grpo_trainer"] = {"seconds_per_step": timer.times, "median": float(np.median(timer.times))}
    out = {"settings": vars(args), "results": results,
           "speedup_median": results["trl_grpo_trainer"]["median"] / results["ours"]["median"]}
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
