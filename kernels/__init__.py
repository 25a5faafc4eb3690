"""Fused Triton kernels for HST's hot paths, installed as ``hst_fast.kernels``.

One op per module (``layer_norm``, ``side_attention``, ``side_ffn``, ``fg_injection``), each
with its Triton kernels, launchers, one ``torch.autograd.Function`` and the public op; the
pure-PyTorch references live in ``reference``. Importing this package does not import Triton;
importing an op module does (set ``TRITON_INTERPRET=1`` first to run kernels on CPU).
"""
