"""Training callbacks."""

import json
import os

import keras


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` whose backups survive a kill.

    Keras writes the backup weights in place, so a process killed (SIGKILL,
    preemption, out of memory) while writing leaves a truncated HDF5 file
    and the restart fails with "Unable to synchronously open file". Here the
    weights and the epoch counter are written to temporary files and then
    renamed over the previous backup (`os.replace` is atomic): a restart
    sees either the previous complete backup or the new one.

    Args:
        backup_dir: folder of the backup (local paths).
        **kwargs: other `BackupAndRestore` arguments (`save_freq`, ...).
    """

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        weights_tmp = os.path.join(self.backup_dir, "partial.weights.h5")
        metadata_tmp = self._training_metadata_path + ".partial"
        self.model.save_weights(weights_tmp, overwrite=True)
        with open(metadata_tmp, "w") as f:
            json.dump({"epoch": self._current_epoch, "batch": self._last_batch_seen}, f)
        os.replace(weights_tmp, self._weights_path)
        os.replace(metadata_tmp, self._training_metadata_path)
