"""Training of PaSS look-ahead vectors: data pipeline, loss and loop. Installed as `pass_jax.train`."""
if __name__ != "pass_jax.train":  # e.g. `import train` from the checkout's root: a second copy of every module
    raise ImportError(f"import pass_jax.train, not {__name__} (train/ is installed as pass_jax.train)")
