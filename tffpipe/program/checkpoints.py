"""Checkpoints of the program state, with fallback past unreadable ones.

Each version is a folder `program_state_N`, written whole into a temporary
folder and renamed into place, so a kill mid-save leaves no half-written
version. New versions hold the state's arrays (`state_files.py`, about 60
times faster to write than the SavedModel of `tff.program.FileProgramStateManager`);
versions written by TFF's manager, as earlier runs did, are still read, and
its format is used for a state this one cannot hold. What TFF's manager does
not offer, and this module adds: trying older versions when the newest cannot
be read, and moving unreadable versions aside so that the resumed run can
save those versions again.
"""

import asyncio
import dataclasses
import json
import os
import shutil
from typing import Any

from absl import logging
import numpy as np
import tensorflow_federated as tff

from tffpipe import compat
from tffpipe import config as config_lib
from tffpipe import errors
from tffpipe.program import files
from tffpipe.program import saved_settings
from tffpipe.program import state_files

_PREFIX = saved_settings.PREFIX
_FINGERPRINT_FILE = saved_settings.FINGERPRINT_FILE
UNREADABLE_SUFFIX = ".unreadable"
SUPERSEDED_SUFFIX = ".superseded"
ResumeError = saved_settings.ResumeError
newest_round = saved_settings.newest_round


@dataclasses.dataclass(frozen=True)
class ProgramState:
    """What a checkpoint holds: the learning state after `round_num` rounds."""

    round_num: int
    learning_state: Any


class CheckpointManager:
    """Saves and restores `ProgramState` under `directory`."""

    def __init__(self, directory: str, *, keep: int, fingerprint: dict[str, Any]):
        self._directory = directory
        self._keep = keep
        self._fingerprint_json = config_lib.fingerprint_to_json(fingerprint)
        self._fingerprint = fingerprint
        self._manager = tff.program.FileProgramStateManager(
            directory, prefix=_PREFIX, keep_total=keep, keep_first=False
        )
        self._remove_stale_temporaries()

    def _remove_stale_temporaries(self) -> None:
        # A save killed mid-write leaves `program_state_N_tempXXXX` behind.
        for entry in os.listdir(self._directory):
            if entry.startswith(_PREFIX) and "_temp" in entry:
                shutil.rmtree(os.path.join(self._directory, entry), ignore_errors=True)

    def versions(self) -> list[int]:
        """The rounds of the complete versions, oldest first."""
        return saved_settings.saved_rounds(self._directory)

    def save(self, state: ProgramState) -> None:
        fingerprint_path = os.path.join(self._directory, _FINGERPRINT_FILE)
        if not os.path.exists(fingerprint_path):
            files.write_json_atomic(fingerprint_path, self._fingerprint)
        header = {"round_num": state.round_num, "fingerprint": self._fingerprint_json}
        try:
            leaves = compat.structure_utils.flatten(state.learning_state)
            state_files.write(self._path(state.round_num), leaves, header)
        except state_files.NotArrays as e:
            logging.info("checkpoint of round %d written as a SavedModel: %s", state.round_num, e)
            asyncio.run(self._manager.save({**header, "learning_state": state.learning_state}, state.round_num))
        self._remove_old_versions()

    def _path(self, version: int) -> str:
        return os.path.join(self._directory, f"{_PREFIX}{version}")

    def _remove_old_versions(self) -> None:
        if self._keep <= 0:
            return
        for version in self.versions()[: -self._keep]:
            shutil.rmtree(self._path(version), ignore_errors=True)

    def _load(self, version: int, structure: Any) -> dict[str, Any]:
        """{"round_num", "fingerprint", "learning_state"} of `version`, in either format."""
        path = self._path(version)
        if not state_files.holds_arrays(path):
            template = {"round_num": 0, "fingerprint": "", "learning_state": structure}
            return asyncio.run(self._manager.load(version, template))
        leaves, header = state_files.read(path)
        expected = compat.structure_utils.flatten(structure)
        if len(leaves) != len(expected):
            raise ValueError(
                f"the saved state has {len(leaves)} values, this run's state structure has {len(expected)}"
            )
        for n, (saved, current) in enumerate(zip(leaves, expected, strict=True)):
            if isinstance(saved, np.ndarray) and saved.shape != np.shape(current):
                raise ValueError(
                    f"saved value {n} has shape {saved.shape}, this run's state structure has {np.shape(current)}"
                )
        return {**header, "learning_state": compat.structure_utils.unflatten_as(structure, leaves)}

    def restore(self, structure: Any, before: int | None = None) -> ProgramState | None:
        """The newest readable checkpoint, or None when there is none at all.

        Args:
          structure: the learning state structure of the current process.
          before: only checkpoints of earlier rounds count; later ones are
            moved aside (`program_state_N.superseded`) so that the resumed
            run saves those rounds again.

        Raises:
          ResumeError: checkpoints exist but none can be read, or the readable
            one was written under different settings.
        """
        versions = self.versions()
        if before is not None:
            for version in [v for v in versions if v >= before]:
                self._move_aside(version, f"its records of round {before} are damaged", SUPERSEDED_SUFFIX)
            versions = [v for v in versions if v < before]
        fingerprint_path = os.path.join(self._directory, _FINGERPRINT_FILE)
        if versions and os.path.exists(fingerprint_path):
            # Checked before loading: settings that change the state's
            # structure would otherwise surface as unreadable checkpoints.
            # Each checkpoint holds the fingerprint too, so an unreadable copy
            # here is only rewritten.
            try:
                with open(fingerprint_path, encoding="utf-8") as f:
                    saved = json.load(f)
            except (OSError, ValueError) as e:
                logging.warning("%s is unreadable (%s); rewriting it from the checkpoint", fingerprint_path, e)
                os.remove(fingerprint_path)
            else:
                self._check_fingerprint(saved, versions[-1])
        failures = []
        for version in reversed(versions):
            try:
                value = self._load(version, structure)
            except Exception as e:
                # Any failure to read a version (truncated files, corrupt
                # protobufs, a different state structure) is reported and
                # the previous version is tried.
                reason = errors.first_line(e)
                logging.warning("checkpoint of round %d is unreadable: %s", version, reason)
                failures.append((version, reason))
                continue
            self._check_fingerprint(value["fingerprint"], version)
            if not os.path.exists(fingerprint_path):
                files.write_json_atomic(fingerprint_path, self._fingerprint)
            for bad_version, reason in failures:
                self._move_aside(bad_version, reason)
            return ProgramState(int(value["round_num"]), value["learning_state"])
        if failures:
            version, reason = failures[0]
            hint = (
                "; if settings that shape the saved state changed, use the original ones"
                if "structure" in reason
                else ""
            )
            raise ResumeError(
                f"no readable checkpoint in {self._directory} (newest, round {version}: "
                f"{reason}){hint}; delete the folder to start from scratch"
            )
        return None

    def _check_fingerprint(self, saved: Any, version: int) -> None:
        saved_settings.check_differences(saved, self._fingerprint, version, self._directory)

    def _move_aside(self, version: int, reason: str, suffix: str = UNREADABLE_SUFFIX) -> None:
        path = self._path(version)
        target = path + suffix
        if os.path.exists(target):
            shutil.rmtree(target)
        os.rename(path, target)
        logging.warning("moved the checkpoint of round %d to %s (%s)", version, target, reason)
