import torch

# The models under test are tiny; one thread is faster than two and keeps runs reproducible.
torch.set_num_threads(1)
