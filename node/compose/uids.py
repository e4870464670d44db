"""Deterministic UIDs for everything the node emits.

Why deterministic: a study that is sent twice (a modality retry, a PACS re-push, a worker that
crashed after storing but before recording success) must produce byte-for-byte the same
identities, so that the PACS sees the *same* SR and SC again and keeps one copy instead of
showing the radiologist two reports. A random ``generate_uid()`` cannot give that.

Scheme: ``2.25.<integer>`` (PS3.5 B.2, UUID-derived UIDs) where the integer is the first 128
bits of a SHA-256 over a canonical, length-prefixed encoding of the inputs. The inputs are:

* a *kind* (``"sr"``, ``"sr-series"``, ``"sc"``, ``"sc-series"``, ``"gsps"``, ``"gsps-series"``) so
  an SR, an SC and a presentation state derived
  from the same sources never collide;
* the source UIDs — for an SR the **set** of source SOP Instance UIDs (order-independent), so a
  series that gained a late image yields a new SR (which then names its predecessor), while the
  same images sent again yield the same SR;
* the contributing models' names and versions (a new model version is a new result);
* an optional *salt* for a deliberate re-issue (e.g. a re-analysis ordered by a person). Do not
  pass a series generation counter here when the source set did not change: that would make a
  resend produce a second, different SR, which is exactly what this module exists to prevent.

A 128-bit truncation keeps the UID ≤ 44 characters (``2.25.`` + at most 39 digits), well
inside the 64-character limit, with a collision probability that is negligible for any archive.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from node.domain import ModelInfo

UID_ROOT = "2.25."
_SCHEME_VERSION = "hipnode-uid-v1"  # bump only if the derivation itself must change


def _encode(parts: Iterable[str]) -> bytes:
    """Length-prefixed concatenation: ("ab", "c") and ("a", "bc") must hash differently."""
    out = bytearray()
    for part in parts:
        raw = part.encode("utf-8")
        out += len(raw).to_bytes(4, "big") + raw
    return bytes(out)


def derive_uid(kind: str, *parts: str) -> str:
    """``2.25.<int>`` from the SHA-256 of ``kind`` and ``parts`` (order matters here)."""
    if not kind:
        raise ValueError('Argument "kind" must not be empty.')
    digest = hashlib.sha256(_encode((_SCHEME_VERSION, kind, *parts))).digest()
    value = int.from_bytes(digest[:16], "big")
    return f"{UID_ROOT}{value}"


def model_key(models: Sequence[ModelInfo]) -> list[str]:
    """Canonical, order-independent description of the contributing models."""
    return sorted(f"{m.manufacturer}\x1f{m.name}\x1f{m.version}" for m in models)


@dataclass(frozen=True)
class OutputUIDs:
    """Identity of one emitted object: its series and its instance."""

    series_instance_uid: str
    sop_instance_uid: str


def sr_uids(
    source_series_uid: str,
    source_sop_uids: Iterable[str],
    models: Sequence[ModelInfo],
    *,
    salt: str = "",
) -> OutputUIDs:
    """UIDs of the SR for one analysed series.

    The SR *series* depends only on the source series and the models, so an amended SR (late
    images) lands in the same SR series as the report it supersedes; the SR *instance* depends
    on the exact set of source images as well.
    """
    sources = sorted(set(source_sop_uids))
    if not sources:
        raise ValueError('Argument "source_sop_uids" must contain at least one UID.')
    models_part = model_key(models)
    series = derive_uid("sr-series", source_series_uid, *models_part)
    instance = derive_uid("sr", source_series_uid, "\x1e".join(sources), *models_part, salt)
    return OutputUIDs(series_instance_uid=series, sop_instance_uid=instance)


def sc_uids(
    source_series_uid: str,
    source_sop_uid: str,
    models: Sequence[ModelInfo],
    *,
    salt: str = "",
) -> OutputUIDs:
    """UIDs of the Secondary Capture of one source image.

    All overlays of one source series share one SC series, so a viewer shows them next to the
    original series as "AI overlays".
    """
    models_part = model_key(models)
    series = derive_uid("sc-series", source_series_uid, *models_part)
    instance = derive_uid("sc", source_series_uid, source_sop_uid, *models_part, salt)
    return OutputUIDs(series_instance_uid=series, sop_instance_uid=instance)


def gsps_uids(
    source_series_uid: str,
    source_sop_uid: str,
    models: Sequence[ModelInfo],
    *,
    salt: str = "",
) -> OutputUIDs:
    """UIDs of the presentation state of one source image; like the SC's, all of a source
    series share one series ("AI annotations"), and a kind of their own keeps them apart."""
    models_part = model_key(models)
    series = derive_uid("gsps-series", source_series_uid, *models_part)
    instance = derive_uid("gsps", source_series_uid, source_sop_uid, *models_part, salt)
    return OutputUIDs(series_instance_uid=series, sop_instance_uid=instance)
