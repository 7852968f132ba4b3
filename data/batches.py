"""Example indices -> micro-batches (sampler) and micro-batches -> tensors (collate)."""
import numpy as np
import torch

from .roles import PAD

IGNORE_INDEX = -100


def pack_rows(lengths, indices, row_len):
    """Split indices, in order, into rows of at most row_len tokens (next-fit, order kept)."""
    rows, row, used = [], [], 0
    for i in indices:
        n = int(lengths[i])
        if n > row_len:
            raise ValueError(f"example {i} has {n} tokens, more than the packed row length "
                             f"{row_len}; build the dataset with max_len <= {row_len}")
        if row and used + n > row_len:
            rows.append(row)
            row, used = [], 0
        row.append(int(i))
        used += n
    if row:
        rows.append(row)
    return rows


class BatchSampler:
    """Deterministic micro-batches of example indices for (seed, epoch), resumable mid-epoch.

    Padded mode: batch_size examples per batch (fewer if max_tokens caps batch_size x longest),
    grouped by length inside windows of group_size batches when group_by_length. Packed mode:
    batch_size rows of max_tokens tokens each, filled in shuffled order (collate re-packs the same
    way). Each rank gets every world_size-th batch; batches are repeated from the start of the
    epoch so that every rank gets the same count. Iterating yields the rest of the current epoch,
    then moves to the next epoch.
    """

    def __init__(self, lengths, batch_size, seed=0, shuffle=True, group_by_length=True, rank=0,
                 world_size=1, packed=False, max_tokens=None, group_size=64, drop_last=False):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if len(self.lengths) == 0:
            raise ValueError("BatchSampler: the dataset is empty")
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"BatchSampler: need batch_size >= 1 and 0 <= rank < world_size, got "
                             f"batch_size={batch_size}, rank={rank}, world_size={world_size}")
        if packed and not max_tokens:
            raise ValueError("BatchSampler: packed=True needs max_tokens (the row length)")
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.group_by_length, self.group_size, self.drop_last = group_by_length, group_size, drop_last
        self.rank, self.world_size, self.packed, self.max_tokens = rank, world_size, packed, max_tokens
        self.epoch, self.position = 0, 0
        self._cache = (None, None)

    def _order(self, rng):
        n = len(self.lengths)
        return rng.permutation(n) if self.shuffle else np.arange(n)

    def _padded_batches(self, order):
        batches, cur, longest = [], [], 0
        for i in order:
            n = int(self.lengths[i])
            fits = len(cur) < self.batch_size and (
                not self.max_tokens or max(longest, n) * (len(cur) + 1) <= self.max_tokens)
            if cur and not fits:
                batches.append(cur)
                cur, longest = [], 0
            cur.append(int(i))
            longest = max(longest, n)
        if cur and not (self.drop_last and len(cur) < self.batch_size and not self.max_tokens):
            batches.append(cur)
        return batches

    def _global_batches(self, epoch):
        rng = np.random.default_rng([self.seed, epoch])
        order = self._order(rng)
        if self.packed:
            rows = pack_rows(self.lengths, order, self.max_tokens)
            return [sum(rows[k:k + self.batch_size], []) for k in range(0, len(rows), self.batch_size)]
        if not self.group_by_length:
            return self._padded_batches(order)
        window = self.batch_size * self.group_size
        batches = []
        for k in range(0, len(order), window):
            chunk = order[k:k + window]
            # Longest first inside a window (stable sort, so ties keep the shuffled order).
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches.extend(self._padded_batches(chunk))
        if self.shuffle:
            batches = [batches[j] for j in rng.permutation(len(batches))]
        return batches

    def epoch_batches(self, epoch=None):
        """This rank's batches for an epoch (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        if self._cache[0] == epoch:
            return self._cache[1]
        batches = self._global_batches(epoch)
        if not batches:
            raise ValueError("BatchSampler: no batch fits (drop_last with fewer examples than "
                             "batch_size?)")
        per_rank = -(-len(batches) // self.world_size)
        batches = [batches[k % len(batches)] for k in range(per_rank * self.world_size)]
        mine = batches[self.rank::self.world_size]
        self._cache = (epoch, mine)
        return mine

    @property
    def batches_per_epoch(self):
        return len(self.epoch_batches())

    def __len__(self):
        return self.batches_per_epoch

    def __iter__(self):
        batches = self.epoch_batches()
        while self.position < len(batches):
            batch = batches[self.position]
            self.position += 1
            yield batch
        self.epoch, self.position = self.epoch + 1, 0

    def set_epoch(self, epoch):
        self.epoch, self.position = int(epoch), 0

    def _config(self):
        return {"seed": self.seed, "num_examples": len(self.lengths), "batch_size": self.batch_size,
                "shuffle": self.shuffle, "group_by_length": self.group_by_length,
                "group_size": self.group_size, "drop_last": self.drop_last, "rank": self.rank,
                "world_size": self.world_size, "packed": self.packed, "max_tokens": self.max_tokens,
                "lengths_sum": int(self.lengths.sum())}

    def state_dict(self):
        """JSON-able position: the next batch to yield is epoch_batches(epoch)[position]."""
        return {"epoch": self.epoch, "position": self.position, **self._config()}

    def load_state_dict(self, state):
        mine = self._config()
        for key, value in mine.items():
            if key in state and state[key] != value:
                raise ValueError(f"BatchSampler.load_state_dict: saved {key}={state[key]!r} but "
                                 f"this sampler has {key}={value!r}; resume with the same data "
                                 "and batch settings")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def collate(dataset, indices, pad_id, packed=False, max_len=None):
    """Tensors for one micro-batch (see contract): padded rows, or packed rows of max_len tokens.

    targets are the next token of the same example (-100 at an example's last token and padding);
    roles are the roles of the target tokens (PAD where there is no target).
    """
    if not len(indices):
        raise ValueError("collate: empty batch")
    if packed:
        if not max_len:
            raise ValueError("collate: packed=True needs max_len (the row length)")
        rows = pack_rows(dataset.lengths, indices, max_len)
        width = max_len
    else:
        rows = [[int(i)] for i in indices]
        width = max(int(dataset.lengths[i]) for i in indices)
        if max_len and width > max_len:
            raise ValueError(f"collate: example of {width} tokens exceeds max_len={max_len}")
    shape = (len(rows), width)
    input_ids = np.full(shape, pad_id, dtype=np.int64)
    targets = np.full(shape, IGNORE_INDEX, dtype=np.int64)
    roles = np.full(shape, PAD, dtype=np.int64)
    positions = np.zeros(shape, dtype=np.int64)
    segments = np.zeros(shape, dtype=np.int32)
    for r, row in enumerate(rows):
        offset = 0
        for s, i in enumerate(row):
            ids, rl = dataset.ids[i], dataset.roles[i]
            n = len(ids)
            input_ids[r, offset:offset + n] = ids
            targets[r, offset:offset + n - 1] = ids[1:]
            roles[r, offset:offset + n - 1] = rl[1:]
            positions[r, offset:offset + n] = np.arange(n)
            segments[r, offset:offset + n] = s + 1
            offset += n
    return {"input_ids": torch.from_numpy(input_ids), "targets": torch.from_numpy(targets),
            "roles": torch.from_numpy(roles), "positions": torch.from_numpy(positions),
            "segment_ids": torch.from_numpy(segments) if packed else None}
