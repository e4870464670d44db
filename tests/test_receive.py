"""Receiver against real peers on 127.0.0.1: DCMTK echoscu/storescu and a pynetdicom SCU.

Every test starts its own in-process receiver on a free port with a temporary SQLite
registry and storage root, and checks what reached disk and the registry, not just statuses.
"""

from __future__ import annotations

import logging
import subprocess
import time
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.pixels.utils import pixel_array
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian
from sqlalchemy import func, select

from node.receive.handlers import StoreStatus
from node.registry.models import Event, Instance, Series
from tests.conftest import tool
from tests.dicom_factory import dataset_bytes, make_image, split_part10, uid_for, write
from tests.test_receive_support import RunningReceiver, running_receiver, scu_ae, send_raw


def _pydicom_data_dir() -> Path:
    import data_store  # type: ignore[import-untyped,unused-ignore]  # the ``pydicom-data`` distribution

    return Path(data_store.__file__).parent / "data"


# storescu option that proposes exactly one transfer syntax family, per transfer syntax.
STORESCU_PROPOSE = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
}


def _cr_mr_us_files() -> list[tuple[Path, str]]:
    out = []
    for path in sorted(_pydicom_data_dir().glob("*.dcm")):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # a non-Part-10 file is not part of the sets we accept
            continue
        if ds.get("Modality") in ("CR", "MR", "US"):
            out.append((path, str(ds.file_meta.TransferSyntaxUID)))
    return out


CR_MR_US = _cr_mr_us_files()
# DCMTK refuses to read this one (it lacks the pixel-data sequence delimiter), so only the
# pynetdicom leg can send it; the receiver must still accept it as received.
DCMTK_CANNOT_READ = {"emri_small_jpeg_2k_lossless_too_short.dcm"}


def storescu(port: int, *files: Path, options: tuple[str, ...] = (), calling_ae: str = "MODALITY") -> str:
    proc = subprocess.run(
        [
            tool("storescu"),
            "-v",
            *options,
            "-aet",
            calling_ae,
            "-aec",
            "HIPNODE",
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.stdout + proc.stderr + f"\nrc={proc.returncode}"


def stored_instances(rx: RunningReceiver) -> list[Instance]:
    with rx.db.session() as s:
        return list(s.scalars(select(Instance).order_by(Instance.id)))


def test_echoscu(tmp_path: Path) -> None:
    with running_receiver(tmp_path) as rx:
        proc = subprocess.run(
            [tool("echoscu"), "-v", "-aec", "HIPNODE", "127.0.0.1", str(rx.port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        assert "Received Echo Response (Success)" in proc.stdout + proc.stderr


def test_storescu_bytes_identical_and_registered(tmp_path: Path) -> None:
    files = [write(make_image(seed=3, instance_number=i + 1), tmp_path / "in" / f"{i}.dcm") for i in range(3)]
    with running_receiver(tmp_path) as rx:
        out = storescu(rx.port, *files)
        assert out.count("Received Store Response (Success)") == 3, out
        rows = stored_instances(rx)
        assert len(rows) == 3
        by_uid = {r.sop_instance_uid: r for r in rows}
        for f in files:
            sent = pydicom.dcmread(f, stop_before_pixels=True)
            row = by_uid[str(sent.SOPInstanceUID)]
            stored = rx.root / row.path
            assert dataset_bytes(stored) == dataset_bytes(f)
            assert row.version == 1 and not row.superseded
            assert row.calling_ae == "MODALITY" and row.peer_host == "127.0.0.1"
            assert row.transfer_syntax == ExplicitVRLittleEndian
            # Paths are digests, never the UID itself.
            assert str(sent.SOPInstanceUID) not in row.path
            assert pydicom.dcmread(stored).file_meta.SourceApplicationEntityTitle == "MODALITY"
        with rx.db.session() as s:
            series = s.scalars(select(Series)).all()
            assert len(series) == 1 and series[0].state == "open"
            assert series[0].complete_after > series[0].last_received_at


@pytest.mark.parametrize(("path", "syntax"), CR_MR_US, ids=[p.name for p, _ in CR_MR_US])
def test_pydicom_data_cr_mr_us_in_native_syntax(tmp_path: Path, path: Path, syntax: str) -> None:
    """DCMTK storescu proposing only the file's syntax must be accepted in that syntax; then the
    file's exact dataset bytes (pynetdicom SCU, same syntax; storescu re-encodes what it reads)
    must be stored byte for byte. Both stored files must decode."""
    assert len(CR_MR_US) >= 25  # the sets exist (guards against an empty parametrisation)
    source = pydicom.dcmread(path, stop_before_pixels=True)
    with running_receiver(tmp_path) as rx:
        if path.name not in DCMTK_CANNOT_READ:
            out = storescu(rx.port, path, options=("-R", STORESCU_PROPOSE[syntax]))
            assert "Received Store Response (Success)" in out, out
            (row,) = stored_instances(rx)
            assert row.transfer_syntax == syntax  # accepted in the syntax it came in, not converted

        ae = scu_ae((str(source.SOPClassUID), [syntax]))
        assoc = ae.associate("127.0.0.1", rx.port, ae_title="HIPNODE")
        assert assoc.is_established
        sent = dataset_bytes(path)
        status = send_raw(assoc, str(source.SOPClassUID), str(source.SOPInstanceUID), sent)
        assoc.release()
        assert status == 0
        rows = stored_instances(rx)
        latest = rows[-1]
        assert latest.transfer_syntax == syntax
        assert dataset_bytes(rx.root / latest.path) == sent  # byte-identical to what was sent
        with warnings.catch_warnings():
            # One source file deliberately lacks its pixel-data delimiter; pydicom warns.
            warnings.simplefilter("ignore", UserWarning)
            for r in rows:
                stored = rx.root / r.path
                assert pydicom.dcmread(stored, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
                assert pixel_array(stored, index=0).size > 0  # first frame: multi-frame files are big


def test_unknown_calling_ae_rejected(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="node.receive")
    overrides = {
        "allow_any_calling_ae": False,
        "calling_aes": [{"ae_title": "KNOWN"}, {"ae_title": "PINNED", "host": "127.0.0.2"}],
    }
    with running_receiver(tmp_path, **overrides) as rx:
        echo = [tool("echoscu"), "-v", "-aec", "HIPNODE", "127.0.0.1", str(rx.port)]
        ok = subprocess.run(
            [*echo[:1], "-aet", "KNOWN", *echo[1:]], capture_output=True, text=True, timeout=60
        )
        assert ok.returncode == 0, ok.stderr
        for ae in ("STRANGER", "PINNED"):  # unknown; known but from the wrong host
            bad = subprocess.run(
                [*echo[:1], "-aet", ae, *echo[1:]], capture_output=True, text=True, timeout=60
            )
            text = bad.stdout + bad.stderr
            assert bad.returncode != 0
            assert "Association Rejected" in text and "Calling AE Title Not Recognized" in text, text
        assert "'STRANGER' at 127.0.0.1 rejected" in caplog.text
        assert "'PINNED' at 127.0.0.1 rejected" in caplog.text


def test_watermark_answers_out_of_resources(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="node.receive")
    f = write(make_image(seed=5), tmp_path / "in" / "a.dcm")
    with running_receiver(tmp_path, storage={"min_free_mb": 1e12}) as rx:
        out = storescu(rx.port, f)
        assert "Received Store Response (Refused: OutOfResources)" in out, out  # 0xA700
        assert stored_instances(rx) == []
        assert not [p for p in rx.root.rglob("*") if p.is_file()]
        assert "watermark" in caplog.text


def _malformed_variants() -> list[tuple[str, bytes, str | None, int]]:
    ds = make_image(seed=9)
    _, good = split_part10(_encode(ds))
    sop = str(ds.SOPInstanceUID)
    no_series = make_image(seed=9)
    del no_series.SeriesInstanceUID
    _, no_series_bytes = split_part10(_encode(no_series))
    lying = bytearray(good)
    # Pixel data is the last element: claim 64 KiB more than was sent.
    idx = lying.rfind(b"\xe0\x7f\x10\x00OW\x00\x00")
    declared = int.from_bytes(lying[idx + 8 : idx + 12], "little")
    lying[idx + 8 : idx + 12] = (declared + 65536).to_bytes(4, "little")
    return [
        ("garbage", b"\x07\x00" * 50, sop, StoreStatus.INCONSISTENT_LENGTH),
        ("lying-length", bytes(lying), sop, StoreStatus.INCONSISTENT_LENGTH),
        ("truncated", good[: len(good) // 2], sop, StoreStatus.INCONSISTENT_LENGTH),
        ("missing-series-uid", no_series_bytes, sop, StoreStatus.MISSING_UID),
        ("sop-class-mismatch", good, sop, StoreStatus.SOP_CLASS_MISMATCH),
        ("sop-instance-mismatch", good, uid_for("other"), StoreStatus.SOP_INSTANCE_MISMATCH),
        ("valid", good, sop, StoreStatus.SUCCESS),
    ]


def _encode(ds: pydicom.Dataset) -> bytes:
    from io import BytesIO

    fp = BytesIO()
    ds.save_as(fp, enforce_file_format=True)
    return fp.getvalue()


def test_malformed_datasets_rejected_and_node_keeps_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="node.receive")
    ct = "1.2.840.10008.5.1.4.1.1.2"
    with running_receiver(tmp_path) as rx:
        ae = scu_ae(
            (DigitalXRayImageStorageForPresentation, [ExplicitVRLittleEndian]), (ct, [ExplicitVRLittleEndian])
        )
        assoc = ae.associate("127.0.0.1", rx.port, ae_title="HIPNODE")
        assert assoc.is_established
        try:
            for i, (name, data, sop, expected) in enumerate(_malformed_variants(), start=1):
                sop_class = ct if name == "sop-class-mismatch" else DigitalXRayImageStorageForPresentation
                status = send_raw(assoc, sop_class, sop, data, message_id=i)
                assert status == expected, f"{name}: got {status!r}, expected 0x{expected:04X}"
                assert assoc.is_established, name  # the node keeps serving on the same association
        finally:
            assoc.release()
        rows = stored_instances(rx)
        assert len(rows) == 1  # only the valid one
        files = [p for p in rx.root.rglob("*") if p.is_file()]
        assert len(files) == 1 and "part" not in files[0].name
        assert "declares 65536 bytes but only 0 remain" in caplog.text or "declares" in caplog.text
        assert "differs from the C-STORE command" in caplog.text
        assert "SeriesInstanceUID is missing" in caplog.text


def test_store_without_affected_sop_instance_uid_is_aborted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="node.receive")
    ds = make_image(seed=11)
    _, data = split_part10(_encode(ds))
    with running_receiver(tmp_path) as rx:
        ae = scu_ae((DigitalXRayImageStorageForPresentation, [ExplicitVRLittleEndian]))
        assoc = ae.associate("127.0.0.1", rx.port, ae_title="HIPNODE")
        assert assoc.is_established
        t0 = time.monotonic()
        status = send_raw(assoc, DigitalXRayImageStorageForPresentation, None, data, timeout_s=10)
        assert status is None  # no response...
        assert time.monotonic() - t0 < 5  # ...because the node aborted at once, not a sender timeout
        assert "request 0x0001 lacks AffectedSOPInstanceUID" in caplog.text
        assert assoc.acse.is_aborted() or not assoc.dul.is_alive()
        assoc.abort()
        # ...and the node still serves the next association.
        assoc = ae.associate("127.0.0.1", rx.port, ae_title="HIPNODE")
        assert send_raw(assoc, DigitalXRayImageStorageForPresentation, str(ds.SOPInstanceUID), data) == 0
        assoc.release()


def test_duplicate_identical_and_changed_versions(tmp_path: Path) -> None:
    first = make_image(seed=21)
    changed = make_image(seed=21)
    changed.SeriesDescription = "re-processed"
    a = write(first, tmp_path / "in" / "a.dcm")
    b = write(changed, tmp_path / "in" / "b.dcm")
    with running_receiver(tmp_path) as rx:
        assert "Success" in storescu(rx.port, a)
        # Complete the series as node.series would, so the changed copy must re-open it.
        with rx.db.session() as s:
            series = s.scalars(select(Series)).one()
            series.state = "complete"
            series.generation = 1
        out = storescu(rx.port, a)
        assert "Received Store Response (Success)" in out, out
        rows = stored_instances(rx)
        assert len(rows) == 1  # identical re-send: one row
        with rx.db.session() as s:
            assert s.scalars(select(Series)).one().state == "complete"  # no re-open, no new job
            assert (
                s.scalar(select(func.count()).select_from(Event).where(Event.kind == "duplicate_received"))
                == 1
            )
        out = storescu(rx.port, b)
        assert "Received Store Response (Success)" in out, out
        rows = stored_instances(rx)
        assert [(r.version, r.superseded) for r in rows] == [(1, True), (2, False)]
        assert rows[0].path != rows[1].path and (rx.root / rows[0].path).exists()
        assert dataset_bytes(rx.root / rows[1].path) == dataset_bytes(b)
        with rx.db.session() as s:
            assert s.scalars(select(Series)).one().state == "reopened"
            kinds = set(s.scalars(select(Event.kind)))
            assert {
                "opened",
                "received",
                "duplicate_received",
                "new_version",
                "superseded",
                "reopened",
            } <= kinds


def test_tls_with_client_certificate(tmp_path: Path) -> None:
    import ssl

    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [tool("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    tls = {
        "enabled": True,
        "cert_file": str(cert),
        "key_file": str(key),
        "ca_file": str(cert),
        "verify_peer": True,
    }
    with running_receiver(tmp_path, node={"tls": tls}) as rx:

        def client(with_cert: bool) -> ssl.SSLContext:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
            if with_cert:
                ctx.load_cert_chain(str(cert), str(key))
            return ctx

        ae = scu_ae((Verification, [ExplicitVRLittleEndian]))
        assoc = ae.associate("127.0.0.1", rx.port, ae_title="HIPNODE", tls_args=(client(True), "127.0.0.1"))
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assoc.release()
        ds = make_image(seed=31)
        _, data = split_part10(_encode(ds))
        ae.add_requested_context(DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", rx.port, ae_title="HIPNODE", tls_args=(client(True), "127.0.0.1"))
        assert send_raw(assoc, DigitalXRayImageStorageForPresentation, str(ds.SOPInstanceUID), data) == 0
        assoc.release()
        # Without a client certificate the handshake fails: no association.
        assoc = ae.associate("127.0.0.1", rx.port, ae_title="HIPNODE", tls_args=(client(False), "127.0.0.1"))
        established = assoc.is_established
        if established:
            established = assoc.send_c_echo().Status == 0 if assoc.is_established else False
            assoc.abort()
        assert not established
        # Plain TCP to a TLS port: no association either.
        plain = ae.associate("127.0.0.1", rx.port, ae_title="HIPNODE")
        assert not plain.is_established
        assert len(stored_instances(rx)) == 1


def test_non_conformant_uids_are_kept_and_unsafe_ones_refused() -> None:
    """Modalities send UIDs the standard forbids (a letter, a leading zero, a trailing dot):
    refusing them loses the study to the sender, so they are kept as received (and noted);
    only what is unsafe to store or reference is refused with 0xC002."""
    import pydicom
    from pydicom import config as pydicom_config
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset
    from pydicom.uid import ImplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    from node.receive.handlers import InvalidDataset, StoreStatus, read_header

    def encoded(series_uid: str) -> bytes:
        ds = pydicom.Dataset()
        settings = pydicom_config.settings
        saved = (settings.reading_validation_mode, settings.writing_validation_mode)
        settings.reading_validation_mode = settings.writing_validation_mode = pydicom_config.IGNORE
        try:
            ds.SOPClassUID = SecondaryCaptureImageStorage
            ds.SOPInstanceUID = generate_uid()
            ds.StudyInstanceUID = generate_uid()
            ds.add(pydicom.DataElement(0x0020000E, "UI", series_uid))  # as a modality wrote it
            buf = DicomBytesIO()
            buf.is_implicit_VR, buf.is_little_endian = True, True
            write_dataset(buf, ds)
        finally:
            settings.reading_validation_mode, settings.writing_validation_mode = saved
        return buf.getvalue()

    for kept in ("1.2.840.10008.77.2.DX", "1.2.840.010.5", "1.2.840.5."):
        header = read_header(encoded(kept), ImplicitVRLittleEndian)
        assert header.get_item("SeriesInstanceUID").value.decode().rstrip("\x00") == kept
    for unsafe, why in (("1." + "2" * 70, "longer than 64"), ("1.2/../3", "path separator"),
                        ("1.2\x013", "control or non-ASCII"), ("1.2.3é", "control or non-ASCII")):
        with pytest.raises(InvalidDataset) as refused:
            read_header(encoded(unsafe), ImplicitVRLittleEndian)
        assert refused.value.status == StoreStatus.MISSING_UID and why in str(refused.value)
