"""Which provider of a route's split takes a request.

Pure: the randomness is the caller's ``random.Random``, the stickiness a hash.

Rules of the split:

Rule 1, by weight. The providers are laid out in name order on ``[0, total)``,
each over as many points as its weight; a request takes the provider under
one point. A provider of weight 0 covers no point and is never picked.

Rule 2, random. Without a key the point is ``rng.randrange(total)``.

Rule 3, sticky. With a key the point is the first 8 bytes of the key's
BLAKE2b digest, scaled onto ``[0, total)`` (not Python's ``hash()``, which is
salted per process). The same key lands on the same provider for as long as
the weights hold, in every process; weights scaled by a common factor
(90/10 to 180/20) move no key, and a changed weight moves only the keys in
the stretch that changed hands.
"""

from __future__ import annotations

import hashlib
import random
from bisect import bisect_right

from ._policy import Route

__all__ = ["pick"]


def pick(route: Route, rng: random.Random, key: str | None = None) -> str:
    """The provider that takes one request of ``route``.

    Args:
        route: the split.
        rng: the random source for a request without a key (seeded in tests).
        key: the sticky key (an API key id, a source), or None: pick at random.

    Returns:
        A provider name of ``route.split`` whose weight is above 0.
    """
    names, bounds = route._bounds  # made once per Route, for this function
    total = bounds[-1]
    if key is None:
        point = rng.randrange(total)
    else:
        digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        point = (int.from_bytes(digest, "big") * total) >> 64
    return names[bisect_right(bounds, point)]
