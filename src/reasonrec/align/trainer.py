"""The policy update: GRPO (PPO with a group baseline instead of a critic), written for a small CPU.

One step:
1. rollout — for each of `prompts_per_step` RL prompts, sample `group_size` completions from the
   current policy (temperature/top-p, seeded per step) with the project's CascadeEngine: the
   prompt is prefilled once per group, completions stop at the end of the first sentence;
2. reward — each completion goes through the store's clean-up, the judge reads the cleaned
   sentence + the candidate's text, `AlignmentReward` turns that into LC / IC / format rewards;
3. advantages — A_i = (R_i - mean_group R) / (std_group R + 1e-4) (torch's unbiased std, as TRL);
4. loss — per completion token t, with ratio rho = pi / pi_old, reference = the adapter-free model:
       l_t = -min(rho A, clip(rho, 1 - eps, 1 + eps) A) + beta (exp(ref - logp) - (ref - logp) - 1)
   summed over all completion tokens of the step and divided by their number (TRL's default
   "dapo" normalisation); AdamW on the LoRA weights, gradient-norm clipping. With ppo_epochs = 1
   (default) pi_old = pi (detached), so rho = 1 and the clip never binds, exactly as in TRL's
   GRPOTrainer with num_iterations = 1; ppo_epochs > 1 reuses the rollout with clipping.

Log-probabilities under the policy are computed with the prompt run once and its keys/values
repeated for the G completions (`align.kv`); gradients flow through those keys/values, so this
equals G full forwards at ~(P + G C) / (G (P + C)) of the cost.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from reasonrec.align.kv import continue_hidden, prefix_kv
from reasonrec.align.rewards import compliant, format_check
from reasonrec.llm.base import Prompt
from reasonrec.llm.engine import CascadeEngine, SentenceStop, picker


@dataclass
class RLPrompt:
    """One RL prompt: a (train sample, template task) pair. Holds no label: the generator sees
    only history + candidate; labels live in the reward."""

    sample_id: int
    task: str              # positive | negative (the contrastive template's two prompts)
    prompt: Prompt         # rendered template: history + candidate, forced answer start
    candidate: str         # the candidate's text, for the judge
    ids: list = field(default_factory=list, repr=False)  # token ids (backend.encode), filled lazily


@dataclass
class GRPOSettings:
    group_size: int = 4
    prompts_per_step: int = 8
    max_new_tokens: int = 40
    temperature: float = 0.8
    top_p: float = 0.95
    lr: float = 3e-4
    beta: float = 0.04             # KL to the adapter-free reference; must be > 0
    clip_eps: float = 0.2
    ppo_epochs: int = 1
    scale_rewards: bool = True     # divide by the group's std (GRPO); False = Dr. GRPO
    max_grad_norm: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.beta <= 0:
            raise ValueError("beta must be > 0: the KL term to the adapter-free reference is part of the method")
        if self.group_size < 2:
            raise ValueError("group_size must be >= 2 (the group is the baseline)")


def group_advantages(rewards: np.ndarray, scale: bool = True) -> np.ndarray:
    """rewards (n_groups, G) -> advantages of the same shape."""
    r = torch.as_tensor(rewards, dtype=torch.float64)
    a = r - r.mean(1, keepdim=True)
    if scale:
        a = a / (r.std(1, keepdim=True) + 1e-4)
    return a.numpy()


def token_loss(logp: torch.Tensor, old: torch.Tensor, ref: torch.Tensor, adv: torch.Tensor,
               beta: float, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token GRPO loss, KL (k3 estimator) and whether the clip was active; shapes (G, C)."""
    ratio = torch.exp(logp - old)
    a = adv[:, None]
    pg = -torch.min(ratio * a, torch.clamp(ratio, 1 - eps, 1 + eps) * a)
    kl = torch.exp(ref - logp) - (ref - logp) - 1
    clipped = ((ratio < 1 - eps) & (a < 0)) | ((ratio > 1 + eps) & (a > 0))
    return pg + beta * kl, kl, clipped


class GRPO:
    """policy: a peft model on `backend.model`; reward: callable(prompts, cleaned) -> dict of arrays
    with a "total" entry (see `AlignmentReward`)."""

    def __init__(self, policy, backend, reward, settings: GRPOSettings | None = None):
        self.policy, self.backend, self.reward = policy, backend, reward
        self.cfg = settings or GRPOSettings()
        self.lm = policy.get_base_model()
        self.tokenizer = backend.tokenizer
        self.stop = SentenceStop(self.tokenizer, backend.eos_ids, True)
        self.pad_id = backend.pad_id
        self.params = [p for p in policy.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the policy has no trainable parameters")
        self.opt = torch.optim.AdamW(self.params, lr=self.cfg.lr, weight_decay=0.0)
        self.step_no = 0

    # -- state (resume) ------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"step": self.step_no, "optimizer": self.opt.state_dict(), "settings": asdict(self.cfg)}

    def load_state_dict(self, state: dict) -> None:
        self.step_no = int(state["step"])
        self.opt.load_state_dict(state["optimizer"])

    # -- pieces --------------------------------------------------------------------------------

    def _ids(self, p: RLPrompt) -> list[int]:
        if not p.ids:
            p.ids = self.backend.encode(p.prompt)
        return p.ids

    def rollout(self, prompts: list[RLPrompt], seed: int, temperature: float | None = None,
                group_size: int | None = None):
        """G completions per prompt from the current weights: list (per prompt) of Completion."""
        g = group_size or self.cfg.group_size
        engine = CascadeEngine(self.lm, batch_size=max(g, min(64, g * len(prompts))))  # fresh: no stale KV
        groups = [[self._ids(p)] * g for p in prompts]
        t = self.cfg.temperature if temperature is None else temperature
        return engine.generate(groups, self.cfg.max_new_tokens, self.stop.done, picker(t, self.cfg.top_p, seed))

    def completion_logps(self, prompt_ids: list[int], completions: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """log pi(token) for each completion token (G, C) and the mask; gradients when enabled."""
        kv, last = prefix_kv(self.lm, prompt_ids)
        hidden, mask = continue_hidden(self.lm, kv, len(prompt_ids), completions, self.pad_id)
        g = len(completions)
        h = torch.cat([last[:, None].expand(g, 1, -1), hidden[:, :-1]], 1)
        logits = self.lm.get_output_embeddings()(h).float()
        target = torch.zeros_like(mask)
        for i, c in enumerate(completions):
            target[i, : len(c)] = torch.tensor(c)
        logp = torch.log_softmax(logits, -1).gather(-1, target[..., None])[..., 0]
        return logp * mask, mask.float()

    # -- one step ------------------------------------------------------------------------------

    def step(self, prompts: list[RLPrompt]) -> dict:
        cfg = self.cfg
        times = {}
        t0 = time.perf_counter()
        outs = self.rollout(prompts, seed=cfg.seed * 1_000_003 + self.step_no)
        times["rollout_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        flat_prompts, cleaned = [], []
        for p, group in zip(prompts, outs):
            for c in group:
                flat_prompts.append(p)
                cleaned.append(format_check(p.prompt.prefix, self.stop.text(c.ids), c.finish_reason))
        parts = self.reward(flat_prompts, cleaned)
        g = cfg.group_size
        rewards = np.asarray(parts["total"], float).reshape(len(prompts), g)
        adv = group_advantages(rewards, cfg.scale_rewards)
        times["reward_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        comps = [[list(c.ids) for c in group] for group in outs]
        n_tokens = sum(len(c) for group in comps for c in group)
        refs, olds = [], [None] * len(prompts)
        with torch.no_grad(), self.policy.disable_adapter():
            for p, cs in zip(prompts, comps):
                refs.append(self.completion_logps(self._ids(p), cs)[0])
        times["reference_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        loss_sum, kl_sum, clip_sum, grad_norm = 0.0, 0.0, 0.0, 0.0
        for epoch in range(cfg.ppo_epochs):
            self.opt.zero_grad(set_to_none=True)
            for i, (p, cs) in enumerate(zip(prompts, comps)):
                logp, mask = self.completion_logps(self._ids(p), cs)
                if olds[i] is None:
                    olds[i] = logp.detach()
                loss_tok, kl, clipped = token_loss(logp, olds[i], refs[i], torch.as_tensor(adv[i], dtype=torch.float32),
                                                   cfg.beta, cfg.clip_eps)
                loss = (loss_tok * mask).sum() / n_tokens
                loss.backward()
                if epoch == 0:
                    loss_sum += float(loss.detach())
                    kl_sum += float((kl.detach() * mask).sum())
                    clip_sum += float((clipped * mask).sum())
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm))
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        times["update_s"] = time.perf_counter() - t0
        self.step_no += 1

        stats = {"step": self.step_no, "loss": loss_sum, "kl": kl_sum / max(n_tokens, 1),
                 "clip_frac": clip_sum / max(n_tokens, 1), "grad_norm": grad_norm,
                 "completion_tokens": n_tokens / (len(prompts) * g),
                 "format_ok": float(np.mean([compliant(c) for c in cleaned])),
                 "reward_group_std": float(rewards.std(1, ddof=1).mean()) if g > 1 else 0.0}
        for name, values in parts.items():
            if name in ("z", "p_yes"):
                stats[f"{name}_mean"] = float(np.mean(values))
            else:
                stats[f"reward_{name}"] = float(np.mean(values))
        stats.update({k: round(v, 3) for k, v in times.items()})
        stats["step_s"] = round(sum(times.values()), 3)
        self.last_samples = [(p.sample_id, p.task, c.text, float(r))
                             for p, c, r in zip(flat_prompts, cleaned, np.ravel(parts["total"]))]
        return {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in stats.items()}
