"""What each paid request costs, in credits: the API's price list, kept in one place.

Upload 2; training 4 per training image; generation 1 per photo. The fake APIFRAME
charges from these same figures, so a budget tested against it holds for the service.
"""

from __future__ import annotations

from typing import Final

UPLOAD_COST: Final = 2
TRAIN_COST_PER_IMAGE: Final = 4
GENERATE_COST_PER_IMAGE: Final = 1


def generation_cost(number_of_images: int | None) -> int:
    """The credits a generation of `number_of_images` photos costs (None: the default, 1)."""
    return GENERATE_COST_PER_IMAGE * (1 if number_of_images is None else number_of_images)
