"""The packaged experiment configs (installed with the package, editable or not).

`configs/NAME.py` at the repository root is the user-facing path of each; the command-line tools and the
notebooks resolve `--config=configs/NAME.py` (or `NAME`) to these files when the current directory has no
such file (dsv3_jax/config_args.py). To change one, copy it and pass the copy's path.
"""
