"""RNA velocity in the model's latent space, and the loss that aligns predicted shifts with it:

    pipeline.py   counts -> velocity -> transition graph -> latent velocity v_z and confidence (AnnData keys)
    fast.py       the vectorised engine behind the pipeline (numba), checked against scvelo's functions
    loss.py       the velocity alignment and regularisation losses on delta_z = z_pred - z_control
"""
