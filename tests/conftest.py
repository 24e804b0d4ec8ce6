import torch

# Tests use tiny networks, where one thread is as fast as two and several pytest processes
# (or a busy machine) do not oversubscribe the cores.
torch.set_num_threads(1)
