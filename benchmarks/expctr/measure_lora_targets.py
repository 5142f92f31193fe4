"""Which LoRA targets: all linear layers or the attention projections only?

One fixed GRPO batch (rollouts of the adapter-free model on `--prompts` train prompts of the bench
sub-slice, LC + format rewards from the judge) is optimised for `--iters` updates per target set,
each from a fresh adapter, same learning rate. After each update we record, on that batch and on
a held-out batch of other prompts (never trained on), the policy-gradient surrogate gain
  sum_i A_i * mean_t (log pi - log pi_0)
(how far probability moved toward the better-rewarded completions; on the held-out batch: whether
that generalises), the KL to the reference, and the wall time of the update. Both target sets
live on the same weights as two peft adapters and run interleaved, so CPU contention from other
jobs hits both alike.

    python benchmarks/expctr/measure_lora_targets.py --out benchmarks/expctr/lora_targets.json
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
    ap.add_argument("--heldout", type=int, default=4, help="prompts of a second batch, never trained on")
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--iters", type=int, default=4)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/expctr/lora_targets.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from reasonrec.align.judge import YesNoJudge
    from reasonrec.align.loop import AlignConfig, AlignRun, batch_for_step
    from reasonrec.align.policy import LoraSettings, build_policy, load_base
    from reasonrec.align.rewards import AlignmentReward, RewardWeights, TrainLabels, format_check
    from reasonrec.align.trainer import GRPO, GRPOSettings, group_advantages, token_loss

    run = AlignRun(AlignConfig(dataset=args.dataset, out="/tmp/reasonrec-lora-measure", bench_dir=None),
                   echo=lambda *a: None, progress=False)
    prompts = batch_for_step(run._pool(), 0, args.prompts, seed=12345)
    backend = load_base(threads=args.threads)
    settings = GRPOSettings(group_size=args.group, prompts_per_step=args.prompts, lr=args.lr)
    policies = {}
    for targets in ("all-linear", "attention"):
        if policies:  # second adapter on the same weights, so both see identical base weights
            policy = policies["all-linear"]
            policy.add_adapter(targets, LoraSettings(r=args.r, alpha=2 * args.r, targets=targets).peft_config())
        else:
            torch.manual_seed(0)
            policy = build_policy(backend.model, LoraSettings(r=args.r, alpha=2 * args.r, targets=targets))
        policies[targets] = policy
    policy = policies["all-linear"]

    # one batch of rollouts from the adapter-free model, rewards from the judge
    judge = YesNoJudge(policy.get_base_model(), backend.tokenizer, context=policy.disable_adapter)
    reward = AlignmentReward(judge, RewardWeights(lc=1.0, fmt=0.5), TrainLabels(run.sub.samples))
    g = GRPO(policy, backend, reward, settings)
    def batch(ps, seed):
        with policy.disable_adapter():
            outs = g.rollout(ps, seed=seed)
        flat, cleaned = [], []
        for p, group in zip(ps, outs):
            for c in group:
                flat.append(p)
                cleaned.append(format_check(p.prompt.prefix, g.stop.text(c.ids), c.finish_reason))
        parts = reward(flat, cleaned)
        adv = torch.as_tensor(group_advantages(np.reshape(parts["total"], (len(ps), args.group))), dtype=torch.float32)
        comps = [[list(c.ids) for c in group] for group in outs]
        with torch.no_grad(), policy.disable_adapter():
            refs = [g.completion_logps(g._ids(p), cs)[0] for p, cs in zip(ps, comps)]
        return {"prompts": ps, "adv": adv, "comps": comps, "refs": refs, "reward": float(np.mean(parts["total"])),
                "tokens": sum(len(c) for cs in comps for c in cs)}

    t0 = time.perf_counter()
    train_b = batch(prompts, 7)
    rollout_s = time.perf_counter() - t0
    held_b = batch(batch_for_step(run._pool(), 1, args.heldout, seed=12345), 8)
    n_tok = train_b["tokens"]

    def measure(b):
        """surrogate gain sum_i A_i mean_t (log pi - log pi_0) and KL per token, no gradients."""
        gain, kl_sum = 0.0, 0.0
        with torch.no_grad():
            for p, cs, a, ref in zip(b["prompts"], b["comps"], b["adv"], b["refs"]):
                logp, mask = g.completion_logps(g._ids(p), cs)
                gain += float((a * (((logp - ref) * mask).sum(1) / mask.sum(1))).sum())
                kl_sum += float(((torch.exp(ref - logp) - (ref - logp) - 1) * mask).sum())
        return round(gain, 5), round(kl_sum / b["tokens"], 6)

    def lora_params(targets):
        name = "default" if targets == "all-linear" else targets
        return [p for n, p in policy.named_parameters() if "lora_" in n and f".{name}." in n]

    results = {t: {"trainable_params": int(sum(p.numel() for p in lora_params(t))), "iters": []}
               for t in ("all-linear", "attention")}
    opts = {t: torch.optim.AdamW(lora_params(t), lr=args.lr, weight_decay=0.0) for t in results}
    prompts, comps, adv, refs = train_b["prompts"], train_b["comps"], train_b["adv"], train_b["refs"]
    olds = refs  # the adapter starts at B = 0: pi_old = the reference for the first update
    for it in range(args.iters + 1):
        for targets in ("all-linear", "attention"):
            policy.set_adapter("default" if targets == "all-linear" else targets)
            params = lora_params(targets)
            for p in params:
                p.requires_grad_(True)
            opt = opts[targets]
            row = {"iter": it}
            if it:
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                for i, (p, cs) in enumerate(zip(prompts, comps)):
                    logp, mask = g.completion_logps(g._ids(p), cs)
                    loss_tok, _, _ = token_loss(logp, olds[i], refs[i], adv[i], settings.beta, settings.clip_eps)
                    ((loss_tok * mask).sum() / n_tok).backward()
                torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
                opt.step()
                row["update_seconds"] = round(time.perf_counter() - t0, 2)
            row["train_gain"], row["train_kl"] = measure(train_b)
            row["heldout_gain"], row["heldout_kl"] = measure(held_b)
            results[targets]["iters"].append(row)
            print(targets, row, flush=True)
    for targets in results:
        its = results[targets]["iters"]
        last = its[-1]
        results[targets].update({
            "update_seconds_min": min(x["update_seconds"] for x in its[1:]),
            "update_seconds_median": float(np.median([x["update_seconds"] for x in its[1:]])),
            "final_train_gain": last["train_gain"], "final_train_kl": last["train_kl"],
            "final_heldout_gain": last["heldout_gain"], "final_heldout_kl": last["heldout_kl"],
            "train_gain_per_kl": round(last["train_gain"] / max(last["train_kl"], 1e-9), 2)})
    out = {"settings": vars(args), "rollout_seconds": round(rollout_s, 1), "completion_tokens": n_tok,
           "reward_mean_train_batch": train_b["reward"], "reward_mean_heldout_batch": held_b["reward"],
           "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "iters"} for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
