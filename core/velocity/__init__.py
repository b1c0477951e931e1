"""RNA velocity in the model's latent space, and the loss that aligns predicted shifts with it:

    pipeline.py   counts -> velocity -> transition graph -> latent velocity v_z and confidence (AnnData keys)
    preprocess.py scvelo's and scanpy's preprocessing on plain arrays: normalise, PCA, moments
    neighbours.py the exact kNN graph without comparing every pair of cells
    fast.py       the vectorised engine behind the pipeline (numba), checked against scvelo's functions
    columns.py    gene columns gathered into genes-by-cells blocks; threads.py: pieces side by side on threads
    loss.py       the velocity alignment and regularisation losses on delta_z = z_pred - z_control
"""
