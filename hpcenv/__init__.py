"""hpcenv: conda environments as first-class citizens of Slurm HPC clusters.

The command line (``hpcenv``) is a thin layer over this library; every command has a
function here that a Python user can call directly.  Heavy dependencies (py-rattler,
fabric, jinja2) are imported lazily by the modules that need them.
"""

__version__ = "0.1.0"
