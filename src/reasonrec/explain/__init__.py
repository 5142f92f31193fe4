"""Explanations: prompts, generation, clean-up and the store."""

# Share of samples whose texts may be missing (failed clean-up, which greedy decoding repeats, or not
# generated) before a reader refuses the slice; the missing texts are read as empty.
MAX_MISSING = 0.01
