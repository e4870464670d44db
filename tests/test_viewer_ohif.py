"""Our SR opened in a real web viewer, as a radiologist would (issue 14's bar).

DCMTK storescu (the modality) → ``hipnode run`` → Orthanc with its DICOMweb plugin (the PACS) →
OHIF Viewer 3.13.2, its prebuilt ``dist/`` from the npm registry (``make ohif`` fetches it into
``.cache/``; nothing is installed or built) → Debian's Chromium driven by Playwright through
``executable_path`` (no browser download). One loopback origin serves OHIF and proxies
``/dicom-web`` to Orthanc, so OHIF needs no CORS and no other host. Every request the page makes
is recorded; one that leaves 127.0.0.1 fails the test (and is aborted, so nothing can leak).

Checked on the SR's display: no console error, every cup rim drawn where the Secondary Capture
draws it (the SR's polyline points within 2 px of the SC's green rim, and OHIF's drawn rim
within 2 px of the SR's points at the viewer's scale), the inclination and anteversion values
and the side ("Right hip" / "Left hip") in each cup's label box, no two label lines naming
"Acetabular cup anteversion" with different values, and no two label boxes on top of each other.
How OHIF 3.13.2 builds a label (cornerstone-dicom-sr extension, ``_processTID1410Measurement`` and
``DICOMSRDisplayTool``): the group's NUMs as "<concept meaning>: <value to 2 decimals> <unit>",
then "363698007: <meaning of the first finding site>", at most five lines, placed at the
right-hand end of the group's first SCOORD, half-way down; docs/results.md says how the SR is
written for it. The screenshot goes to ``docs/ohif_sr.png``.

The node is also configured with two destinations on the same Orthanc, one taking SR + SC + GSPS
and one the SR only (issue 14: outputs per destination); the delivery counts per destination
prove the choice, and the GSPS reaches the PACS.

A missing tool (chromium, the Orthanc DICOMweb plugin, the OHIF dist, Playwright) fails the test:
``make test`` installs them.
"""

from __future__ import annotations

import dataclasses
import http.server
import io
import json
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from node.compose import read_report
from node.compose.sr import PIXEL_ORIGIN_SHIFT
from node.domain import Point, Side, View
from node.phantom import CupSpec, render, sample_spec
from node.phantom.dicom import build_dataset, make_study_info, to_bytes
from tests.conftest import OrthancServer, free_port, make_orthanc, tool
from tests.node_proc import NodeProcess, make_node, wait_for  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
OHIF_VERSION = "3.13.2"
OHIF_DIST = ROOT / ".cache" / f"ohif-{OHIF_VERSION}" / "dist"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
SCREENSHOT = ROOT / "docs" / "ohif_sr.png"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
GSPS_CLASS = "1.2.840.10008.5.1.4.1.1.11.1"
TOLERANCE_PX = 2.0
_TYPES = {
    ".html": "text/html", ".js": "application/javascript", ".css": "text/css", ".json": "application/json",
    ".wasm": "application/wasm", ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon",
    ".woff": "font/woff", ".woff2": "font/woff2", ".ttf": "font/ttf", ".map": "application/json",
}


def _require() -> tuple[str, Any]:
    """Chromium, Playwright, the DICOMweb plugin and the OHIF dist, or a failure saying what."""
    chromium = tool("chromium")
    if not DICOMWEB_PLUGIN.exists():
        pytest.fail(f"Orthanc DICOMweb plugin {DICOMWEB_PLUGIN} is missing (make test installs orthanc-dicomweb)",
                    pytrace=False)
    if not (OHIF_DIST / "index.html").exists():
        pytest.fail(f"OHIF dist missing at {OHIF_DIST} (make test runs `make ohif`)", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed (make test installs the test extra)", pytrace=False)
    return chromium, sync_playwright


# ------------------------------------------------------------------------ one loopback origin


def _app_config(origin: str) -> str:
    """OHIF's app-config.js for our Orthanc: one DICOMweb source on the same origin, no
    investigational-use dialog, nothing else enabled."""
    root = f"{origin}/dicom-web"
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "orthanc",
        "configuration": {
            "friendlyName": "Orthanc (test)",
            "name": "orthanc",
            "wadoUriRoot": root, "qidoRoot": root, "wadoRoot": root,
            "qidoSupportsIncludeField": False,
            "supportsReject": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [], "modes": [], "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": "orthanc",
        "dataSources": [source],
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"


class _Origin(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, dist: Path, app_config: bytes, orthanc_url: str) -> None:
        self.dist = dist.resolve()
        self.app_config = app_config
        self.orthanc_url = orthanc_url
        super().__init__(("127.0.0.1", port), _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    """OHIF's files from the dist (app-config.js replaced, every unknown path → index.html as a
    single-page app needs) and ``/dicom-web/…`` proxied to Orthanc."""

    server: _Origin
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/dicom-web/"):
            self._proxy()
            return
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        if path == "/app-config.js":
            self._send(200, "application/javascript", self.server.app_config)
            return
        target = (self.server.dist / path.lstrip("/")).resolve()
        if not target.is_relative_to(self.server.dist) or not target.is_file():
            target = self.server.dist / "index.html"
        self._send(200, _TYPES.get(target.suffix, "application/octet-stream"), target.read_bytes())

    def _proxy(self) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "range")}
        request = urllib.request.Request(self.server.orthanc_url + self.path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                body, status = response.read(), response.status
                content_type = response.headers.get("Content-Type", "application/octet-stream")
        except urllib.error.HTTPError as exc:
            body, status = exc.read(), exc.code
            content_type = exc.headers.get("Content-Type", "text/plain")
        self._send(status, content_type, body)

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        # OHIF's workers use SharedArrayBuffer where the page is cross-origin isolated
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def pacs_with_dicomweb(tmp_path: Path) -> Iterator[OrthancServer]:
    """Orthanc with the DICOMweb plugin at /dicom-web (the viewer's PACS)."""
    _require()
    server = make_orthanc(tmp_path / "orthanc", name="hipnode-viewer-pacs")
    config_path = server.workdir / "orthanc.json"
    config = json.loads(config_path.read_text())
    config["Plugins"] = [str(DICOMWEB_PLUGIN)]
    config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False,
                          "StudiesMetadata": "Full", "SeriesMetadata": "Full"}
    config_path.write_text(json.dumps(config, indent=2))
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------------ the study


def _ap_pelvis(out: Path) -> Path:
    """A neutral AP pelvis with bilateral THA: two cups to draw, one reference line."""
    rng = np.random.default_rng(1414)
    cups: dict[Side, CupSpec | None] = {Side.RIGHT: CupSpec(42.0, 18.0), Side.LEFT: CupSpec(50.0, 23.0)}
    spec = sample_spec(rng, view=View.AP_PELVIS, implants=cups, rows=768, sex="F")
    spec = dataclasses.replace(
        spec, geometry=dataclasses.replace(spec.geometry, pelvic_tilt_deg=0.0, pelvic_rotation_deg=0.0)
    )
    info = make_study_info(1414, 1, "F", rng, modality="DX")
    path = out / "ap.dcm"
    path.write_bytes(to_bytes(build_dataset(render(spec), info, 1, 1, rng)))
    return path


def _objects(orthanc: OrthancServer) -> dict[str, list[pydicom.Dataset]]:
    out: dict[str, list[pydicom.Dataset]] = {}
    for oid in orthanc.instances():
        ds = pydicom.dcmread(io.BytesIO(orthanc.instance_file(oid)))
        out.setdefault(str(ds.SOPClassUID), []).append(ds)
    return out


def _rims(sr: pydicom.Dataset) -> dict[Side, list[Point]]:
    rims = {g.side: g.cup_rim_outline for g in read_report(sr) if g.side is not None and g.cup_rim_outline}
    return {side: outline for side, outline in rims.items() if side is not None and outline is not None}


def _green_mask(sc: pydicom.Dataset) -> np.ndarray:
    """Where the SC drew a measured cup rim (green, _GREEN in node.compose.overlay)."""
    rgb = sc.pixel_array.astype(int)  # pydicom decodes YBR_RCT / YBR_FULL_422 to RGB
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.asarray((g > 180) & (r < 140) & (b < 170) & (g - r > 80))


def _max_distance_to_mask(points: np.ndarray, mask: np.ndarray) -> float:
    ys, xs = np.nonzero(mask)
    assert len(xs), "no rim drawn on the SC"
    drawn = np.stack([xs + 0.5, ys + 0.5], axis=1)  # pixel centres in corner-origin coordinates
    return max(float(np.min(np.hypot(*(drawn - p).T))) for p in points)


# ------------------------------------------------------------------------ in the browser

_READ_SR_ANNOTATIONS = """
() => {
  const cs = window.cornerstone, tools = window.cornerstoneTools;
  if (!cs || !tools) return {error: 'cornerstone not exposed'};
  const out = [];
  for (const engine of cs.getRenderingEngines()) {
    for (const viewport of engine.getViewports()) {
      const element = viewport.element;
      const annotations = tools.annotation.state.getAllAnnotations();
      for (const a of annotations) {
        const data = a.data || {};
        const imageId = a.metadata && a.metadata.referencedImageId;
        if (!imageId || !data.renderableData) continue;
        if (viewport.getCurrentImageId && viewport.getCurrentImageId() !== imageId) continue;
        for (const [graphicType, groups] of Object.entries(data.renderableData)) {
          for (const world of groups) {
            const canvas = world.map(p => viewport.worldToCanvas(p));
            const image = world.map(p => cs.utilities.worldToImageCoords(imageId, p));
            out.push({tool: a.metadata.toolName, graphicType, label: data.label || null,
                      trackingIdentifier: data.TrackingIdentifier || null, canvas, image,
                      width: element.clientWidth, height: element.clientHeight});
          }
        }
      }
    }
  }
  return {annotations: out};
}
"""

_READ_LABEL_BOXES = """
() => {
  // every SVG text group OHIF drew (one per label box): its lines and its box on screen
  const out = [];
  for (const text of document.querySelectorAll('svg text')) {
    const lines = Array.from(text.querySelectorAll('tspan')).map(t => t.textContent).filter(t => t);
    if (!lines.length) continue;
    const r = text.getBoundingClientRect();
    const svg = text.ownerSVGElement.getBoundingClientRect();
    out.push({lines, left: r.left, top: r.top, right: r.right, bottom: r.bottom,
              svgLeft: svg.left, svgTop: svg.top, svgRight: svg.right, svgBottom: svg.bottom});
  }
  return out;
}
"""

_IMAGE_TO_CANVAS = """
([imageId, points]) => {
  const cs = window.cornerstone;
  for (const engine of cs.getRenderingEngines()) {
    for (const viewport of engine.getViewports()) {
      if (viewport.getCurrentImageId && viewport.getCurrentImageId() === imageId) {
        return points.map(p => viewport.worldToCanvas(cs.utilities.imageToWorldCoords(imageId, p)));
      }
    }
  }
  return null;
}
"""


def _dismiss_tour(page: Any) -> None:
    """OHIF's first visit shows a guided tour over the viewer; a radiologist skips it."""
    for _ in range(10):
        buttons = page.get_by_role("button", name=re.compile(r"^(skip( all)?|close|got it|no,? thanks|end tour)$", re.I))
        if buttons.count():
            buttons.first.click()
            return
        time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sr_opens_in_ohif_with_cup_rims_and_values(
    tmp_path: Path, pacs_with_dicomweb: OrthancServer, make_node: Any  # noqa: F811
) -> None:
    chromium, sync_playwright = _require()
    started = time.monotonic()
    orthanc = pacs_with_dicomweb
    destination = {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}
    node: NodeProcess = make_node(
        None,
        destinations=[{"name": "pacs", **destination, "outputs": ["sr", "sc", "gsps"]},
                      {"name": "registry", **destination, "ae_title": "REGISTRY", "outputs": ["sr"]}],
        routing=[{"destinations": ["pacs", "registry"]}],
    )
    study = tmp_path / "study"
    study.mkdir()
    image = _ap_pelvis(study)
    # the modality sends to the PACS as well: the viewer draws the SR on the original image
    to_pacs = subprocess.run([tool("storescu"), "-aec", orthanc.aet, "127.0.0.1", str(orthanc.dicom_port), str(image)],
                             capture_output=True, text=True, timeout=60)
    assert to_pacs.returncode == 0, to_pacs.stderr
    sent = node.storescu(image)
    assert sent.returncode == 0, sent.stderr

    def delivered() -> dict[str, list[pydicom.Dataset]] | None:
        objects = _objects(orthanc)
        return objects if all(objects.get(c) for c in (SR_CLASS, SC_CLASS, GSPS_CLASS)) else None

    objects = wait_for(delivered, 150, "SR, SC and GSPS in Orthanc", interval_s=1)
    (sr,), (sc,), (gsps,) = objects[SR_CLASS], objects[SC_CLASS], objects[GSPS_CLASS]
    # outputs per destination: the PACS took SR + SC + GSPS, the registry the SR only
    health = wait_for(lambda: (lambda d: d if d["pacs"]["sent"] == 3 and d["registry"]["sent"] == 1 else None)(
        node.status()["destinations"]), 30, "deliveries recorded")
    assert sum(v for k, v in health["registry"].items() if k in ("pending", "retrying", "sent", "visible", "failed")) == 1
    image_uid = str(sc.SourceImageSequence[0].ReferencedSOPInstanceUID)
    assert str(gsps.ReferencedSeriesSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID) == image_uid

    # The SR's rims lie on the SC's drawn rims (the SC is the same size as the source here).
    rims = _rims(sr)
    assert set(rims) == {Side.RIGHT, Side.LEFT}, "both cups measured"
    assert (int(sc.Rows), int(sc.Columns)) == (768, int(sc.Columns))
    green = _green_mask(sc)
    for side, outline in rims.items():
        points = np.array([[p.x + PIXEL_ORIGIN_SHIFT, p.y + PIXEL_ORIGIN_SHIFT] for p in outline])
        assert _max_distance_to_mask(points, green) <= TOLERANCE_PX, side

    origin_port = free_port()
    origin = f"http://127.0.0.1:{origin_port}"
    server = _Origin(origin_port, OHIF_DIST, _app_config(origin).encode(), orthanc.url)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    requests: list[str] = []
    outside: list[str] = []
    console_errors: list[str] = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                         args=["--no-sandbox", "--disable-dev-shm-usage", "--use-gl=swiftshader",
                                               "--enable-unsafe-swiftshader"])
            # a radiologist's 1920 x 1080 screen: at 1400 px the left cup's label (placed right
            # of its rim by OHIF) ran past the viewport's edge
            page = browser.new_page(viewport={"width": 1920, "height": 1080})

            def on_request(route: Any) -> None:
                url = route.request.url
                requests.append(url)
                if url.startswith(("data:", "blob:")) or url.startswith(origin + "/"):
                    route.continue_()
                else:
                    outside.append(url)
                    route.abort()

            page.route("**/*", on_request)
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: console_errors.append(f"page error: {e}"))
            page.goto(
                f"{origin}/viewer?StudyInstanceUIDs={sr.StudyInstanceUID}"
                f"&initialSeriesInstanceUID={sr.SeriesInstanceUID}",
                wait_until="domcontentloaded",
            )
            _dismiss_tour(page)
            last: list[Any] = []

            def annotations() -> Any:
                last[:] = [page.evaluate(_READ_SR_ANNOTATIONS)]
                return last[0] if last[0].get("annotations") else None

            try:
                shown: dict[str, Any] = wait_for(annotations, 60, "OHIF to draw the SR's annotations", interval_s=1)
            except AssertionError:
                page.screenshot(path=str(tmp_path / "ohif-failed.png"))
                raise AssertionError(
                    f"OHIF drew no SR annotation (screenshot {tmp_path / 'ohif-failed.png'}); last state {last}; "
                    f"console errors {console_errors[:10]}; outside requests {outside[:5]}; "
                    f"page text {page.inner_text('body')[:1500]!r}"
                ) from None
            _dismiss_tour(page)
            time.sleep(1.0)  # let the label boxes settle before the screenshot
            text = page.inner_text("body")
            boxes: list[dict[str, Any]] = page.evaluate(_READ_LABEL_BOXES)
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(tmp_path / "ohif.png"))
            # read again after the settle: the first poll can precede the viewport's final fit
            drawn = page.evaluate(_READ_SR_ANNOTATIONS)["annotations"] or shown["annotations"]
            canvas_expected = {}
            current = page.evaluate(
                "() => { for (const e of window.cornerstone.getRenderingEngines()) for (const v of e.getViewports())"
                " if (v.getCurrentImageId) return v.getCurrentImageId(); return null; }"
            )
            assert current and image_uid in current, current
            for side, outline in rims.items():
                pts = [[p.x + PIXEL_ORIGIN_SHIFT, p.y + PIXEL_ORIGIN_SHIFT] for p in outline]
                canvas_expected[side] = np.array(page.evaluate(_IMAGE_TO_CANVAS, [current, pts]))
            browser.close()
    finally:
        server.shutdown()
        server.server_close()

    assert outside == [], f"requests left 127.0.0.1: {outside[:5]}"
    assert requests, "the page made no request through the recorder"
    assert console_errors == [], console_errors

    # Each cup rim: a closed polyline drawn by OHIF on the SR's points, within 2 px at the
    # viewer's scale (canvas pixels).
    polylines = [np.array(a["canvas"]) for a in drawn if a["graphicType"] == "POLYLINE"]
    for side, want in canvas_expected.items():
        best = min((p for p in polylines if len(p) == len(want)),
                   key=lambda p: float(np.max(np.hypot(*(p - want).T))), default=None)
        assert best is not None, f"{side}: rim not drawn ({[len(p) for p in polylines]})"
        error_px = float(np.max(np.hypot(*(best - want).T)))
        print(f"{side.value} rim: OHIF within {error_px:.3f} px of the SR's points at the viewer's scale")
        assert error_px <= TOLERANCE_PX, (side, error_px)

    # Each cup's label box (OHIF: the group's NUMs, "<concept>: <value> <unit>", then the first
    # finding site "363698007: <meaning>", at most five lines) holds its inclination, its
    # anteversion and its side.
    print("label boxes:", [b["lines"] for b in boxes])
    sides_seen = set()
    for group in read_report(sr):
        if group.side is None or not group.inclination:
            continue
        side_text = {Side.RIGHT: "Right hip", Side.LEFT: "Left hip"}[group.side]
        inclination = f"Acetabular cup inclination: {group.inclination_deg:.2f} deg"
        anteversion = f"Acetabular cup anteversion: {group.anteversion_deg:.2f} deg"
        found = [b for b in boxes if inclination in b["lines"]]
        assert len(found) == 1, (group.side, [b["lines"] for b in boxes])
        (box,) = found
        assert anteversion in box["lines"], (group.side, box["lines"])
        assert f"363698007: {side_text}" in box["lines"], (group.side, box["lines"])
        # on screen, not cut off at the viewport's edge
        assert box["svgLeft"] <= box["left"] and box["right"] <= box["svgRight"], (group.side, box)
        assert box["svgTop"] <= box["top"] and box["bottom"] <= box["svgBottom"], (group.side, box)
        assert side_text in text
        sides_seen.add(group.side)
    assert sides_seen == {Side.RIGHT, Side.LEFT}
    # No ambiguous anteversion: every visible line named "Acetabular cup anteversion" carries the
    # same value as any other such line of its hip — here, one line per cup (the Liaw value has a
    # name of its own and is not in OHIF's labels).
    anteversions = [line for b in boxes for line in b["lines"] if line.startswith("Acetabular cup anteversion:")]
    assert len(anteversions) == len(sides_seen), anteversions
    # No label box written over another (OHIF's boxes are not moved apart; the joint box around a
    # cup is drawn without a label for that reason).
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            overlap = min(a["right"], b["right"]) - max(a["left"], b["left"]) > 0 and \
                min(a["bottom"], b["bottom"]) - max(a["top"], b["top"]) > 0
            assert not overlap, (a, b)
    shutil.copyfile(tmp_path / "ohif.png", SCREENSHOT)
    assert time.monotonic() - started < 180
