"""mHC, manifold-constrained hyper-connections (arXiv 2512.24880), one idea a file:

    sinkhorn.py   Sinkhorn-Knopp onto doubly stochastic matrices (reference loop, fast batch-last kernel)
    kernels.py    the fused autograd kernels the mappings use (RMS projection, stream mix)
    mappings.py   H_pre, H_post, H_res of one layer from the n residual streams (static + dynamic terms)
    layer.py      the wrapped transformer layer, and wrapping a HF model's layers in place
"""
