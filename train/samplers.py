"""A grain sampler whose global batches do not depend on the number of processes.

Usual per-host sharding (grain `ShardOptions`) gives each process a fixed block of the
records, shuffled within the block: the global batch of step N then depends on how many
hosts read the data. Here every process walks the *same* shuffled global order (grain's
`IndexSampler`, one epoch after the other) and takes only its own rows of each global batch:

    global position of local index i on process p = (i // b) * B + p * b + i % b
    (B = global batch, b = B / process_count)

So process p reads only the records of its slice of each batch (random access into an
ArrayRecord file or a folder costs the same wherever the record is), every epoch still sees
every record once, and each record's augmentation randomness is grain's `Philox(seed +
global position)`. With one process the mapping is the identity: the single-process order
is exactly `IndexSampler`'s. The result is that a run on 2 hosts x 2 devices sees the same
global batches, with the same crops, as a run on 1 host x 4 devices, which is what lets the
multi-host test compare losses step by step.

`jax.make_array_from_process_local_data` places process p's rows at global rows
`[p * b, (p + 1) * b)` of the mesh's batch axis (devices are ordered by process), matching
the slices above.
"""

from __future__ import annotations

import dataclasses

import grain


class GlobalOrderSampler:
    """Process `process_index`'s rows of each global batch of one shuffled global order.

    Implements grain's `Sampler` protocol (`__getitem__(index) -> RecordMetadata`); `index` is
    this process's running record count, which is what grain's iterator state records.
    """

    def __init__(self, num_records: int, *, global_batch_size: int, seed: int,
                 process_index: int = 0, process_count: int = 1, shuffle: bool = True):
        if global_batch_size % process_count:
            raise ValueError(f"batch size {global_batch_size} is not divisible by {process_count} processes")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        self._global = global_batch_size
        self._local = global_batch_size // process_count
        self._offset = process_index * self._local
        self._order = grain.samplers.IndexSampler(
            num_records=num_records, shard_options=grain.sharding.NoSharding(),
            shuffle=shuffle, num_epochs=None, seed=seed,
        )

    def global_position(self, index: int) -> int:
        batch, row = divmod(index, self._local)
        return batch * self._global + self._offset + row

    def __getitem__(self, index: int):
        if index < 0:
            raise IndexError(f"negative sampler index {index}")
        meta = self._order[self.global_position(index)]
        # The record and its randomness are the global position's; the index stays local.
        return dataclasses.replace(meta, index=index)

    def __repr__(self) -> str:
        return (f"GlobalOrderSampler(global batch {self._global}, rows {self._offset}.."
                f"{self._offset + self._local - 1} of each)")
