"""One torch thread in the test process: results are reproducible across machines
(the determinism tests compare exact accuracies) and a 2-core CI machine is not
oversubscribed by the worker processes some tests start."""
import torch

torch.set_num_threads(1)
