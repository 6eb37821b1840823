"""The tests' tiny search spaces (also bench/oneshot.py --quick's): two blocks, every
choice of the default space (and a multiplier that changes the next block's input width);
digits at 8 px train their supernet in seconds."""

TINY = """\
stem_channels: 8
head_channels: 32
num_classes: 10
dropout: 0.1
drop_connect: 0.1
resolution: 8
choices:
  conv_op: [mbconv, dsconv, conv]
  kernel: [3, 5]
  expand_ratio: [1, 3, 6]
  se_ratio: [0, 0.25]
  skip: [identity, none]
  filter_multiplier: [0.5, 1.0]
  layers_delta: [-1, 0, 1]
blocks:
  - {repeats: 1, kernel: 3, stride: 1, expand_ratio: 1, out_channels: 8, se_ratio: 0.25}
  - {repeats: 2, kernel: 3, stride: 2, expand_ratio: 6, out_channels: 16, se_ratio: 0.25}
"""

# TINY reduced as the one-shot sub-space reduces the default space (one op, identity skips)
TINY_ONESHOT = (TINY.replace("conv_op: [mbconv, dsconv, conv]", "conv_op: [mbconv]")
                .replace("skip: [identity, none]", "skip: [identity]"))
assert TINY_ONESHOT.count("[mbconv]") == 1 and TINY_ONESHOT.count("skip: [identity]") == 1
