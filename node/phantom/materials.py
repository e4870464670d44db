"""Linear attenuation coefficients (1/mm) at an effective energy of about 50 keV (~75 kVp).

Bone and metal values are *excess* over soft tissue, because every bone and implant sits inside
the soft-tissue envelope and attenuation is accumulated additively. Tags group primitives so
the kVp knob can scale each class differently (photoelectric absorption in bone and metal falls
faster with energy than Compton scatter in water).
"""

from __future__ import annotations

SOFT = 0.0205  # muscle / water
FAT = -0.0025  # excess of fat over the soft-tissue envelope (fat is ~10 % less attenuating)
MUSCLE = 0.0010
AIR = -SOFT  # bowel gas, lungs (excess that cancels the envelope)
LUNG = -0.0150

CORTICAL = 0.052  # excess over soft tissue
CANCELLOUS = 0.011
CANCELLOUS_FROM_CORTICAL = CANCELLOUS - CORTICAL

TITANIUM = 0.45
COCR = 2.5
STEEL = 1.8
CERAMIC = 0.30
CEMENT = 0.030
POLYETHYLENE = -0.002
LEAD = 8.0

# tag prefix → attenuation class for the kVp scaling
CLASS_OF_TAG: dict[str, str] = {
    "soft": "soft",
    "fat": "soft",
    "gas": "soft",
    "lung": "soft",
    "bone": "bone",
    "metal": "metal",
    "cement": "bone",
}


def kvp_scale(kvp: float) -> dict[str, float]:
    """Multipliers per tag class relative to 75 kVp."""
    r = 75.0 / kvp
    return {"soft": r**0.35, "bone": r**1.1, "metal": r**1.6, "cement": r**1.1}
