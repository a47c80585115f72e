"""rnnrbm: model and generate polyphonic music with the RNN-RBM.

The package is a library first; ``rnnrbm_cli.cli`` is a thin command line over it. The
functions of :mod:`rnnrbm_cli.api` are importable from here (loaded on first use, so that
``import rnnrbm_cli`` and ``rnnrbm --help`` stay fast):

    prepare, load_data, load_model, train_model, sample_model, generate, evaluate_model,
    report_run, Settings, resolve_settings
"""

__version__ = "0.1.0"

_API = ("prepare", "load_data", "load_model", "train_model", "sample_model", "generate", "evaluate_model", "report_run",
        "Settings", "resolve_settings", "start_training", "resume_training", "tune_model")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from rnnrbm_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'rnnrbm_cli' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
