"""ExpCTR: the explanation generator trained inside the CTR loop with RL (no human explanations).

Only the paper's abstract is public (seed 000/001); the formulas below are this project's
faithful reading of it. Full write-up, measurements and results: docs/expctr.md.

Generator. The embedded SmolLM2-135M-Instruct (dequantized float32 copy of the GGUF; quantized
weights are refused) + a LoRA adapter (peft) on the attention projections q/k/v/o, r = 16 —
chosen by measurement over all-linear (benchmarks/expctr/lora_targets.json). Its prompts are the
domain template's contrastive pair (why the consumer did / did not watch the candidate, given the
history): the label is never in a prompt.

Rewards (`rewards.py`), for one generated explanation e of a train-split pair with label y and
CTR probability q; z = the frozen judge's calibrated log-odds of "Yes" after reading only e and
the candidate's text, p = sigmoid(z):
    LC(e)  = log P_judge(y | e) = y log p + (1 - y) log(1 - p)           (user-intention alignment)
    IC(e)  = -KL(Bern(q) || Bern(p))      (or -(p - q)^2)               (consistency with the CTR model)
    FMT(e) = 0 if e is one clean sentence in the template's format, else -1
    R      = w_lc LC + w_ic IC + w_fmt FMT                              (weights configurable)
Judge (`judge.py`): the same base model with the adapter disabled (no extra training, no second
copy), a fixed few-shot Yes/No prompt; a per-task intercept calibrates it to the train label
rate. A TF-IDF + logistic-regression judge is offered as an alternative.

Policy update (`trainer.py`): our own GRPO — PPO's clipped objective with a group-mean baseline
(G completions per prompt) instead of a critic, and a k3 KL penalty to the adapter-free
reference (beta > 0), the loss TRL's GRPOTrainer computes (loss_type "dapo"). Not TRL itself:
on this CPU, TRL's trainer took 4x longer per step (benchmarks/expctr/trl_vs_ours.json) because
it re-runs the shared prompt for every completion and cannot stop at the first sentence; ours
samples with the project's CascadeEngine and computes log-probs with the prompt's keys/values
shared by the group (tested equal to full forwards, gradients included).

Loop (`loop.py`, `reasonrec align`): per round, (1) an ID-based zoo CTR model, (2) GRPO with LC,
(3) GRPO with IC + LC against that CTR model; the aligned adapter (merged) then writes
explanations into the store under a model id carrying the adapter's sha256, and ExpCTR-Aug
feeds them (encoded) back to the CTR model for the next round. Resumable; checkpoints per step.
Evaluation (`evaluate.py`): LC (judge AUC of the true label), IC (agreement with the CTR model),
distinct-2, unique-sentence ratio, format compliance, length — aligned vs zero-shot.
"""

from reasonrec.align.loop import AlignConfig, AlignRun, run_align
from reasonrec.align.policy import LoraSettings
from reasonrec.align.rewards import RewardWeights, ic_reward, lc_reward
from reasonrec.align.trainer import GRPO, GRPOSettings

__all__ = ["AlignConfig", "AlignRun", "GRPO", "GRPOSettings", "LoraSettings", "RewardWeights", "ic_reward",
           "lc_reward", "run_align"]
