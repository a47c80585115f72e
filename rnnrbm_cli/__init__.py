"""rnnrbm: model and generate polyphonic music with the RNN-RBM.

The package is a library first; ``rnnrbm_cli.cli`` is a thin command line over it.
"""

__version__ = "0.1.0"
