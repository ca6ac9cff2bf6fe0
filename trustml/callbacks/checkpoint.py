"""Checkpoints written atomically: a full disk or a kill never leaves a truncated ``best.ckpt``/``last.ckpt``."""

from __future__ import annotations

import os
from pathlib import Path
from weakref import proxy

import pytorch_lightning as pl
from fsspec.implementations.local import LocalFileSystem
from lightning_fabric.utilities.cloud_io import get_filesystem
from pytorch_lightning.callbacks import ModelCheckpoint

from trustml.atomic_files import fsync_directory


class AtomicModelCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` (same options) that writes each checkpoint atomically.

    Lightning writes a local checkpoint by moving a temporary file from the system's temp directory onto
    the final name, which is a copy across filesystems: a disk that fills up during it leaves a truncated
    checkpoint under its final name. Here the checkpoint is written to ``<name>.tmp`` beside its final
    name, fsync-ed and renamed (then the directory is fsync-ed); on any error the ``.tmp`` is removed and
    the previous checkpoint of that name, if any, is left intact. Remote (``s3://``...) paths are written
    by Lightning as usual. The callback's state key is the plain ``ModelCheckpoint``'s, so checkpoints
    written with either class resume with either.
    """

    @property
    def state_key(self) -> str:
        """Same key as ``ModelCheckpoint`` with the same options (resume compatibility)."""
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        """Write ``filepath`` atomically (see the class docstring), then do ModelCheckpoint's bookkeeping."""
        if not isinstance(get_filesystem(filepath), LocalFileSystem):
            super()._save_checkpoint(trainer, filepath)
            return
        final = Path(filepath)
        tmp = final.with_name(final.name + ".tmp")
        try:
            trainer.save_checkpoint(str(tmp), self.save_weights_only)
            if trainer.is_global_zero:
                with open(tmp, "rb+") as handle:
                    os.fsync(handle.fileno())
                os.replace(tmp, final)
                fsync_directory(final.parent)
        except BaseException as exc:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            if isinstance(exc, OSError) and exc.errno is not None:
                # name the checkpoint, not Lightning's temporary file
                raise OSError(exc.errno, exc.strerror or str(exc), str(final)) from exc
            raise
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
