"""Where a study lives: an Optuna RDB storage, the SQLite file in the study's folder by
default, or a database URL (PostgreSQL) that workers on many machines share."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

from rnnrbm_cli.errors import RnnrbmError, RnnrbmUsageError

__all__ = ["storage_url", "display_url", "open_storage", "first_line", "GRACE_INTERVALS"]

# A worker whose trial has sent no heartbeat for this many intervals is taken for dead. Long
# enough for the longest compiled kernel call, during which the heartbeat thread cannot run.
GRACE_INTERVALS = 6

def storage_url(storage: str | None, study_dir: Path) -> str:
    """The SQLAlchemy URL of a study's storage: the SQLite file study_dir/study.db by
    default; ``postgresql://`` (and ``postgres://``) become ``postgresql+psycopg://``, the
    scheme SQLAlchemy needs for psycopg 3."""
    if storage is None:
        return f"sqlite:///{(Path(study_dir) / 'study.db').resolve()}"
    for scheme in ("postgresql://", "postgres://"):
        if storage.startswith(scheme):
            return "postgresql+psycopg://" + storage[len(scheme):]
    return storage


def display_url(url: str) -> str:
    """The URL without its password, for messages and JSON."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 (not a URL at all: shown as given, it holds no password we can find)
        return url


def open_storage(url: str, heartbeat: int = 10, connect_timeout: int = 10):
    """An ``optuna.storages.RDBStorage`` with heartbeats every ``heartbeat`` seconds (a trial
    silent for ``GRACE_INTERVALS`` of them is failed by the next worker that looks).

    Errors are one sentence: a URL that is not one is a usage error (exit 2), a database
    that cannot be reached a runtime failure (exit 1) after at most ``connect_timeout`` s.
    """
    import optuna
    import sqlalchemy.exc

    shown = display_url(url)
    if url.startswith("sqlite:"):
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}}
        path = url.split(":///", 1)[-1]
        if path and not path.startswith(":memory:"):
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise RnnrbmError(f"cannot create the folder of {path}: {e.strerror or e}.") from None
    elif url.startswith("postgresql"):
        engine_kwargs = {"connect_args": {"connect_timeout": connect_timeout}, "pool_pre_ping": True}
    else:
        engine_kwargs = {}
    last: Exception | None = None
    # Workers started together on a fresh database race to create its tables: the losers retry.
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat,
                    grace_period=GRACE_INTERVALS * heartbeat,
                )
        except ImportError:
            raise RnnrbmUsageError(f"the database driver for {shown} is not installed; use sqlite or postgresql.") from None
        except sqlalchemy.exc.ArgumentError as e:
            raise RnnrbmUsageError(f"--storage {shown} is not a database URL ({first_line(e)}); "
                                   "use e.g. postgresql://USER@HOST/DB.") from None
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as e:
            raise RnnrbmError(f"cannot reach the study storage {shown}: {first_line(e)}.") from None
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
            last = e
            time.sleep(0.5 + attempt)
    raise RnnrbmError(f"cannot open the study storage {shown}: {first_line(last)}.")


def first_line(e: BaseException | None) -> str:
    orig = getattr(e, "orig", None) or e
    text = str(orig).strip().splitlines()
    return (text[0] if text else type(orig).__name__).rstrip(".")
