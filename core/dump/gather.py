"""How ``wanport dump`` records a multi-process run: every block output is gathered to rank 0 and
put back together as a one-process run holds it.

The rank layout is the mesh's (``wanport.parallel.mesh``): ``rank = cfg_index * sp + sp_rank``
with ``sp = ulysses * ring``. Under sequence parallelism the DiT pads its tokens to a multiple
of ``sp`` and sequence rank ``s`` keeps chunk ``s`` of the padded sequence (token dim 1 of the
block output ``[B, S_local, C]``), so the chunks concatenated in sequence-rank order and cut to
the real token count are the block output of a one-process run. Under CFG parallelism the two
rank groups run the two guidance branches of a step at once; each rank says which branch it is
running (exchanged once per forward), so rank 0 records both branches as a one-process run
does, and a forward that every group runs alike (guidance off at that step) is recorded once.

Everything goes through the default process group with ``all_gather`` (which every
torch.distributed backend implements), so nothing here depends on the device or the collective
library. Rank 0 receives ``world`` shards (``cfg`` full block outputs) per block and forward:
a debugging run pays that communication in its timings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from ..parallel.config import Degrees


@dataclass(frozen=True)
class GatherLayout(Degrees):
    rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def to_json(self) -> Dict[str, Any]:
        return {"world": self.world, "cfg": self.cfg, "ulysses": self.ulysses, "ring": self.ring,
                "recorded": "every block output gathered to rank 0: sequence chunks concatenated in token order "
                            "(padding dropped), both CFG branches kept; latents and video from rank 0"}

    def branches(self, mine: str) -> List[str]:
        """The guidance branch every rank is about to run (a collective: every rank calls it)."""
        out: List[Any] = [None] * self.world
        dist.all_gather_object(out, mine)
        return [str(b) for b in out]

    def reassemble(self, x: torch.Tensor, rank_branches: Sequence[str],
                   tokens: Optional[int]) -> List[Tuple[str, torch.Tensor]]:
        """This rank's block output ``x`` [B, S_local, ...] gathered; on rank 0 the (branch, full
        output [B, tokens, ...]) of each distinct branch, elsewhere []. A collective."""
        parts = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(parts, x.contiguous())
        if not self.is_main:
            return []
        out: List[Tuple[str, torch.Tensor]] = []
        seen = set()
        for c in range(self.cfg):
            ranks = range(c * self.sp, (c + 1) * self.sp)
            names = {rank_branches[r] for r in ranks}
            if len(names) != 1:
                raise RuntimeError("dump: the sequence ranks %s run different branches %s" % (list(ranks), names))
            branch = names.pop()
            if branch in seen:  # guidance off at this step: every CFG group ran the same forward
                continue
            seen.add(branch)
            if self.sp == 1:
                full = parts[c * self.sp]
            else:
                full = torch.cat([parts[r] for r in ranks], dim=1)
                if tokens is not None:
                    full = full[:, :tokens]
            out.append((branch, full))
        return out


def token_count(model: Any, x: torch.Tensor) -> Optional[int]:
    """The real (unpadded) token count of a DiT forward on the latent ``x`` [B, C, F, H, W]:
    the patch grid's size; None when the model does not say its patch size."""
    patch = getattr(getattr(model, "cfg", None), "patch_size", None)
    if patch is None or x.dim() != 2 + len(patch):
        return None
    n = 1
    for size, p in zip(x.shape[2:], patch):
        n *= size // p
    return n


__all__ = ["GatherLayout", "token_count"]
